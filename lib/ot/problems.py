"""Small optimal-transport test problems: random assignment, point clouds, digit image pairs."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def point_cloud_problem(
    n: int, rng: np.random.Generator, *, m: int | None = None, dim: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform points in [0, 1]^dim, squared Euclidean cost, uniform marginals: (C, r, c)."""
    m = n if m is None else m
    if n < 1 or m < 1 or dim < 1:
        raise ValueError(f"need n, m, dim >= 1, got n={n}, m={m}, dim={dim}")
    X, Y = rng.random((n, dim)), rng.random((m, dim))
    C = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    return C, np.full(n, 1.0 / n), np.full(m, 1.0 / m)


def random_assignment_problem(
    n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random assignment problem: i.i.d. uniform costs on [0, 1]^(n x n), uniform marginals.

    The unregularised optimum is (almost surely) a unique permutation, so the entropic plan
    concentrates on about n of the n^2 entries as eta grows: the case the sparse Newton
    stage is built for (Tang et al. 2024, Sec. 5-6). Returns (C, r, c).
    """
    if n < 1:
        raise ValueError(f"need n >= 1, got n={n}")
    return rng.random((n, n)), np.full(n, 1.0 / n), np.full(n, 1.0 / n)


@lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images


def digits_problem(
    i: int, j: int, ground: str = "l2sq"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OT between two ``load_digits`` images as histograms on the 8x8 pixel grid.

    Empty pixels are dropped (the dual of an empty bin is -infinity). Pixel coordinates are
    scaled to [0, 1]; ``ground`` is ``"l1"`` (cost |dx| + |dy|, giving W1) or ``"l2sq"``
    (squared Euclidean, giving W2^2).
    """
    images = _digit_images()
    if not (0 <= i < len(images) and 0 <= j < len(images)):
        raise ValueError(f"image indices must be in [0, {len(images)}), got {i}, {j}")
    if ground not in ("l1", "l2sq"):
        raise ValueError(f"ground must be 'l1' or 'l2sq', got {ground!r}")
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2) / 7
    a, b = images[i].ravel(), images[j].ravel()
    X, Y = grid[a > 0], grid[b > 0]
    diff = X[:, None, :] - Y[None, :, :]
    C = np.abs(diff).sum(-1) if ground == "l1" else (diff**2).sum(-1)
    return C, a[a > 0] / a.sum(), b[b > 0] / b.sum()
