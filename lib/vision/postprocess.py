"""Image post-processing that a watermark or fingerprint must survive: Gaussian blur, additive
Gaussian noise, crop-and-resize, and JPEG compression (Pillow's codec, plus a differentiable
8x8-DCT quantisation stand-in for training).

All functions take and return float images ``(n, 3, H, W)`` in [0, 1]. The differentiable ones
(:func:`gaussian_blur`, :func:`gaussian_noise`, :func:`crop_resize`, :func:`dct_quantise`) serve
as training augmentation ``T`` (WOUAF, Kim et al. 2024, Sec. 3.3); :func:`jpeg` is the real codec
for testing.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _check(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (reflect padding)."""
    _check(images)
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    if sigma == 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(images.device)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def gaussian_noise(images: torch.Tensor, std: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Add i.i.d. Gaussian noise of standard deviation ``std`` and clip to [0, 1]."""
    _check(images)
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + std * noise.to(images.device)).clamp(0, 1)


def crop_resize(images: torch.Tensor, keep: float, offset: tuple[float, float] = (0.5, 0.5)
                ) -> torch.Tensor:  # fmt: skip
    """Crop a square of side ``keep`` times the image side (``offset`` in [0, 1]^2 places it)
    and resize it back bilinearly: a crop plus a rescale."""
    _check(images)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    h, w = images.shape[-2:]
    ch, cw = max(1, round(keep * h)), max(1, round(keep * w))
    top, left = round(offset[0] * (h - ch)), round(offset[1] * (w - cw))
    crop = images[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


# JPEG's standard luminance table (ITU-T T.81, Annex K), used here for all channels.
_JPEG_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
    dtype=torch.float32)  # fmt: skip


def quality_table(quality: int) -> torch.Tensor:
    """The 8x8 quantisation steps of JPEG quality ``quality`` (IJG's scaling rule)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return ((_JPEG_TABLE * scale + 50) // 100).clamp(min=1)


def dct_quantise(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG's lossy step, differentiably: 8x8 block DCT of each channel (pixel range 0..255),
    rounding to the quality's steps with a straight-through gradient, inverse DCT. No colour
    subsampling or entropy coding. Sides must be multiples of 8."""
    _check(images)
    h, w = images.shape[-2:]
    if h % 8 or w % 8:
        raise ValueError(f"image sides must be multiples of 8, got {h}x{w}")
    d = _dct_matrix().to(images.device)
    q = quality_table(quality).to(images.device)
    x = images * 255 - 128
    blocks = x.unfold(2, 8, 8).unfold(3, 8, 8)  # (n, 3, h/8, w/8, 8, 8)
    coef = d @ blocks @ d.T
    rounded = coef / q
    rounded = rounded + (torch.round(rounded) - rounded).detach()  # straight-through rounding
    out = d.T @ (rounded * q) @ d
    out = out.permute(0, 1, 2, 4, 3, 5).reshape(images.shape)
    return ((out + 128) / 255).clamp(0, 1)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """A real JPEG round trip through Pillow's encoder at ``quality`` (no gradient)."""
    _check(images)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    out = []
    for img in (images.detach().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1):
        buf = io.BytesIO()
        Image.fromarray(img.numpy()).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float().div(255).to(images.device)


def random_postprocess(images: torch.Tensor, generator: torch.Generator,
                       p: float = 0.5) -> torch.Tensor:  # fmt: skip
    """Training augmentation: each of blur (sigma in [0.3, 1.5]), noise (std in [0, 0.08]),
    crop-resize (keep in [0.7, 1]) and DCT quantisation (quality in [40, 90]) applied to the
    whole batch with probability ``p``, strengths drawn at random (differentiable)."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p}")

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    x = images
    if u(0, 1) < p:
        x = crop_resize(x, u(0.7, 1.0), (u(0, 1), u(0, 1)))
    if u(0, 1) < p:
        x = gaussian_blur(x, u(0.3, 1.5))
    if u(0, 1) < p:
        x = dct_quantise(x, round(u(40, 90)))
    if u(0, 1) < p:
        x = gaussian_noise(x, u(0.0, 0.08), generator)
    return x
