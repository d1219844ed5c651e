"""Image-to-normal estimators on one small diffusers ``UNet2DModel``: direct regression, plain
diffusion (DDIM from pure noise), and StableNormal's two stages (Ye et al., 2024, arXiv
2406.16864): YOSO, a one-step estimate from a shrunk-variance noise input trained with a
shrinkage (variance) regulariser, then SG-DRN, a few DDIM steps of a refiner conditioned on
image features, started from the YOSO estimate noised to an intermediate time.

Normals live in pixel space (3 channels in [-1, 1]); there is no VAE. The image is
concatenated to the network input, as in Marigold-style estimators; the refiner also gets a
fixed random-convolution feature map (:func:`context_features`), our stand-in for the DINO
features the paper feeds through a control branch. All networks predict the clean normal map
(``prediction_type="sample"``), so one DDIM update needs no conversion of the output.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from lib.util.shipped_weights import load_verified, sha256_file

__all__ = [
    "KINDS",
    "NormalUNet",
    "TrainReport",
    "context_features",
    "ddim_sample",
    "diffusion_loss",
    "load_estimators",
    "make_scheduler",
    "noise_to",
    "regression_loss",
    "save_estimators",
    "stablenormal",
    "train_estimator",
    "yoso",
    "yoso_loss",
]

KINDS = ("regression", "diffusion", "yoso", "refiner")
T = 1000  # training timesteps
FEATURE_CHANNELS = 4


def make_scheduler() -> DDIMScheduler:
    """The noise schedule every estimator shares: cosine betas over 1000 steps, x0 prediction,
    trailing DDIM spacing (the first step starts at t = 999, pure noise)."""
    return DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=True, set_alpha_to_one=True,
                         timestep_spacing="trailing")


class NormalUNet(nn.Module):
    """A ``UNet2DModel`` that maps (noisy normals x_t, image, optional features, t) to a clean
    normal map. ``features`` adds :data:`FEATURE_CHANNELS` input channels (the refiner)."""

    def __init__(self, size: int = 24, features: bool = False,
                 channels: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        if size % 2 ** (len(channels) - 1):
            raise ValueError(f"size {size} must be divisible by {2 ** (len(channels) - 1)}")
        self.size, self.features = size, features
        self.unet = UNet2DModel(
            sample_size=size, in_channels=3 + 1 + (FEATURE_CHANNELS if features else 0),
            out_channels=3, layers_per_block=1, block_out_channels=channels,
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=4,
            add_attention=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, image: torch.Tensor,
                feats: torch.Tensor | None = None) -> torch.Tensor:
        if (feats is not None) != self.features:
            raise ValueError("pass features exactly when the network was built with features=True")
        parts = [x_t, 2 * image - 1] + ([feats] if feats is not None else [])
        t = torch.as_tensor(t, device=x_t.device).expand(len(x_t))
        return self.unet(torch.cat(parts, dim=1), t).sample


def context_features(images: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """A fixed (seeded, untrained) two-layer random-convolution feature map of the image with a
    wide receptive field: our stand-in for StableNormal's DINOv2 guidance (paper Sec. 3.3). It
    adds no information the image lacks, only context at every pixel."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(8, 1, 5, 5, generator=g) / 5
    w2 = torch.randn(FEATURE_CHANNELS, 8, 3, 3, generator=g) / np.sqrt(72)
    h = torch.relu(nn.functional.conv2d(2 * images - 1, w1.to(images), padding=2))
    h = nn.functional.avg_pool2d(h, 4)
    h = torch.tanh(nn.functional.conv2d(h, w2.to(images), padding=1))
    return nn.functional.interpolate(h, size=images.shape[-2:], mode="bilinear",
                                     align_corners=False)


