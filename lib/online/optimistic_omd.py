"""Optimistic online mirror descent (OMD) for the SEA model, and the baselines it is compared with.

Chen, Zhang, Tu, Zhao and Zhang (2023), "Optimistic Online Mirror Descent for Bridging
Stochastic and Adversarial Online Convex Optimization". Optimistic OMD keeps an auxiliary
sequence xhat_t and, with the Euclidean regulariser psi(x) = ||x||^2 / 2 used here (so the
Bregman divergence is ||x - y||^2 / 2 and each step is a projection), plays

    x_t       = argmin_{x in X}  eta_t <M_t, x>           + ||x - xhat_t||^2 / 2
    xhat_{t+1} = argmin_{x in X}  eta_t <grad f_t(x_t), x> + ||x - xhat_t||^2 / 2

with the optimistic hint M_t = grad f_{t-1}(x_{t-1}), the last observed gradient (M_1 = 0).
Step sizes, one per curvature regime of the paper:

* convex and smooth: a self-confident step of the kind the paper's convex theorem uses,
  eta_t = min{ D / sqrt(delta + sum_{s<t} ||grad f_s(x_s) - M_s||^2), 1 / (4 L) }
  (the constants, delta and the cap are our choices), which adapts to the realised gradient
  variation and gives E[R_T] = O(sqrt(sigma^2_{1:T}) + sqrt(Sigma^2_{1:T}));
* lam-strongly convex and smooth: a step size decaying like 1 / (lam t), as in the paper's
  strongly convex theorem; we use eta_t = min{2 / (lam t), 1 / (4 L)}. Summing ||g_t - M_t||^2 / t
  instead of ||g_t||^2 / t is what turns the classical (G^2 / lam) log T into
  (sigma^2_max + Sigma^2_max) / lam * log((sigma^2_{1:T} + Sigma^2_{1:T}) / (sigma^2_max + ...)).

The decision set is a Euclidean ball (the streams of :mod:`lib.online.streams`); all runs are
batched over the stream's replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lib.online.regret import hindsight_minimisers
from lib.online.streams import SEAStream

HINTS = ("last", "zero")
SCHEDULES = ("convex", "strongly_convex")


@dataclass(frozen=True)
class OnlineRun:
    """What an online learner did: plays ``x`` (n, T, d), step sizes ``eta`` (n, T) and the
    squared hint errors ``hint_error2`` = ||grad f_t(x_t) - M_t||^2 (n, T)."""

    name: str
    x: np.ndarray
    eta: np.ndarray
    hint_error2: np.ndarray


def _project_(x: np.ndarray, radius: float) -> np.ndarray:
    """Project the rows of ``x`` onto the ball in place (the loop's hot path)."""
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))
    over = norms > radius
    if over.any():
        x[over] *= (radius / norms[over])[:, None]
    return x


def _default_delta(stream: SEAStream, delta: float | None) -> np.ndarray:
    """delta per replicate, shape (n,): (2 G)^2 of the replicate's own stream unless given."""
    if delta is None:
        return (2.0 * stream.gradient_bound) ** 2
    delta = float(delta)
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    return np.full(stream.n, delta)


