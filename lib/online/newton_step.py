"""Optimistic online Newton step: optimistic OMD with a matrix regulariser, for exp-concave losses.

The exp-concave result of Chen et al. (2023, exp-concave theorem of Section 3) runs optimistic
OMD with the time-varying regulariser psi_t(x) = (1/2) ||x||_{U_t}^2, so each of its two mirror
steps is a Newton-type step followed by a projection in the U_t-norm:

    x_t       = Pi^{U_t}( xhat_t - U_t^{-1} M_t ),
    xhat_{t+1} = Pi^{U_t}( xhat_t - U_t^{-1} grad f_t(x_t) ),
    U_t = delta I + (gamma / 2) sum_{s<t} grad f_s(x_s) grad f_s(x_s)^T,

with the hint M_t = grad f_{t-1}(x_{t-1}) and gamma = (1/2) min{1 / (4 G D), alpha} for
alpha-exp-concave losses, as in the online Newton step of Hazan, Agarwal and Kale (2007) and its
gradual-variation version by Chiang et al. (2012). U_t accumulates outer products of the
gradients, not of the hint errors: the increments (gamma / 2) g_t g_t^T are what the
exp-concavity term -(gamma / 2) <g_t, x_t - u>^2 cancels, and since
(a - b)(a - b)^T <= 2 a a^T + 2 b b^T they also dominate the hint errors g_t - M_t, which
turns the stability term sum_t ||g_t - M_t||^2_{U_t^{-1}} into
O((d / gamma) log(1 + gamma sum_t ||g_t - M_t||^2)), i.e. O(d log(sigma^2_{1:T} + Sigma^2_{1:T}))
in expectation. The default delta = 1 + gamma G^2 (which lets the missing g_t g_t^T term and
the mismatch between x_t and xhat_{t+1} be absorbed) is our choice of constant.
"""

from __future__ import annotations

import numpy as np

from lib.online.optimistic_omd import HINTS, OnlineRun
from lib.online.projection import project_ball_eigen
from lib.online.streams import SEAStream


def ons_gamma(stream: SEAStream, alpha: np.ndarray | float | None = None) -> np.ndarray:
    """gamma = (1/2) min{1 / (4 G D), alpha} per replicate (Hazan et al., 2007, Theorem 2): (n,).

    G is the replicate's own gradient bound and alpha its exp-concavity constant (default:
    :attr:`SEAStream.exp_concavity`); one value per replicate, so replicates stay independent.
    """
    alpha = stream.exp_concavity if alpha is None else np.broadcast_to(
        np.asarray(alpha, dtype=float), (stream.n,))
    if np.any(~(alpha > 0)):
        raise ValueError("the online Newton step needs exp-concave losses (alpha > 0); "
                         "linear streams are not exp-concave")
    return 0.5 * np.minimum(1.0 / (4.0 * stream.gradient_bound * stream.diameter), alpha)


def optimistic_ons(
    stream: SEAStream,
    *,
    hint: str = "last",
    alpha: np.ndarray | float | None = None,
    delta: float | None = None,
    gamma: np.ndarray | float | None = None,
) -> OnlineRun:
    """Optimistic OMD with the online-Newton regulariser (module docstring), batched.

    ``hint="last"`` is the paper's M_t = grad f_{t-1}(x_{t-1}); ``hint="zero"`` (M_t = 0) makes
    x_t = xhat_t, the non-optimistic online Newton step (the baseline). ``alpha`` defaults to
    the stream's exp-concavity constant, ``delta`` to 1 + gamma G^2 per replicate. The
    returned ``eta`` holds 1 / lambda_min(U_t), the largest step of the round (evaluated every
    64 rounds, held in between). ``gamma`` overrides (1/2) min{1 / (4 G D), alpha}.
    """
    if hint not in HINTS:
        raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
    if gamma is None:
        gamma = ons_gamma(stream, alpha)
    else:
        gamma = np.broadcast_to(np.asarray(gamma, dtype=float), (stream.n,)).copy()
        if np.any(~(gamma > 0)):
            raise ValueError("gamma must be positive")
    if delta is None:
        delta_n = 1.0 + gamma * stream.gradient_bound**2
    else:
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        delta_n = np.full(stream.n, float(delta))

    n, T, d = stream.means.shape
    R = stream.radius
    xs = np.empty((n, T, d))
    steps = np.empty((n, T))
    errors = np.empty((n, T))
    U = delta_n[:, None, None] * np.eye(d)
    U_inv = np.eye(d)[None] / delta_n[:, None, None]  # kept by Sherman-Morrison updates
    xhat = np.zeros((n, d))
    M = np.zeros((n, d))
    c = 0.5 * gamma
    for t in range(T):
        y_play = xhat - np.einsum("nij,nj->ni", U_inv, M)
        x = _project_rows(y_play, U, R) if hint == "last" else xhat
        g = stream.gradient(t, x)
        xhat = _project_rows(xhat - np.einsum("nij,nj->ni", U_inv, g), U, R)
        diff = g - M
        errors[:, t] = np.einsum("nd,nd->n", diff, diff)
        xs[:, t] = x
        # rank-one growth of U_t and of its inverse
        U += c[:, None, None] * g[:, :, None] * g[:, None, :]
        v = np.einsum("nij,nj->ni", U_inv, g)
        U_inv -= (c / (1.0 + c * np.einsum("nd,nd->n", g, v)))[:, None, None] * (
            v[:, :, None] * v[:, None, :])
        steps[:, t] = 1.0 / np.linalg.eigvalsh(U)[:, 0] if t == T - 1 or t % 64 == 0 else np.nan
        if hint == "last":
            M = g
    # the largest step 1 / lambda_min(U_t) is non-increasing; fill the rounds not evaluated
    for t in range(1, T):
        if np.isnan(steps[0, t]):
            steps[:, t] = steps[:, t - 1]
    label = "OONS" if hint == "last" else "ONS (no hint)"
    return OnlineRun(label, xs, steps, errors)


def _project_rows(y: np.ndarray, U: np.ndarray, radius: float) -> np.ndarray:
    """Pi^{U}(y) row by row, decomposing U only for the rows of y outside the ball."""
    outside = np.einsum("nd,nd->n", y, y) > radius**2
    if not outside.any():
        return y
    y = y.copy()
    lam, Q = np.linalg.eigh(U[outside])
    y[outside] = project_ball_eigen(y[outside], lam, Q, radius)
    return y
