"""Seeded 2-D toy distributions for diffusion and flow miniatures (generated at run time)."""

from __future__ import annotations

import numpy as np
import torch


def eight_gaussians(n: int, rng: np.random.Generator, radius: float = 2.0,
                    std: float = 0.1) -> torch.Tensor:  # fmt: skip
    """``n`` points from eight isotropic Gaussians (std ``std``) centred on a circle of
    ``radius``, the usual 2-D benchmark of flow and diffusion papers; float32 tensor ``(n, 2)``."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if radius <= 0 or std <= 0:
        raise ValueError(f"radius and std must be positive, got {radius}, {std}")
    angle = 2 * np.pi * rng.integers(0, 8, size=n) / 8
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return torch.as_tensor(centres + std * rng.standard_normal((n, 2)), dtype=torch.float32)


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> torch.Tensor:
    """``n`` points of scikit-learn's two moons (``make_moons``), centred and scaled to about
    unit spread; float32 tensor ``(n, 2)``."""
    from sklearn.datasets import make_moons

    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    x, _ = make_moons(n, noise=noise, random_state=int(rng.integers(2**31)))
    x = (x - np.array([0.5, 0.25])) * 1.5
    return torch.as_tensor(x, dtype=torch.float32)


DISTRIBUTIONS = {"eight_gaussians": eight_gaussians, "two_moons": two_moons}