def optimistic_omd(
    stream: SEAStream,
    *,
    hint: str = "last",
    schedule: str = "convex",
    delta: float | None = None,
    lam: float | None = None,
    smoothness: float | None = None,
) -> OnlineRun:
    """Run optimistic OMD (Euclidean regulariser) on every replicate of ``stream``.

    ``hint="last"`` uses M_t = grad f_{t-1}(x_{t-1}), the paper's choice; ``hint="zero"`` sets
    M_t = 0, which turns the method into plain (lazy-step) OMD, the non-optimistic ablation.
    ``schedule`` picks the convex (self-confident) or strongly convex (1 / (lam t)) step size,
    see the module docstring. ``delta`` (convex schedule) defaults to (2 G)^2 with G the
    replicate's own gradient bound (replicates never influence each other), an upper bound on
    every ||g_t - M_t||^2, which the regret certificate needs. ``lam`` (strongly convex
    schedule) defaults to the stream's curvature and ``smoothness`` L to the stream's; L = 0
    means no cap on the step size.
    """
    if hint not in HINTS:
        raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    L = stream.smoothness if smoothness is None else float(smoothness)
    if L < 0:
        raise ValueError(f"the smoothness constant must be non-negative, got {L}")
    cap = math.inf if L == 0 else 1.0 / (4.0 * L)
    if schedule == "convex":
        delta = _default_delta(stream, delta)
    else:
        lam = stream.strong_convexity if lam is None else lam
        if not lam > 0:
            raise ValueError("the strongly convex schedule needs a positive lam")

    n, T, d = stream.means.shape
    D, R = stream.diameter, stream.radius
    xs = np.empty((n, T, d))
    etas = np.empty((n, T))
    errors = np.empty((n, T))
    xhat = np.zeros((n, d))
    M = np.zeros((n, d))
    cumulative = np.zeros(n)
    for t in range(T):
        if schedule == "convex":
            eta = np.minimum(D / np.sqrt(delta + cumulative), cap)
        else:
            eta = np.full(n, min(2.0 / (lam * (t + 1)), cap))
        x = _project_(xhat - eta[:, None] * M, R)
        g = stream.gradient(t, x)
        xhat = _project_(xhat - eta[:, None] * g, R)
        diff = g - M
        error = np.einsum("nd,nd->n", diff, diff)
        cumulative += error
        if hint == "last":
            M = g
        xs[:, t], etas[:, t], errors[:, t] = x, eta, error
    label = "OOMD" if hint == "last" else "OMD (no hint)"
    return OnlineRun(label, xs, etas, errors)


def ogd_adagrad(stream: SEAStream) -> OnlineRun:
    """Projected online gradient descent with the AdaGrad-norm step size (the baseline).

    x_{t+1} = Proj(x_t - eta_t g_t), eta_t = D / sqrt(2 sum_{s<=t} ||g_s||^2)
    (Duchi, Hazan and Singer, 2011; Streeter and McMahan, 2010), which guarantees
    R_T <= sqrt(2) D sqrt(sum_t ||g_t||^2): adaptive to gradient *size*, not to its variation.
    """
    n, T, d = stream.means.shape
    D, R = stream.diameter, stream.radius
    xs = np.empty((n, T, d))
    etas = np.empty((n, T))
    norms2 = np.empty((n, T))
    x = np.zeros((n, d))
    total = np.zeros(n)
    for t in range(T):
        xs[:, t] = x
        g = stream.gradient(t, x)
        g2 = np.einsum("nd,nd->n", g, g)
        total += g2
        eta = np.where(total > 0, D / np.sqrt(2.0 * np.maximum(total, 1e-300)), 0.0)
        x = _project_(x - eta[:, None] * g, R)
        etas[:, t], norms2[:, t] = eta, g2
    return OnlineRun("OGD (AdaGrad)", xs, etas, norms2)


def ogd_strongly_convex(stream: SEAStream, lam: float | None = None) -> OnlineRun:
    """Projected OGD with eta_t = 1 / (lam t) (Hazan, Agarwal and Kale, 2007): O(log T) regret."""
    lam = stream.strong_convexity if lam is None else float(lam)
    if not lam > 0:
        raise ValueError(f"lam must be positive, got {lam}")
    n, T, d = stream.means.shape
    xs = np.empty((n, T, d))
    etas = np.empty((n, T))
    norms2 = np.empty((n, T))
    x = np.zeros((n, d))
    for t in range(T):
        xs[:, t] = x
        g = stream.gradient(t, x)
        eta = 1.0 / (lam * (t + 1))
        x = _project_(x - eta * g, stream.radius)
        etas[:, t], norms2[:, t] = eta, np.einsum("nd,nd->n", g, g)
    return OnlineRun("OGD (1/(lam t))", xs, etas, norms2)


