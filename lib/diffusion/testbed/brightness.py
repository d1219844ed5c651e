"""Background brightness of testbed images, read off the pixels.

Testbed shapes are centred vertically within ``Y_JITTER`` of row 16 with radii of at most 8 px
(:mod:`lib.diffusion.testbed.data`), so the top and bottom :data:`BORDER_ROWS` rows are always
background. :func:`background_brightness` is their mean grey level: a transparent statistic
that needs no trained model (the caption classifier's brightness head is a learned estimate
of the same quantity).
"""

from __future__ import annotations

import numpy as np
import torch

BORDER_ROWS = 3


def background_brightness(images: torch.Tensor | np.ndarray, rows: int = BORDER_ROWS) -> np.ndarray:
    """Mean grey level ``(n,)`` of the top and bottom ``rows`` rows of images ``(n, 3, H, W)``
    in [0, 1]."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got shape {x.shape}")
    if not 1 <= rows <= x.shape[2] // 2:
        raise ValueError(f"rows must lie in [1, {x.shape[2] // 2}], got {rows}")
    border = np.concatenate([x[:, :, :rows], x[:, :, -rows:]], axis=2)
    return border.mean(axis=(1, 2, 3))


def spread(values: np.ndarray, low: float = 10.0, high: float = 90.0) -> float:
    """Inter-percentile range ``P_high - P_low`` (default P90 - P10) of ``values``."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        raise ValueError("spread needs at least two values")
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got {low}, {high}")
    lo, hi = np.percentile(values, [low, high])
    return float(hi - lo)
