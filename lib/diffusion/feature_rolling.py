"""Tileable sampling: feature rolling and noise rolling (StableMaterials, Vecchio 2024, Sec. 3.4).

A texture tiles when its right edge continues its left edge. A UNet with zero padding sees its
image border as the end of the world, so what it generates there on one side has nothing to do
with the other side: a seam. Two remedies, both training-free:

* **noise rolling** -- before every denoising step, circularly shift the noisy sample by a
  random offset (``torch.roll``); the seam of one step falls in the interior at the next, where
  the network repairs it. The seam left by the *last* step stays, so this needs many steps.
* **feature rolling** -- inside the network, shift every convolution's input by a random offset
  ``r`` (a multiple of its stride ``s``, so the shift can be undone exactly on the output grid),
  convolve and shift the output back by ``r / s``. The official pipeline
  (``rolled_conv`` in the released StableMaterials code) also pads each input *circularly*
  before the convolution and crops after, so no layer sees a border at all:

      y = roll(crop(conv(pad_circ(roll(x, r), P)), P / s), -r / s),   P = s * ceil(p / s)

  where ``p`` is the convolution's own (zero) padding. With circular padding the roll changes
  nothing (a convolution commutes with circular shifts that are multiples of its stride), which
  :func:`circular_padding` (torch's own ``padding_mode="circular"``) makes checkable;
  ``circular=False`` keeps the zero padding, so each layer's border falls at a random place
  instead of at the image edge (the paper's wording, read literally). Attention in diffusers'
  UNet has no position embedding, so it is unchanged by a shift and needs no hook. As in the
  official pipeline, feature rolling starts after the first quarter of the steps
  (``rolling_from``), once the coarse layout is set.

:func:`sample_tileable` runs any diffusers scheduler (``LCMScheduler`` for the distilled model,
``DDIMScheduler`` with guidance for the teacher) in one of the three modes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("plain", "noise", "feature")


def _padded_convs(module: nn.Module) -> list[nn.Conv2d]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"feature rolling needs integer zero padding; {conv} has "
                             f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    return [c for c in convs if any(p > 0 for p in c.padding)]


@contextlib.contextmanager
def rolled_convolutions(module: nn.Module, generator: torch.Generator | None = None, *,
                        circular: bool = True) -> Iterator[None]:  # fmt: skip
    """Within the block, every padded ``Conv2d`` of ``module`` rolls its input by a fresh random
    offset (a multiple of its stride, per call), convolves, and unrolls its output; with
    ``circular`` the rolled input is first padded circularly by ``P = s * ceil(p / s)`` and the
    output cropped by ``P / s`` (the official rule; see the module docstring). The hooks are
    removed on exit, also after an error."""
    pending: dict[int, tuple[int, int, int, int]] = {}

    def before(conv: nn.Conv2d, args: tuple) -> tuple:
        x = args[0]
        (sy, sx), (py, px) = conv.stride, conv.padding
        h, w = x.shape[-2:]
        if h % sy or w % sx:
            raise ValueError(f"feature rolling needs feature maps divisible by the stride; "
                             f"got {h}x{w} for stride {conv.stride}")
        ry = int(torch.randint(0, h // sy, (1,), generator=generator)) * sy
        rx = int(torch.randint(0, w // sx, (1,), generator=generator)) * sx
        x = torch.roll(x, (ry, rx), dims=(-2, -1))
        cy = cx = 0
        if circular:
            pad_y, pad_x = sy * math.ceil(py / sy), sx * math.ceil(px / sx)
            x = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="circular")
            cy, cx = pad_y // sy, pad_x // sx
        pending[id(conv)] = (ry // sy, rx // sx, cy, cx)
        return (x, *args[1:])

    def after(conv: nn.Conv2d, args: tuple, out: torch.Tensor) -> torch.Tensor:
        uy, ux, cy, cx = pending.pop(id(conv))
        if cy or cx:
            out = out[..., cy:out.shape[-2] - cy, cx:out.shape[-1] - cx]
        return torch.roll(out, (-uy, -ux), dims=(-2, -1))

    handles = []
    try:
        for conv in _padded_convs(module):
            handles.append(conv.register_forward_pre_hook(before))
            handles.append(conv.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def circular_padding(module: nn.Module) -> Iterator[None]:
    """Within the block, every padded ``Conv2d`` of ``module`` uses torch's own
    ``padding_mode="circular"`` (restored to ``"zeros"`` on exit): the reference that
    :func:`rolled_convolutions` with ``circular=True`` must match."""
    convs = _padded_convs(module)
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv in convs:
            conv.padding_mode = "zeros"


def _offset(size: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, size, (1,), generator=generator))


@torch.no_grad()
def sample_tileable(
    unet: nn.Module, scheduler: Any, text_states: torch.Tensor, *, mode: str = "feature",
    steps: int = 4, empty_states: torch.Tensor | None = None, guidance: float = 1.0,
    circular: bool = True, rolling_from: float = 0.25, generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples ``(n, C, H, W)`` from an epsilon-prediction ``unet`` with ``scheduler``.

    ``mode``: ``"plain"`` (nothing rolled), ``"noise"`` (the sample is rolled by a random
    offset before every step; it is returned as the last step saw it, so the last network
    border is the image border; any roll of a tileable texture is as good as another) or
    ``"feature"`` (:func:`rolled_convolutions` for steps ``i >= floor(rolling_from * steps)``).
    With ``empty_states`` and ``guidance > 1`` each step is classifier-free guided
    (``eps_u + w (eps_c - eps_u)``); an LCM-distilled model takes ``guidance = 1``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1, got {guidance}")
    if guidance > 1.0 and empty_states is None:
        raise ValueError("guidance > 1 needs empty_states")
    if not 0.0 <= rolling_from < 1.0:
        raise ValueError(f"rolling_from must lie in [0, 1), got {rolling_from}")
    n = text_states.shape[0]
    cfg = unet.config
    if latents is None:
        latents = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                              generator=generator)  # fmt: skip
    x = latents.to(text_states) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    guided = guidance > 1.0
    context = torch.cat([empty_states.expand(n, -1, -1), text_states]) if guided else text_states
    first_rolled = math.floor(rolling_from * steps)
    for i, t in enumerate(scheduler.timesteps):
        if mode == "noise":
            x = torch.roll(x, (_offset(x.shape[-2], generator), _offset(x.shape[-1], generator)),
                           dims=(-2, -1))  # fmt: skip
        inp = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        rolled = mode == "feature" and i >= first_rolled
        hooks = rolled_convolutions(unet, generator, circular=circular) if rolled else (
            contextlib.nullcontext())  # fmt: skip
        with hooks:
            eps = unet(inp, t, encoder_hidden_states=context).sample
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x
