"""A compact U-Net that predicts a displacement field from a (moving, fixed) pair, its shipped
weights, and the loss-agnostic training loop (Dong et al., ICCV 2023, Sec. 3; the backbones
there are VTN, VoxelMorph and TransMorph in 3-D).

The network reads the two images stacked as channels and outputs a coarse control grid of
displacements (pixel units) at a quarter of the image resolution; the dense field is that grid
upsampled bicubically (:func:`~lib.registration.deformation.upsample_displacement`), the same
parameterisation as the per-pair optimisation in :mod:`lib.registration.volume_preserving`, so
the two differ only in amortisation: one network for all pairs against one optimisation per pair.

Weights are stored as safetensors with a manifest of SHA-256 hashes that :func:`load_networks`
verifies before reading (``python -m lib.registration.train_displacement_networks`` writes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lib.registration.deformation import upsample_displacement
from lib.util.shipped_weights import load_verified, sha256_file

WEIGHTS = Path(__file__).resolve().parent / "weights" / "displacement_networks"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class DisplacementUNet(nn.Module):
    """U-Net from ``(moving, fixed)`` (B, 2, H, W) to a control grid (B, 2, H/4, W/4), in pixels.

    Encoder: five 3x3 convolutions, four of them with stride 2 (H -> H/16); decoder: two
    upsampling steps with skip connections back to H/4, where a 3x3 convolution outputs the
    control grid. ``forward`` returns the dense field, upsampled bicubically. The output layer
    starts at zero, so an untrained network is the identity map (as VoxelMorph's initialisation
    makes it nearly so)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        w, w2 = width, 2 * width
        self.width = width
        self.enc = nn.ModuleList([_conv(2, w), _conv(w, w2, 2), _conv(w2, w2, 2),
                                  _conv(w2, w2, 2), _conv(w2, w2, 2)])
        self.dec8 = _conv(2 * w2, w2)
        self.dec4 = nn.Sequential(_conv(2 * w2, w2), _conv(w2, w2))
        self.head = nn.Conv2d(w2, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def control_grid(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The coarse displacement (B, 2, H/4, W/4) in pixels."""
        if moving.ndim != 4 or moving.shape[1] != 1 or moving.shape != fixed.shape:
            raise ValueError(f"moving and fixed must share one (B, 1, H, W) shape, got "
                             f"{tuple(moving.shape)} and {tuple(fixed.shape)}")
        h, w = moving.shape[2:]
        if h % 16 or w % 16:
            raise ValueError(f"image sides must be multiples of 16, got {h}x{w}")
        x = torch.cat((moving, fixed), dim=1)
        skips = []
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        x = F.interpolate(skips[4], scale_factor=2, mode="nearest")   # H/16 -> H/8
        x = self.dec8(torch.cat((x, skips[3]), dim=1))
        x = F.interpolate(x, scale_factor=2, mode="nearest")          # H/8 -> H/4
        x = self.dec4(torch.cat((x, skips[2]), dim=1))
        return self.head(x)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The dense displacement (B, 2, H, W) in pixels, ``phi(x) = x + u(x)``."""
        return upsample_displacement(self.control_grid(moving, fixed), tuple(moving.shape[2:]))


@dataclass
class TrainingLog:
    """What :func:`train_network` did: the loss every ``log_every`` steps and the time taken."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps[-1], 1) if self.steps else float("nan")


def train_network(
    net: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, dict[str, torch.Tensor], bool], torch.Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    blur_fraction: float = 0.3,
    log_every: int = 100,
    log: Callable[[str], None] | None = None,
) -> TrainingLog:
    """Unsupervised training: Adam on ``loss_fn(disp, batch, blurred)`` over ``steps`` batches.

    ``batches`` yields dicts with at least ``moving`` and ``fixed``; ``loss_fn`` gets the
    network's dense field, the batch and whether this step is in the first ``blur_fraction`` of
    training (the coarse-to-fine curriculum: compare blurred images first), and returns one loss
    per pair. The learning rate decays linearly to a tenth of ``lr``."""
    if steps < 1 or lr <= 0 or not 0 <= blur_fraction <= 1:
        raise ValueError(f"need steps >= 1, lr > 0 and blur_fraction in [0, 1], got "
                         f"steps={steps}, lr={lr}, blur_fraction={blur_fraction}")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - 0.9 * s / steps)
    out = TrainingLog()
    start = time.perf_counter()
    running = 0.0
    net.train()
    for step in range(1, steps + 1):
        batch = next(batches)
        disp = net(batch["moving"], batch["fixed"])
        loss = loss_fn(disp, batch, step <= blur_fraction * steps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = step - (out.steps[-1] if out.steps else 0)
            out.steps.append(step)
            out.losses.append(running / n)
            running = 0.0
            out.seconds = time.perf_counter() - start
            if log is not None:
                log(f"step {step}/{steps}: loss {out.losses[-1]:.4f}, "
                    f"{1000 * out.seconds / step:.1f} ms/step")
    out.seconds = time.perf_counter() - start
    net.eval()
    return out


def save_networks(nets: dict[str, DisplacementUNet], folder: Path, training: dict) -> Path:
    """Write each network as ``<name>.safetensors`` and ``manifest.json`` (hashes, width, the
    training record); returns the manifest path."""
    from safetensors.torch import save_file

    if not nets:
        raise ValueError("no networks to save")
    widths = {net.width for net in nets.values()}
    if len(widths) != 1:
        raise ValueError(f"all networks must share one width, got {sorted(widths)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, net in nets.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
        hashes[path.name] = sha256_file(path)
    manifest = {"sha256": hashes, "architecture": {"width": widths.pop()}, "training": training}
    out = folder / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(folder: Path = WEIGHTS) -> dict:
    """The manifest of shipped networks (hashes, architecture, training record)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing; run "
                         "`python -m lib.registration.train_displacement_networks`")
    return json.loads(path.read_text())


def load_networks(folder: Path = WEIGHTS) -> tuple[dict[str, DisplacementUNet], dict]:
    """Every network of the manifest, each verified against its SHA-256, frozen in eval mode;
    and the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    nets = {}
    for filename, expected in manifest["sha256"].items():
        net = DisplacementUNet(**manifest["architecture"])
        net.load_state_dict(load_verified(folder / filename, expected))
        nets[filename.removesuffix(".safetensors")] = net.eval().requires_grad_(False)
    return nets, manifest