def noise_to(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             scheduler: DDIMScheduler) -> torch.Tensor:
    """Forward diffusion ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (paper Eq. 1)."""
    abar = scheduler.alphas_cumprod.to(x0)[t].view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def regression_loss(net: NormalUNet, image: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Direct regression: ``|| f(0, I) - n ||^2`` with a zero noise input at a fixed t."""
    return (net(torch.zeros_like(normals), T - 1, image) - normals).pow(2).mean()


def diffusion_loss(net: NormalUNet, image: torch.Tensor, normals: torch.Tensor,
                   scheduler: DDIMScheduler, t_max: int = T, feats: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The x0-prediction diffusion loss ``E_t,eps || f(x_t, I, t) - n ||^2`` with t uniform on
    [0, t_max) (t_max < T trains a refiner only on the times it is used at)."""
    t = torch.randint(0, t_max, (len(normals),), generator=generator)
    eps = torch.randn(normals.shape, generator=generator)
    return (net(noise_to(normals, t, eps, scheduler), t, image, feats) - normals).pow(2).mean()


def yoso_loss(net: NormalUNet, image: torch.Tensor, normals: torch.Tensor, shrink: float,
              start_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """YOSO's objective (our reading of paper Sec. 3.2): the one-step x0 loss from a
    shrunk-variance input ``start_scale * eps`` at t = T - 1, for two noise draws, plus the
    shrinkage regulariser ``shrink * ||f(eps_1) - f(eps_2)||^2 / 2``, an unbiased estimate of
    ``shrink`` times the prediction's variance over the input noise (it pulls the distribution of
    outputs toward a point mass)."""
    if shrink < 0 or start_scale < 0:
        raise ValueError("shrink and start_scale must be non-negative")
    eps = start_scale * torch.randn((2 * len(normals), *normals.shape[1:]), generator=generator)
    p1, p2 = net(eps, T - 1, torch.cat([image, image])).chunk(2)  # one pass, two noise draws
    data = 0.5 * ((p1 - normals).pow(2).mean() + (p2 - normals).pow(2).mean())
    return data + shrink * 0.5 * (p1 - p2).pow(2).mean()


@dataclass
class TrainReport:
    kind: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def train_estimator(kind: str, images: np.ndarray, normals: np.ndarray, steps: int,
                    batch: int = 32, lr: float = 2e-3, seed: int = 0, shrink: float = 1.0,
                    start_scale: float = 0.5, refine_t_max: int = 600, log_every: int = 100,
                    log=print) -> tuple[NormalUNet, TrainReport]:
    """Train one estimator of ``kind`` (see :data:`KINDS`) with Adam and a cosine learning-rate
    decay, seeded. ``refiner`` is the SG-DRN stand-in: the diffusion loss on t < refine_t_max
    with :func:`context_features` as extra input."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if steps < 1 or batch < 1:
        raise ValueError("steps and batch must be positive")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_img, x_nrm = torch.from_numpy(images).float(), torch.from_numpy(normals).float()
    net = NormalUNet(size=x_img.shape[-1], features=kind == "refiner")
    sched = make_scheduler()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    report = TrainReport(kind, steps, 0.0)
    start = time.perf_counter()
    for step in range(steps):
        # YOSO sees each image under two noise draws: half the images for the same cost
        idx = torch.randint(0, len(x_img), (batch // 2 if kind == "yoso" else batch,), generator=g)
        img, nrm = x_img[idx], x_nrm[idx]
        if kind == "regression":
            loss = regression_loss(net, img, nrm)
        elif kind == "diffusion":
            loss = diffusion_loss(net, img, nrm, sched, generator=g)
        elif kind == "yoso":
            loss = yoso_loss(net, img, nrm, shrink, start_scale, generator=g)
        else:
            loss = diffusion_loss(net, img, nrm, sched, t_max=refine_t_max,
                                  feats=context_features(img), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        report.losses.append(loss.item())
        if log is not None and (step + 1) % log_every == 0:
            el = time.perf_counter() - start
            log(f"{kind}: step {step + 1}/{steps}, loss {np.mean(report.losses[-log_every:]):.4f}, "
                f"{el / (step + 1) * 1e3:.0f} ms/step")
    report.seconds = time.perf_counter() - start
    net.eval()
    return net, report


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


@torch.no_grad()
def ddim_sample(net: NormalUNet, image: torch.Tensor, steps: int, generator: torch.Generator,
                init: torch.Tensor | None = None, t_start: int = T - 1,
                feats: torch.Tensor | None = None, times: list[int] | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) with an x0-predicting network (DDIM paper Eq. 12):
    ``x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat``, with
    ``eps_hat = (x_t - sqrt(abar_t) f) / sqrt(1 - abar_t)`` from the raw output f and x0_hat
    = f clipped to [-1, 1], over ``steps`` times evenly spaced from ``t_start`` down to 0 (or
    the given ``times``, ending in 0). From pure noise (``init=None``, ``t_start = T - 1``) this
    is the plain diffusion estimator; from ``init`` it first noises ``init`` to ``t_start``
    (SG-DRN's start, paper Sec. 3.3). Returns the final x0 estimate (not normalised)."""
    if steps < 1 or not 0 <= t_start < T:
        raise ValueError(f"need steps >= 1 and 0 <= t_start < {T}")
    abar = make_scheduler().alphas_cumprod.to(image)
    shape = (len(image), 3, *image.shape[-2:])
    eps = torch.randn(shape, generator=generator).to(image) if noise is None else noise
    x = eps if init is None else noise_to(init, torch.full((len(image),), t_start), eps,
                                          make_scheduler())
    if times is None:
        times = np.linspace(t_start, 0, steps + 1).round().astype(int).tolist()
    for t, t_prev in zip(times[:-1], times[1:]):
        raw = net(x, int(t), image, feats)
        x0 = raw.clamp(-1, 1)
        if t_prev == 0:
            return x0
        eps_hat = (x - abar[t].sqrt() * raw) / (1 - abar[t]).sqrt()
        x = abar[t_prev].sqrt() * x0 + (1 - abar[t_prev]).sqrt() * eps_hat
    return x


@torch.no_grad()
def yoso(net: NormalUNet, image: torch.Tensor, generator: torch.Generator,
         start_scale: float = 0.5) -> torch.Tensor:
    """Stage 1, You Only Sample Once: one network pass from ``start_scale * eps`` at t = T - 1."""
    eps = start_scale * torch.randn((len(image), 3, *image.shape[-2:]), generator=generator)
    return _unit(net(eps.to(image), T - 1, image).clamp(-1, 1))


@torch.no_grad()
def stablenormal(yoso_net: NormalUNet, refiner: NormalUNet, image: torch.Tensor,
                 generator: torch.Generator, t_start: int = 300, steps: int = 3,
                 start_scale: float = 0.5) -> torch.Tensor:
    """StableNormal's coarse-to-fine estimate: the YOSO estimate (stage 1), noised to
    ``t_start`` and refined by ``steps`` DDIM steps of the feature-conditioned refiner (stage 2).
    ``steps = 0`` returns the YOSO estimate itself."""
    coarse = yoso(yoso_net, image, generator, start_scale)
    if steps == 0:
        return coarse
    return _unit(ddim_sample(refiner, image, steps, generator, init=coarse, t_start=t_start,
                             feats=context_features(image)))


def save_estimators(nets: dict[str, NormalUNet], folder: Path, meta: dict) -> None:
    """Write each net as float16 ``<kind>.safetensors`` plus ``manifest.json`` (SHA-256, meta)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for kind, net in nets.items():
        path = folder / f"{kind}.safetensors"
        save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()},
                  str(path))
        hashes[path.name] = sha256_file(path)
    (folder / "manifest.json").write_text(json.dumps({"sha256": hashes, "training": meta},
                                                     indent=2) + "\n")


def load_estimators(folder: Path) -> tuple[dict[str, NormalUNet], dict]:
    """Load the shipped estimators after checking every file's SHA-256 against the manifest
    (nothing is unpickled). Returns the nets (float32, eval mode) and the training record."""

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path} is missing; run "
                         "`python -m lib.vision.train_normal_estimators`")
    manifest = json.loads(manifest_path.read_text())
    meta = manifest.get("training", {})
    nets = {}
    for kind in KINDS:
        path = folder / f"{kind}.safetensors"
        state = load_verified(path, manifest.get("sha256", {}).get(path.name))
        net = NormalUNet(size=meta.get("size", 24), features=kind == "refiner")
        net.load_state_dict({k: v.float() for k, v in state.items()})
        nets[kind] = net.eval()
    return nets, meta