def follow_the_leader(stream: SEAStream) -> OnlineRun:
    """Follow-The-Leader: play the minimiser of the losses so far (0 at the first round)."""
    leaders = hindsight_minimisers(stream)
    xs = np.concatenate([np.zeros_like(leaders[:, :1]), leaders[:, :-1]], axis=1)
    nan = np.full(stream.scales.shape, np.nan)
    return OnlineRun("FTL", xs, nan, nan)


def regret_certificate(run: OnlineRun, diameter: float) -> np.ndarray:
    """Pathwise upper bound on the static regret of optimistic OMD, for every prefix: (n, T).

    For convex losses, a Euclidean ball of diameter D and non-increasing step sizes, the
    two projections of optimistic OMD give, for every comparator u and every prefix t,

        sum_{s<=t} <g_s, x_s - u>  <=  D^2 / (2 eta_t) + (1/2) sum_{s<=t} eta_s ||g_s - M_s||^2

    (the standard optimistic-OMD telescoping argument that underlies the paper's convex
    theorem). The right-hand side is computed from the run alone: a certificate, not a rate.
    """
    if not diameter > 0:
        raise ValueError(f"diameter must be positive, got {diameter}")
    eta = run.eta
    if np.any(np.isnan(eta)) or np.any(np.diff(eta, axis=1) > 1e-15):
        raise ValueError("the certificate needs a run with non-increasing step sizes")
    return diameter**2 / (2.0 * eta) + 0.5 * np.cumsum(eta * run.hint_error2, axis=1)


def sea_convex_bound(stream: SEAStream, delta: float | None = None) -> np.ndarray:
    """Explicit SEA bound on E[R_t] of optimistic OMD (convex schedule) on a linear stream: (n, T).

        E[R_t] <= (1/2 + sqrt 2) D sqrt(delta + 2 sigma^2_{1:t} + Sigma^2_{1:t})

    The paper's convex theorem, O(sqrt(sigma^2_{1:T}) + sqrt(Sigma^2_{1:T})), with the constants
    of the telescoping argument in :func:`regret_certificate`: for linear losses (L = 0),
    E ||g_t - M_t||^2 = Sigma_t^2 + sigma_t^2 + sigma_{t-1}^2, Jensen's inequality moves the
    expectation inside the square root, and delta >= max_t ||g_t - M_t||^2 (the default
    (2 G)^2) lets sum_t eta_t ||g_t - M_t||^2 telescope. Smooth non-linear losses add the
    L-dependent terms of the paper's proof, so only linear streams are accepted here.
    """
    if stream.kind != "linear":
        raise ValueError("the explicit bound is stated for linear streams (L = 0) only")
    delta = _default_delta(stream, delta)
    sigma2 = np.cumsum(stream.sigma2, axis=1)
    Sigma2 = np.cumsum(stream.Sigma2, axis=1)
    inside = delta[:, None] + 2.0 * sigma2 + Sigma2
    return (0.5 + math.sqrt(2.0)) * stream.diameter * np.sqrt(inside)


def sea_strongly_convex_rate(stream: SEAStream) -> np.ndarray:
    """The strongly convex rate term of the paper, without its constant, per replicate: (n,).

        (sigma^2_max + Sigma^2_max) / lam * log(1 + (sigma^2_{1:T} + Sigma^2_{1:T})
                                                   / (sigma^2_max + Sigma^2_max))

    (the paper states the bound with log of the ratio; the 1 + keeps it non-negative). Compare
    with the earlier (sigma^2_max + Sigma^2_max) / lam * log T.
    """
    if stream.kind != "quadratic":
        raise ValueError("the strongly convex rate needs a quadratic (strongly convex) stream")
    peak = stream.sigma2_max + stream.Sigma2_max
    total = stream.sigma2_total + stream.Sigma2_total
    return peak / stream.strong_convexity * np.log1p(total / peak)
