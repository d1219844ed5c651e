"""Private first-order methods for stationary points of a smooth empirical risk.

* :func:`private_spiderboost`: Private SpiderBoost (Arora, Bassily, Gonzalez, Guzman, Menart,
  Ullah, ICML 2023, Algorithm 1). Every ``q`` steps the gradient is released with Gaussian noise
  (a *refresh*); in between, the estimate is moved by the released, noisy *difference* of the
  gradients at the last two iterates, whose sensitivity is only ``2 beta ||w_t - w_{t-1}|| / n``,
  so its noise is scaled by the step length. The output is an iterate drawn uniformly.
* :func:`dp_gd`: noisy gradient descent, the baseline whose rate the paper improves.
* :func:`gd`: the same iteration without noise (what the optimisation alone achieves).

All three run ``S`` independent replicates at once (rows of ``W0``), on the full data set
(batch sizes ``b1 = b2 = n``), and record every noisy release in a
:class:`lib.privacy.zcdp.PrivacyLedger`. :func:`spiderboost_schedule` and
:func:`dp_gd_schedule` set the hyper-parameters from ``n``, ``d`` and the zCDP budget by
minimising the methods' stationarity bounds; the constants are derived in the chapter
(``book/optimization-learning-theory/dp-stationary-points.md``), for the full-batch case.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from lib.losses.smooth_nonconvex_glm import SmoothNonconvexGLM
from lib.privacy.zcdp import PrivacyLedger

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Schedule:
    """Hyper-parameters of one private run and the bound they guarantee.

    ``bound`` is the theory's bound on ``E ||grad F(w_hat)||^2`` for the uniformly drawn output
    (valid when ``absorbs`` holds for Private SpiderBoost).
    """

    method: str
    T: int
    eta: float
    sigma1: float  # noise std of a full-gradient release (refresh, or every DP-GD step)
    q: int = 1  # phase length (Private SpiderBoost); DP-GD refreshes every step
    sigma2: float = 0.0  # difference noise std per unit of ||w_t - w_{t-1}||
    bound: float = math.nan
    absorbs: bool = True  # q sigma2^2 eta^2 d <= 1/2: difference noise absorbed by descent

    @property
    def n_refresh(self) -> int:
        return -(-self.T // self.q)

    @property
    def n_difference(self) -> int:
        return self.T - self.n_refresh


def _check_budget(n: int, d: int, rho: float) -> None:
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be positive, got n={n}, d={d}")
    if not rho > 0:
        raise ValueError(f"the zCDP budget rho must be positive, got {rho}")


def dp_gd_schedule(
    problem: SmoothNonconvexGLM, rho: float, T: int | None = None
) -> Schedule:
    """DP-GD hyper-parameters: step ``1/(2 beta)``, ``T`` steps, each ``rho/T``-zCDP.

    Bound: ``E||grad F(w_hat)||^2 <= 4 beta D / T + d sigma^2`` with ``sigma^2 = 2 L^2 T /
    (n^2 rho)``; minimised at ``T = n sqrt(2 beta D rho / (L^2 d))``, which gives the
    ``(sqrt(d) / (n sqrt(rho)))^{1/2}`` rate of the gradient norm.
    """
    n, d = problem.n, problem.d
    _check_budget(n, d, rho)
    L, beta, D = problem.lipschitz, problem.beta, problem.loss_bound
    if T is None:
        T = max(1, round(n * math.sqrt(2.0 * beta * D * rho / (L**2 * d))))
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    sigma = math.sqrt(T * 2.0 * L**2 / (n**2 * rho))
    return Schedule("DP-GD", T=T, eta=1.0 / (2.0 * beta), sigma1=sigma,
                    bound=4.0 * beta * D / T + d * sigma**2)


def spiderboost_schedule(
    problem: SmoothNonconvexGLM,
    rho: float,
    T: int | None = None,
    q: int | None = None,
    split: float = 0.5,
) -> Schedule:
    """Private SpiderBoost hyper-parameters from ``n``, ``d`` and the budget ``rho``.

    A fraction ``split`` of the budget pays for the difference releases, the rest for the
    refreshes, each spent exactly: ``sigma2^2 = n_diff 2 beta_data^2 / (n^2 split rho)`` and
    ``sigma1^2 = n_refresh 2 L^2 / (n^2 (1 - split) rho)``. The difference noise is absorbed by
    the descent when ``q sigma2^2 eta^2 d <= 1/2`` (``eta = 1/(2 beta)``), which sets
    ``q = split rho beta^2 n^2 / (T d beta_data^2)``; the bound
    ``4 beta D / T + d sigma1^2`` is then minimised by
    ``T^3 = split (1 - split) beta^3 D rho^2 n^4 / (L^2 d^2 beta_data^2)``, the
    ``(sqrt(d) / (n sqrt(rho)))^{2/3}`` rate. Our derivation for ``b1 = b2 = n``.
    """
    n, d = problem.n, problem.d
    _check_budget(n, d, rho)
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must lie in (0, 1), got {split}")
    L, beta, bd, D = problem.lipschitz, problem.beta, problem.beta_data, problem.loss_bound
    if T is None:
        T3 = split * (1 - split) * beta**3 * D * rho**2 * n**4 / (L**2 * d**2 * bd**2)
        T = max(1, round(T3 ** (1.0 / 3.0)))
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if q is None:
        q = round(split * rho * beta**2 * n**2 / (T * d * bd**2))
    q = int(min(max(q, 1), T))
    eta = 1.0 / (2.0 * beta)
    n_ref = -(-T // q)
    n_diff = T - n_ref
    if n_diff == 0:  # a single phase of length 1 each: everything is a refresh
        sigma1, sigma2 = math.sqrt(n_ref * 2.0 * L**2 / (n**2 * rho)), 0.0
    else:
        sigma1 = math.sqrt(n_ref * 2.0 * L**2 / (n**2 * (1.0 - split) * rho))
        sigma2 = math.sqrt(n_diff * 2.0 * bd**2 / (n**2 * split * rho))
    return Schedule("Private SpiderBoost", T=T, eta=eta, sigma1=sigma1, q=q, sigma2=sigma2,
                    bound=4.0 * beta * D / T + d * sigma1**2,
                    absorbs=bool(q * sigma2**2 * eta**2 * d <= 0.5 + 1e-12))


@dataclass
class PrivateRun:
    """One run of ``S`` replicates: gradient norms along the way, the output, the ledger."""

    schedule: Schedule
    grad_norms: np.ndarray  # (T + 1, S): ||grad F(w_t)|| for t = 0..T
    output_index: np.ndarray  # (S,): the uniformly drawn output iterate of each replicate
    W_last: np.ndarray  # (S, d)
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)
    step_lengths: np.ndarray | None = None  # (T, S): ||w_t - w_{t-1}|| at difference steps
    difference_noise_sd: np.ndarray | None = None  # (T, S): noise std of each difference
    difference_noise: np.ndarray | None = None  # (T, S): realised noise norm / sqrt(d)

    @property
    def mean_sq_grad(self) -> np.ndarray:
        """``E ||grad F(w_hat)||^2`` over the uniform output, exactly, per replicate."""
        return np.mean(self.grad_norms[:-1] ** 2, axis=0)

    @property
    def output_grad_norm(self) -> np.ndarray:
        """``||grad F(w_hat)||`` at the output actually drawn, per replicate."""
        return self.grad_norms[self.output_index, np.arange(self.grad_norms.shape[1])]


def _one_blas_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with one BLAS thread: its products are (n x d) by (d x S) with small d and S,
    where threading costs more than it saves (and oversubscribes a shared machine)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def _check_start(problem: SmoothNonconvexGLM, W0: np.ndarray) -> np.ndarray:
    W = np.array(W0, dtype=float, copy=True)
    if W.ndim != 2 or W.shape[1] != problem.d:
        raise ValueError(f"W0 must have shape (S, {problem.d}), got {W.shape}")
    return W


@_one_blas_thread
def dp_gd(
    problem: SmoothNonconvexGLM, W0: np.ndarray, schedule: Schedule, rng: np.random.Generator
) -> PrivateRun:
    """Noisy gradient descent: ``w_{t+1} = w_t - eta (grad F(w_t) + N(0, sigma^2 I))``.

    Each step releases the data gradient with sensitivity ``2 L / n`` (one sample replaced).
    """
    W = _check_start(problem, W0)
    T, S = schedule.T, W.shape[0]
    norms = np.empty((T + 1, S))
    ledger = PrivacyLedger()
    sens = 2.0 * problem.lipschitz / problem.n
    for t in range(T):
        g_data = problem.data_gradient(W)
        g_pen = problem.penalty_gradient(W)
        norms[t] = np.linalg.norm(g_data + g_pen, axis=1)
        released = g_data + schedule.sigma1 * rng.standard_normal(W.shape)
        ledger.record("gradient", sens, schedule.sigma1)
        W = W - schedule.eta * (released + g_pen)
    norms[T] = np.linalg.norm(problem.gradient(W), axis=1)
    return PrivateRun(schedule, norms, rng.integers(0, T, size=S), W, ledger)


@_one_blas_thread
def gd(problem: SmoothNonconvexGLM, W0: np.ndarray, T: int, eta: float) -> np.ndarray:
    """Gradient descent without noise; returns ``||grad F(w_t)||`` for t = 0..T, shape (T+1, S)."""
    W = _check_start(problem, W0)
    if T < 1 or eta <= 0:
        raise ValueError(f"need T >= 1 and eta > 0, got T={T}, eta={eta}")
    norms = np.empty((T + 1, W.shape[0]))
    for t in range(T):
        g = problem.gradient(W)
        norms[t] = np.linalg.norm(g, axis=1)
        W = W - eta * g
    norms[T] = np.linalg.norm(problem.gradient(W), axis=1)
    return norms


@_one_blas_thread
def private_spiderboost(
    problem: SmoothNonconvexGLM, W0: np.ndarray, schedule: Schedule, rng: np.random.Generator
) -> PrivateRun:
    """Private SpiderBoost (Arora et al. 2023, Algorithm 1) with full batches.

    At ``t = 0 mod q`` (refresh): ``g_t = grad F_S(w_t) + N(0, sigma1^2 I)``, sensitivity
    ``2 L / n``. Otherwise (difference): ``g_t = g_{t-1} + [grad F_S(w_t) - grad F_S(w_{t-1})]
    + N(0, sigma2^2 ||w_t - w_{t-1}||^2 I)``, sensitivity ``2 beta_data ||w_t - w_{t-1}|| / n``,
    so every difference release costs ``2 beta_data^2 / (n^2 sigma2^2)`` zCDP whatever the step.
    Update ``w_{t+1} = w_t - eta (g_t + grad penalty(w_t))``; the penalty touches no data.
    """
    W = _check_start(problem, W0)
    T, q, S = schedule.T, schedule.q, W.shape[0]
    n, L, bd = problem.n, problem.lipschitz, problem.beta_data
    norms = np.empty((T + 1, S))
    steps = np.zeros((T, S))
    noise_sd = np.zeros((T, S))
    noise_real = np.zeros((T, S))
    ledger = PrivacyLedger()
    estimate = g_prev = W_prev = None
    for t in range(T):
        g_data = problem.data_gradient(W)
        g_pen = problem.penalty_gradient(W)
        norms[t] = np.linalg.norm(g_data + g_pen, axis=1)
        if t % q == 0:
            estimate = g_data + schedule.sigma1 * rng.standard_normal(W.shape)
            ledger.record("refresh", 2.0 * L / n, schedule.sigma1)
        else:
            step = np.linalg.norm(W - W_prev, axis=1)
            sd = schedule.sigma2 * step
            noise = sd[:, None] * rng.standard_normal(W.shape)
            estimate = estimate + (g_data - g_prev) + noise
            # the cost does not depend on the step; a zero step (the update fell below the
            # rounding of w) releases an exact zero, which costs nothing, so recording the
            # unit-step cost is an upper bound
            unit = step[0] if step[0] > 0 else 1.0
            ledger.record("difference", 2.0 * bd * unit / n, schedule.sigma2 * unit)
            steps[t], noise_sd[t] = step, sd
            noise_real[t] = np.linalg.norm(noise, axis=1) / math.sqrt(problem.d)
        g_prev, W_prev = g_data, W
        W = W - schedule.eta * (estimate + g_pen)
    norms[T] = np.linalg.norm(problem.gradient(W), axis=1)
    return PrivateRun(schedule, norms, rng.integers(0, T, size=S), W, ledger, steps, noise_sd,
                      noise_real)
