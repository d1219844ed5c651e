"""RANSAC with batched hypotheses: draw minimal samples, fit them all at once, keep the model
with the most inliers, then refit on its inliers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["RansacResult", "ransac"]


@dataclass
class RansacResult:
    """The kept model, its inlier mask and how many of the hypotheses were usable (finite)."""

    model: np.ndarray
    inliers: np.ndarray
    valid_hypotheses: int

    @property
    def inlier_fraction(self) -> float:
        return float(self.inliers.mean())


def ransac(
    n_data: int,
    sample_size: int,
    fit: Callable[[np.ndarray], np.ndarray],
    residuals: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    iterations: int,
    rng: np.random.Generator,
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    refits: int = 2,
) -> RansacResult:
    """Random sample consensus (Fischler and Bolles, 1981).

    ``fit(samples)`` maps an integer array (B, sample_size) of data indices to B models (B, p)
    (rows with NaN mark degenerate samples); ``residuals(models)`` maps (B, p) to (B, n_data)
    residuals; a datum is an inlier of a model when its residual is below ``threshold``.
    ``refine(model, inliers)`` (optional) refits the kept model on its inliers, ``refits`` times.
    """
    if sample_size < 1 or n_data < sample_size:
        raise ValueError(f"need at least sample_size={sample_size} data, got {n_data}")
    if threshold <= 0 or iterations < 1:
        raise ValueError(f"threshold and iterations must be positive, got {threshold}, "
                         f"{iterations}")
    samples = np.argsort(rng.random((iterations, n_data)), axis=1)[:, :sample_size]
    models = fit(samples)
    valid = np.all(np.isfinite(models), axis=1)
    if not valid.any():
        raise ValueError("every minimal sample was degenerate")
    res = residuals(models[valid])
    counts = (res < threshold).sum(axis=1)
    best = int(np.argmax(counts))
    model = models[valid][best]
    inliers = res[best] < threshold
    for _ in range(refits if refine is not None else 0):
        if inliers.sum() < sample_size:
            break
        candidate = refine(model, inliers)
        new_inliers = residuals(candidate[None])[0] < threshold
        if new_inliers.sum() < inliers.sum():
            break
        model, inliers = candidate, new_inliers
    return RansacResult(model, inliers, int(valid.sum()))
