"""Inpainting with a latent diffusion model, and the region metrics that judge it.

* :func:`random_masks`: seeded rectangle and brush-stroke holes (1 = pixel to generate).
* :func:`latent_mask`: the hole on the latent grid (a latent cell is unknown if any of its
  pixels is).
* :func:`inpaint_latents`: text-guided inpainting with a plain (non-inpainting) UNet by latent
  replacement: after every DDIM step the known region of the latent is overwritten by the
  known image's latent noised to the same level (RePaint's replacement step without its
  resampling, Lugmayr et al., 2022; the "legacy" inpainting of SD pipelines).
* :func:`region_psnr`, :func:`border_band`, :func:`boundary_gradient_error`: PSNR inside a
  region, the band of pixels along the hole's border, and the seam metric: how much the
  image's finite differences across the hole's boundary differ from the reference's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.diffusion.sampling import guided


def random_masks(n: int, rng: np.random.Generator, size: int = 32,
                 kind: str = "mixed") -> torch.Tensor:  # fmt: skip
    """``(n, 1, size, size)`` float holes in {0, 1} (1 = unknown).

    ``kind``: ``"box"`` (an axis-aligned rectangle, sides 1/4 to 5/8 of the image),
    ``"brush"`` (2-4 thick random-walk strokes, radius 1.5-3 px), ``"mixed"`` (each image
    one of the two, evenly), ``"full"`` (everything unknown: text-to-image mode).
    """
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    if kind not in ("box", "brush", "mixed", "full"):
        raise ValueError(f"kind must be 'box', 'brush', 'mixed' or 'full', got {kind!r}")
    if kind == "full":
        return torch.ones(n, 1, size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, size, size), dtype=np.float32)
    kinds = rng.integers(0, 2, n) if kind == "mixed" else np.full(n, kind == "brush")
    for i in range(n):
        if not kinds[i]:
            h, w = rng.integers(size // 4, 5 * size // 8 + 1, 2)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            out[i, top : top + h, left : left + w] = 1
            continue
        for _ in range(rng.integers(2, 5)):
            p = rng.uniform(0, size, 2)
            radius = rng.uniform(1.5, 3.0)
            for _ in range(rng.integers(2, 5)):
                angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(4, size / 3)
                q = np.clip(p + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
                d = q - p  # distance of every pixel to the segment p -> q
                t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
                dist = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1])
                out[i][dist <= radius] = 1
                p = q
    return torch.from_numpy(out[:, None])


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """The hole on a grid ``factor`` times coarser: a cell is unknown if any pixel in it is."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (n, 1, H, W), got {tuple(mask.shape)}")
    if factor < 1 or mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(f"factor {factor} does not divide the mask size {tuple(mask.shape[-2:])}")
    return F.max_pool2d(mask.float(), factor)


@torch.no_grad()
def inpaint_latents(
    unet: torch.nn.Module,
    scheduler: Any,
    known_latents: torch.Tensor,
    mask: torch.Tensor,
    text_states: torch.Tensor,
    empty_states: torch.Tensor,
    *,
    steps: int = 20,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Guided DDIM sampling whose known region follows the known latents (latent replacement).

    ``known_latents`` ``(n, c, h, w)`` are the scaled latents of the images to complete,
    ``mask`` ``(n, 1, h, w)`` the latent hole (1 = generate). At every step ``t -> t'`` the
    sample keeps its own values inside the hole and takes ``q(z_t' | z_0 = known)`` outside:
    ``z_t' <- m * z_t' + (1 - m) * (sqrt(abar_t') z_known + sqrt(1 - abar_t') eps)``, and the
    known latents themselves after the last step.
    """
    if steps < 1 or guidance < 1.0:
        raise ValueError(f"need steps >= 1 and guidance >= 1, got {steps}, {guidance}")
    n = known_latents.shape[0]
    if mask.shape != (n, 1, *known_latents.shape[-2:]):
        raise ValueError(f"latent mask {tuple(mask.shape)} does not fit latents "
                         f"{tuple(known_latents.shape)}")  # fmt: skip
    if text_states.shape[0] != n:
        raise ValueError(f"{text_states.shape[0]} text states for {n} latents")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps

    def noise() -> torch.Tensor:
        return torch.randn(known_latents.shape, generator=generator).to(known_latents.device)

    latents = noise() * scheduler.init_noise_sigma
    latents = mask * latents + (1 - mask) * scheduler.add_noise(known_latents, noise(),
                                                                timesteps[:1])  # fmt: skip
    context = torch.cat([empty_states.expand(n, -1, -1), text_states])
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = guided(unet(x, t, encoder_hidden_states=context).sample, guidance)
        latents = scheduler.step(eps, t, latents).prev_sample
        if i + 1 < len(timesteps):
            known = scheduler.add_noise(known_latents, noise(), timesteps[i + 1 : i + 2])
        else:
            known = known_latents
        latents = mask * latents + (1 - mask) * known
    return latents


def _check_pair(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"images must share one (n, C, H, W) shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")  # fmt: skip
    if region.shape != (x.shape[0], 1, *x.shape[-2:]):
        raise ValueError(f"region {tuple(region.shape)} does not fit images {tuple(x.shape)}")


def region_psnr(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor,
                data_range: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Per-image PSNR (dB) of ``x`` against ``y`` over the pixels where ``region`` is 1:
    ``10 log10(range^2 / mean_{region, channels} (x - y)^2)``. Raises ValueError if an image's
    region is empty."""
    _check_pair(x, y, region)
    r = region.to(x.dtype)
    count = r.sum(dim=(1, 2, 3)) * x.shape[1]
    if (count == 0).any():
        raise ValueError("region is empty for some image")
    mse = (((x - y) ** 2) * r).sum(dim=(1, 2, 3)) / count
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def border_band(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Pixels within ``width`` (Chebyshev distance) of the hole's border, on both sides."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    k = 2 * width + 1
    dilated = F.max_pool2d(mask.float(), k, stride=1, padding=width)
    eroded = -F.max_pool2d(-mask.float(), k, stride=1, padding=width)
    return dilated - eroded


def boundary_gradient_error(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image seam error: mean over neighbouring pixel pairs ``(p, q)`` that straddle the
    hole's border (one known, one unknown; horizontal and vertical neighbours) and over
    channels of ``|(x_q - x_p) - (y_q - y_p)|``. Zero when ``x`` steps across the border
    exactly as the reference ``y`` does. Raises ValueError if an image's hole has no border."""
    _check_pair(x, y, mask)
    errs, counts = 0.0, 0.0
    for dim in (-1, -2):
        dx, dy = torch.diff(x, dim=dim), torch.diff(y, dim=dim)
        cross = (torch.diff(mask, dim=dim) != 0).to(x.dtype)  # (n, 1, ., .)
        errs = errs + ((dx - dy).abs().mean(dim=1, keepdim=True) * cross).sum(dim=(1, 2, 3))
        counts = counts + cross.sum(dim=(1, 2, 3))
    if (counts == 0).any():
        raise ValueError("mask has no border inside the image for some image")
    return errs / counts
