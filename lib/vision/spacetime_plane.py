"""The spatio-temporal plane model of earlier event-clustering methods (the paper's baseline).

After rotation compensation, the events of a line are modelled as a plane in (x, y, t):
``a x + b y + c t + e = 0`` with ``a^2 + b^2 = 1``, that is an image line translating at
constant speed along its normal. This is exact only when the image of the line moves without
turning or changing speed, which perspective breaks (Gao et al., ICCV 2023, Sec. 1 and 4)."""

from __future__ import annotations

import numpy as np

from lib.vision.ransac import RansacResult, ransac

__all__ = ["fit_spacetime_plane", "ransac_spacetime_plane", "spacetime_plane_residual_px"]


def fit_spacetime_plane(pixels: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Least-squares plane ``(a, b, c, e)`` minimising the image-space distances
    ``|a x + b y + c t + e|`` with ``a^2 + b^2 = 1`` (batched over leading axes).

    For fixed ``(a, b)`` the best ``c`` regresses the pixel coordinates on time, so the optimum is
    closed form: remove from the centred pixels their linear trend in time, and take ``(a, b)``
    as the eigenvector of the smallest eigenvalue of the 2x2 scatter of what remains. Three
    events give an exact plane (the minimal sample of RANSAC). NaN for degenerate input
    (all events at one time).
    """
    pixels = np.asarray(pixels, dtype=float)
    times = np.asarray(times, dtype=float)
    if pixels.shape[-1] != 2 or pixels.shape[:-1] != times.shape:
        raise ValueError(f"pixels (..., n, 2) and times (..., n) disagree: {pixels.shape}, "
                         f"{times.shape}")
    if times.shape[-1] < 3:
        raise ValueError(f"a plane needs at least 3 events, got {times.shape[-1]}")
    mean_x = pixels.mean(axis=-2)
    mean_t = times.mean(axis=-1)
    dx = pixels - mean_x[..., None, :]
    dt = times - mean_t[..., None]
    var_t = (dt**2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = (dx * dt[..., None]).sum(axis=-2) / var_t[..., None]
    rest = dx - dt[..., None] * beta[..., None, :]
    scatter = np.einsum("...ni,...nj->...ij", rest, rest)
    scatter = np.where(np.isfinite(scatter), scatter, 0.0)
    normal = np.linalg.eigh(scatter)[1][..., :, 0]
    c = -(normal * beta).sum(axis=-1)
    e = -(normal * mean_x).sum(axis=-1) - c * mean_t
    plane = np.concatenate([normal, c[..., None], e[..., None]], axis=-1)
    return np.where(np.isfinite(var_t[..., None]) & (var_t[..., None] > 0), plane, np.nan)


def spacetime_plane_residual_px(planes: np.ndarray, pixels: np.ndarray,
                                times: np.ndarray) -> np.ndarray:
    """Image distance (px) of each event to the plane's line at the event's time: (B, n)."""
    planes = np.atleast_2d(planes)
    if planes.shape[-1] != 4:
        raise ValueError(f"planes must have 4 coefficients, got shape {planes.shape}")
    value = (planes[:, None, 0] * pixels[None, :, 0] + planes[:, None, 1] * pixels[None, :, 1]
             + planes[:, None, 2] * times[None, :] + planes[:, None, 3])
    return np.abs(value) / np.hypot(planes[:, 0], planes[:, 1])[:, None]


def ransac_spacetime_plane(pixels: np.ndarray, times: np.ndarray, threshold: float,
                           iterations: int, rng: np.random.Generator) -> RansacResult:
    """The plane baseline inside the same RANSAC loop as the eventail: minimal samples of three
    events, the same pixel threshold, then least-squares refits on the inliers."""
    def fit(samples: np.ndarray) -> np.ndarray:
        return fit_spacetime_plane(pixels[samples], times[samples])

    def residuals(models: np.ndarray) -> np.ndarray:
        return spacetime_plane_residual_px(models, pixels, times)

    def refit(model: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        return fit_spacetime_plane(pixels[inliers], times[inliers])

    return ransac(len(times), 3, fit, residuals, threshold, iterations, rng, refine=refit)
