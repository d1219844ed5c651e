"""A synthetic height-field renderer with exact surface normals, and normal-map metrics.

The miniature testbed of the StableNormal chapter (paper 07): random height fields made of
Gaussian bumps and dents, flat-topped boxes (sharp steps) and ridges are turned into exact
ground-truth normals by finite differences, and into grey images by Lambertian shading under a
random light, with a smooth albedo and sensor noise. Bumps and dents look alike under a light
from the opposite side, so a light azimuth drawn from a half circle leaves images near the ends
of that range genuinely ambiguous: the posterior over normals is then multimodal, which is what
makes a diffusion estimator's samples differ from seed to seed.

Metrics follow the normal-estimation literature: the per-pixel angle between prediction and
truth (mean angular error), the per-pixel spread of predictions across sampling seeds, and a
sharpness ratio on edge pixels (how much of the true normal-map gradient a prediction keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NormalDataset",
    "angular_error",
    "heights_to_normals",
    "render_heightfield_dataset",
    "seed_spread",
    "sharpness_ratio",
    "shade",
]


@dataclass
class NormalDataset:
    """Rendered pairs. ``images`` (n, 1, H, W) in [0, 1]; ``normals`` (n, 3, H, W), unit length,
    z toward the camera; ``heights`` (n, H, W); ``lights`` (n, 3) unit vectors; ``edges`` (n, H, W)
    bool, the pixels where the true normal turns by more than ``edge_degrees`` to a neighbour."""

    images: np.ndarray
    normals: np.ndarray
    heights: np.ndarray
    lights: np.ndarray
    edges: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def heights_to_normals(heights: np.ndarray) -> np.ndarray:
    """Unit normals ``(-h_x, -h_y, 1) / norm`` of height fields (..., H, W) by central
    differences (one-sided at the border); returns (..., 3, H, W)."""
    h = np.asarray(heights, dtype=np.float64)
    if h.ndim < 2 or min(h.shape[-2:]) < 2:
        raise ValueError(f"heights must be (..., H, W) with H, W >= 2, got shape {h.shape}")
    hy, hx = np.gradient(h, axis=(-2, -1))
    n = np.stack([-hx, -hy, np.ones_like(h)], axis=-3)
    return n / np.linalg.norm(n, axis=-3, keepdims=True)


def shade(normals: np.ndarray, light: np.ndarray, albedo: np.ndarray | float = 1.0,
          ambient: float = 0.05) -> np.ndarray:
    """Lambertian shading ``albedo * max(0, n . l) + ambient`` of normals (3, H, W) under a unit
    light (3,)."""
    light = np.asarray(light, dtype=np.float64)
    if light.shape != (3,) or not np.isclose(np.linalg.norm(light), 1.0):
        raise ValueError("light must be a unit vector of shape (3,)")
    return albedo * np.clip(np.einsum("chw,c->hw", normals, light), 0.0, None) + ambient


def _height_field(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    h = np.zeros((size, size))
    for _ in range(rng.integers(2, 5)):  # bumps and dents
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        s = rng.uniform(0.08, 0.18) * size
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2) * s
        h += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    for _ in range(rng.integers(1, 3)):  # flat-topped boxes: sharp steps
        x0, y0 = rng.integers(1, size - 8, 2)
        w, hgt = rng.integers(6, size // 2, 2)
        h[y0:y0 + hgt, x0:x0 + w] += rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.0)
    if rng.random() < 0.5:  # a ridge (a tent profile along a random direction)
        theta = rng.uniform(0, np.pi)
        d = (xx - size / 2) * np.cos(theta) + (yy - size / 2) * np.sin(theta) - rng.uniform(-8, 8)
        h += rng.uniform(2.0, 4.0) * np.clip(1 - np.abs(d) / rng.uniform(3, 6), 0, None)
    return h


def render_heightfield_dataset(n: int, seed: int, size: int = 32, noise: float = 0.02,
                               azimuth_range: float = np.pi, edge_degrees: float = 20.0
                               ) -> NormalDataset:
    """Render ``n`` (image, normal map) pairs from random height fields (seeded).

    The light's azimuth is uniform on ``[-azimuth_range / 2, azimuth_range / 2]`` around the +x
    axis and its elevation uniform on [30, 60] degrees; ``azimuth_range = pi`` (a half circle)
    leaves the bump/dent ambiguity open for lights near the ends of the range. The albedo is a
    smooth random field in [0.6, 1]; Gaussian noise of std ``noise`` is added to the image.
    """
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    if not 0 < azimuth_range <= 2 * np.pi:
        raise ValueError(f"azimuth_range must lie in (0, 2 pi], got {azimuth_range}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    heights = np.stack([_height_field(rng, size) for _ in range(n)])
    normals = heights_to_normals(heights)
    az = rng.uniform(-azimuth_range / 2, azimuth_range / 2, n)
    el = np.deg2rad(rng.uniform(30, 60, n))
    lights = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, 1, size, size))
    for i in range(n):
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi, 2)
        albedo = 0.8 + 0.2 * (np.sin(2 * np.pi * fx * xx + ph[0])
                              * np.sin(2 * np.pi * fy * yy + ph[1]))
        images[i, 0] = shade(normals[i], lights[i], albedo)
    images = np.clip(images + noise * rng.standard_normal(images.shape), 0.0, 1.0)
    cos_x = np.einsum("nchw,nchw->nhw", normals[..., :, 1:], normals[..., :, :-1])
    cos_y = np.einsum("nchw,nchw->nhw", normals[..., 1:, :], normals[..., :-1, :])
    turn = np.zeros(heights.shape)
    ax = np.degrees(np.arccos(np.clip(cos_x, -1, 1)))
    ay = np.degrees(np.arccos(np.clip(cos_y, -1, 1)))
    turn[..., :, 1:] = np.maximum(turn[..., :, 1:], ax)
    turn[..., :, :-1] = np.maximum(turn[..., :, :-1], ax)
    turn[..., 1:, :] = np.maximum(turn[..., 1:, :], ay)
    turn[..., :-1, :] = np.maximum(turn[..., :-1, :], ay)
    return NormalDataset(images.astype(np.float32), normals.astype(np.float32),
                         heights.astype(np.float32), lights.astype(np.float32),
                         turn > edge_degrees)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.clip(np.linalg.norm(v, axis=-3, keepdims=True), 1e-12, None)


def angular_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel angle in degrees between predicted and true normals (..., 3, H, W); the
    prediction is normalised first (the metric of the normal-estimation benchmarks)."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim < 3 or pred.shape[-3] != 3:
        raise ValueError(f"need matching (..., 3, H, W) arrays, got {pred.shape} and {truth.shape}")
    cos = np.einsum("...chw,...chw->...hw", _unit(pred), _unit(truth))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def seed_spread(samples: np.ndarray) -> np.ndarray:
    """Per-pixel angular spread across sampling seeds: samples (S, ..., 3, H, W) -> the root mean
    square angle (degrees) between each seed's normal and the seeds' mean direction."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim < 4 or samples.shape[0] < 2:
        raise ValueError(f"need at least two seeds stacked on axis 0, got shape {samples.shape}")
    unit = _unit(samples)
    mean = np.broadcast_to(_unit(unit.mean(axis=0)), unit.shape)
    return np.sqrt((angular_error(unit, mean) ** 2).mean(axis=0))


def sharpness_ratio(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """How much of the true normal map's gradient a prediction keeps on the masked (edge)
    pixels: the mean finite-difference gradient magnitude of the normalised prediction over that
    of the truth, on ``mask``. A blurred estimate scores below 1."""
    if not np.any(mask):
        raise ValueError("mask selects no pixel")

    def grad(v: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(_unit(np.asarray(v, dtype=np.float64)), axis=(-2, -1))
        return np.sqrt((gx ** 2 + gy ** 2).sum(axis=-3))

    return float(grad(pred)[mask].mean() / grad(truth)[mask].mean())
