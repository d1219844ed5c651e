"""Two-layer optimistic ensemble for dynamic regret in the SEA model.

Dynamic regret compares with a moving comparator u_1, ..., u_T of path length
P_T = sum_t ||u_t - u_{t-1}||. Optimistic OMD with a fixed step eta has dynamic regret of order
(D^2 + D P_T) / eta + eta sum_t ||g_t - M_t||^2, so the best step depends on the unknown P_T.
Chen et al. (2023, dynamic-regret section) remove that dependence with an online ensemble in
the style of Zhao et al. (2020, Sword): base learners are optimistic OMD with fixed steps on a
geometric grid, and a meta-learner, optimistic Hedge, weights them. The resulting bound is
E[D-Reg_T] = O(sqrt((1 + P_T + sigma^2_{1:T} + Sigma^2_{1:T}) (1 + P_T))).

Only one gradient is needed per round: every base learner is fed the linearised loss
<grad f_t(x_t), x> at the combined play x_t. The meta-learner's loss of learner i is
ell_{t,i} = <g_t, x_{t,i}> and its optimism m_{t,i} = <M_t, x_{t,i}> with the same hint
M_t = g_{t-1} the base learners use. For smooth non-linear losses the meta-learner of this
family also needs stability corrections (Zhao et al., 2024); we implement the linear case,
where those terms vanish, and reject other streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lib.online.optimistic_omd import OnlineRun, _project_
from lib.online.streams import SEAStream


@dataclass(frozen=True)
class EnsembleRun(OnlineRun):
    """An :class:`OnlineRun` of the ensemble plus its parts: the step-size grids ``grid`` (n, N),
    the base learners' plays ``base_x`` (n, N, T, d) and the meta weights ``weights`` (n, T, N)."""

    grid: np.ndarray | None = None
    base_x: np.ndarray | None = None
    weights: np.ndarray | None = None


def step_grid(stream: SEAStream, n_learners: int | None = None) -> np.ndarray:
    """Geometric grids eta_i = eta_min 2^{i-1} per replicate, shape (n, N).

    eta_min = D / (2 G sqrt(T)) is the best fixed step when P_T = 0 and the hint errors are as
    large as they can be; the grid doubles up to about 2 D / G, a step that crosses the ball,
    the best choice when the comparator moves every round. G is the replicate's own gradient
    bound, so each replicate runs on its own data only. N defaults to
    ceil(log2(4 sqrt(T))) + 1.
    """
    G = stream.gradient_bound
    if not np.all(G > 0):
        raise ValueError("a replicate has zero gradients; there is nothing to learn")
    if n_learners is None:
        n_learners = math.ceil(math.log2(4.0 * math.sqrt(stream.T))) + 1
    if n_learners < 1:
        raise ValueError(f"n_learners must be at least 1, got {n_learners}")
    eta_min = stream.diameter / (2.0 * G * math.sqrt(stream.T))
    return eta_min[:, None] * 2.0 ** np.arange(n_learners)[None, :]


def optimistic_ensemble(stream: SEAStream, n_learners: int | None = None) -> EnsembleRun:
    """Meta optimistic Hedge over optimistic-OMD base learners with the steps of :func:`step_grid`.

    Meta step: p_t proportional to exp(-eps_t (sum_{s<t} ell_s + m_t)), with the self-confident
    eps_t = sqrt(ln N / ((G D)^2 + sum_{s<t} ||ell_s - m_s||_inf^2)) (G the replicate's own
    gradient bound; ||ell - m||_inf <= G D). The play is x_t = sum_i p_{t,i} x_{t,i}.
    """
    if stream.kind != "linear":
        raise ValueError("the ensemble is implemented for linear streams only (see module doc)")
    grid = step_grid(stream, n_learners)
    N = grid.shape[1]
    n, T, d = stream.means.shape
    R, D = stream.radius, stream.diameter
    scale2 = (stream.gradient_bound * D) ** 2
    log_n = math.log(N) if N > 1 else 1.0
    xs = np.empty((n, T, d))
    base_xs = np.empty((n, N, T, d))
    weights = np.empty((n, T, N))
    etas = np.empty((n, T))
    errors = np.empty((n, T))
    xhat = np.zeros((n, N, d))
    M = np.zeros((n, d))
    cum_loss = np.zeros((n, N))
    cum_gap = np.zeros(n)
    eta = grid[:, :, None]
    for t in range(T):
        base = _project_((xhat - eta * M[:, None, :]).reshape(n * N, d), R).reshape(n, N, d)
        optimism = np.einsum("nd,nkd->nk", M, base)
        eps = np.sqrt(log_n / (scale2 + cum_gap))
        logits = -eps[:, None] * (cum_loss + optimism)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        x = np.einsum("nk,nkd->nd", p, base)
        g = stream.gradient(t, x)
        loss = np.einsum("nd,nkd->nk", g, base)
        cum_loss += loss
        cum_gap += np.abs(loss - optimism).max(axis=1) ** 2
        xhat = _project_((xhat - eta * g[:, None, :]).reshape(n * N, d), R).reshape(n, N, d)
        diff = g - M
        errors[:, t] = np.einsum("nd,nd->n", diff, diff)
        xs[:, t], base_xs[:, :, t], weights[:, t], etas[:, t] = x, base, p, (p * grid).sum(1)
        M = g
    return EnsembleRun("OOMD ensemble", xs, etas, errors, grid=grid, base_x=base_xs,
                       weights=weights)
