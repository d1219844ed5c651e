"""Synthetic 2-D organ images with a tumour of known size, misaligned by affine + elastic warps.

A miniature of the paper's setting (liver CT with tumours, LiTS17): the *moving* image holds an
organ with a bright round tumour; the *fixed* image holds the same organ, without the tumour,
under a random affine map and a smooth elastic deformation. A registration driven by image
similarity alone has no counterpart for the tumour in the fixed image and shrinks it. Tumour
masks are returned for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass
class OrganPairs:
    """A batch of moving/fixed pairs, each tensor of shape (n, 1, size, size), float32."""

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_organ: torch.Tensor     # organ mask (tumour included) in the moving frame
    fixed_organ: torch.Tensor      # organ mask in the fixed frame
    moving_tumour: torch.Tensor    # tumour mask in the moving frame (evaluation only)
    tumour_radius: np.ndarray      # radius in pixels, per pair

    def __len__(self) -> int:
        return self.moving.shape[0]


def _base_organ(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic organ with smooth texture and a few dark 'vessels'; image and mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    c = (size - 1) / 2 + rng.uniform(-0.04, 0.04, size=2) * size
    ax, ay = rng.uniform(0.33, 0.40) * size, rng.uniform(0.26, 0.32) * size
    t = rng.uniform(0, np.pi)
    dx, dy = xx - c[0], yy - c[1]
    u = (np.cos(t) * dx + np.sin(t) * dy) / ax
    v = (-np.sin(t) * dx + np.cos(t) * dy) / ay
    rho = np.sqrt(u**2 + v**2)
    inside = 1 / (1 + np.exp((rho - 1) * size / 3))   # soft edge, about 1 px wide
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    texture /= texture.std() + 1e-12
    image = inside * (0.5 + 0.06 * texture)
    for _ in range(3):   # dark vessel-like blobs inside the organ
        r, a = rng.uniform(0.2, 0.7), rng.uniform(0, 2 * np.pi)
        bx = c[0] + r * (np.cos(t) * ax * np.cos(a) - np.sin(t) * ay * np.sin(a))
        by = c[1] + r * (np.sin(t) * ax * np.cos(a) + np.cos(t) * ay * np.sin(a))
        s = rng.uniform(0.04, 0.07) * size
        image -= 0.25 * inside * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * s**2))
    return image, (rho < 1).astype(float)


def _misalignment(rng: np.random.Generator, size: int, shift: float, scale: tuple[float, float],
                  rotation_deg: float, elastic_px: float) -> np.ndarray:
    """Coordinates (2, size, size) at which to sample the base image: affine + elastic."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    half = (size - 1) / 2
    s = rng.uniform(*scale)
    a = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    tx, ty = rng.uniform(-shift, shift, size=2) * half
    px, py = xx - half, yy - half
    sx = (np.cos(a) * px - np.sin(a) * py) / s + half + tx
    sy = (np.sin(a) * px + np.cos(a) * py) / s + half + ty
    field = ndimage.gaussian_filter(rng.standard_normal((2, size, size)), (0, size / 8, size / 8))
    field *= elastic_px / (np.abs(field).max() + 1e-12)
    return np.stack((sy + field[1], sx + field[0]))


def make_organ_pairs(
    n: int,
    rng: np.random.Generator,
    *,
    size: int = 64,
    tumour_radius: tuple[float, float] = (4.0, 8.0),
    tumour_contrast: float = 0.45,
    shift: float = 0.15,
    scale: tuple[float, float] = (0.85, 1.15),
    rotation_deg: float = 10.0,
    elastic_px: float = 2.5,
) -> OrganPairs:
    """``n`` moving/fixed pairs of ``size`` x ``size`` organ images (the miniature's data set).

    The fixed image samples the base organ at an affine map (shift up to ``shift`` of the
    half-width, isotropic scale in ``scale``, rotation up to ``rotation_deg``) plus a smooth
    elastic field of amplitude ``elastic_px``; the moving image is the base organ with a bright
    disk of radius in ``tumour_radius`` added inside it (``tumour_contrast`` above the organ)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    lo, hi = tumour_radius
    if not 0 < lo <= hi or hi > size / 6:
        raise ValueError(
            f"tumour_radius must satisfy 0 < lo <= hi <= size / 6, got {tumour_radius}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be an increasing pair of positive numbers, got {scale}")
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    out = {k: [] for k in ("moving", "fixed", "moving_organ", "fixed_organ", "moving_tumour")}
    radii = rng.uniform(lo, hi, size=n)
    for r in radii:
        base, organ = _base_organ(rng, size)
        # tumour centre: a point of the organ at least r + 3 px from its edge
        depth = ndimage.distance_transform_edt(organ)
        candidates = np.argwhere(depth > r + 3)
        cy, cx = candidates[rng.integers(len(candidates))]
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        tumour_soft = 1 / (1 + np.exp((dist - r) * 2.0))
        moving = base + tumour_contrast * tumour_soft
        coords = _misalignment(rng, size, shift, scale, rotation_deg, elastic_px)
        fixed = ndimage.map_coordinates(base, coords, order=1, mode="constant")
        fixed_organ = ndimage.map_coordinates(organ, coords, order=1, mode="constant") > 0.5
        out["moving"].append(moving)
        out["fixed"].append(fixed)
        out["moving_organ"].append(organ)
        out["fixed_organ"].append(fixed_organ)
        out["moving_tumour"].append(dist < r)
    tensors = {k: torch.tensor(np.stack(v)[:, None], dtype=torch.float32) for k, v in out.items()}
    return OrganPairs(**tensors, tumour_radius=radii)
