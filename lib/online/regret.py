"""Regret bookkeeping for :class:`lib.online.streams.SEAStream` (closed-form comparators).

Static regret (Chen et al., 2023, Section 2) compares the learner with the best fixed point in
hindsight, R_T = sum_t f_t(x_t) - min_{x in X} sum_t f_t(x). Dynamic regret compares it with a
moving comparator u_1, ..., u_T; here u_t = argmin F_t, the optimum of the round's expected loss
(for a piecewise-constant mean, the per-segment optimum).

For the streams of :mod:`lib.online.streams` every comparator has a closed form on the ball:
linear prefix sums C_t give min_x <C_t, x> = -radius ||C_t||, and a sum of t quadratics with the
same curvature H is a single quadratic centred at the running mean of the c_s, minimised over
the ball by a projection in the H-norm (:func:`lib.online.projection.project_ball_metric`).
"""

from __future__ import annotations

import numpy as np

from lib.online.projection import project_ball_metric
from lib.online.streams import SEAStream


def project_ball(x: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto the ball {||x|| <= radius}, along the last axis."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x * np.minimum(1.0, radius / np.maximum(norms, 1e-300))


def _check_plays(stream: SEAStream, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != stream.means.shape:
        raise ValueError(f"plays must have shape (n, T, d) = {stream.means.shape}, got {x.shape}")
    if np.any(np.linalg.norm(x, axis=-1) > stream.radius * (1 + 1e-9)):
        raise ValueError("plays must lie in the decision set (the ball of radius stream.radius)")
    return x


def hindsight_minimisers(stream: SEAStream) -> np.ndarray:
    """argmin_{x in X} sum_{s <= t} f_s(x) for every prefix t, shape (n, T, d).

    This is Follow-The-Leader's next play: FTL plays at round t + 1 the minimiser after t rounds.
    """
    cums = np.cumsum(stream.centres, axis=1)
    if stream.kind == "linear":
        norms = np.linalg.norm(cums, axis=-1, keepdims=True)
        safe = np.where(norms > 0, norms, 1.0)
        return np.where(norms > 0, -stream.radius * cums / safe, 0.0)
    counts = np.arange(1, stream.T + 1)[None, :, None]
    return project_ball_metric(cums / counts, stream.curvature, stream.radius, diagonal=True)


def hindsight_min_curve(stream: SEAStream) -> np.ndarray:
    """min_{x in X} sum_{s <= t} f_s(x) for every prefix t, shape (n, T)."""
    cums = np.cumsum(stream.centres, axis=1)
    if stream.kind == "linear":
        return -stream.radius * np.linalg.norm(cums, axis=-1)
    counts = np.arange(1, stream.T + 1)[None, :]
    mean = cums / counts[..., None]
    h = stream.curvature
    best = project_ball_metric(mean, h, stream.radius, diagonal=True)
    sq = np.cumsum((h * stream.centres**2).sum(-1), axis=1)
    # sum_s ||x - c_s||_H^2 = t ||x - mean||_H^2 + sum_s ||c_s||_H^2 - t ||mean||_H^2
    inner = counts * (h * (best - mean) ** 2).sum(-1) + sq - counts * (h * mean**2).sum(-1)
    return 0.5 * inner


def regret_curve(stream: SEAStream, x: np.ndarray) -> np.ndarray:
    """Static regret of every prefix, R_t = sum_{s<=t} f_s(x_s) - min_x sum_{s<=t} f_s(x): (n, T).

    The algorithms here never use the horizon, so R_t is also the regret of a run of length t.
    """
    x = _check_plays(stream, x)
    return np.cumsum(stream.losses(x), axis=1) - hindsight_min_curve(stream)


def static_regret(stream: SEAStream, x: np.ndarray) -> np.ndarray:
    """Static regret R_T of each replicate, shape (n,)."""
    return regret_curve(stream, x)[:, -1]


def expected_minimisers(stream: SEAStream) -> np.ndarray:
    """u_t = argmin_{x in X} F_t(x) for every round, shape (n, T, d)."""
    mu = stream.means
    if stream.kind == "quadratic":
        return project_ball_metric(mu, stream.curvature, stream.radius, diagonal=True)
    norms = np.linalg.norm(mu, axis=-1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, -stream.radius * mu / safe, 0.0)


def path_length(stream: SEAStream) -> np.ndarray:
    """P_T = sum_{t>=2} ||u_t - u_{t-1}|| of the comparators u_t = argmin F_t, per replicate: (n,).

    The path length of the dynamic-regret bounds (Zinkevich, 2003; Chen et al., 2023).
    """
    u = expected_minimisers(stream)
    return np.linalg.norm(np.diff(u, axis=1), axis=-1).sum(axis=1)


def dynamic_regret_curve(stream: SEAStream, x: np.ndarray) -> np.ndarray:
    """Dynamic regret sum_{s<=t} f_s(x_s) - f_s(u_s) against u_s = argmin F_s: shape (n, T)."""
    x = _check_plays(stream, x)
    return np.cumsum(stream.losses(x) - stream.losses(expected_minimisers(stream)), axis=1)


def constant_player(stream: SEAStream, point: np.ndarray | None = None) -> np.ndarray:
    """Plays of a learner that ignores all feedback and always plays ``point`` (default 0)."""
    point = np.zeros(stream.d) if point is None else np.asarray(point, dtype=float)
    if point.shape != (stream.d,):
        raise ValueError(f"point must have shape ({stream.d},), got {point.shape}")
    if np.linalg.norm(point) > stream.radius:
        raise ValueError("point must lie in the decision set")
    return np.broadcast_to(point, stream.means.shape).copy()
