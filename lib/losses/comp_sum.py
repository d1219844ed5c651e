"""Comp-sum losses, their conditional regrets and H-consistency bounds, and adversarial training.

Notation of Mao, Mohri and Zhong (2023), "Cross-Entropy Loss Functions: Theoretical Analysis
and Applications" (ICML 2023, arXiv:2304.07288). A scoring function ``h`` gives ``n`` scores
per input; ``s = softmax(h)``. For the true label ``y`` let

    u = sum_{y' != y} exp(h(x, y') - h(x, y)) = (1 - s_y) / s_y.

A *comp-sum loss* is ``Phi(u)`` for an increasing ``Phi``; the paper's family indexes it by
``tau >= 0``:

    Phi^tau(u) = log(1 + u)                                  tau = 1 (logistic, cross-entropy)
    Phi^tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau)         tau != 1

so ``tau = 0`` is the sum-exponential loss ``u``, ``tau`` in ``(1, 2)`` generalised cross-entropy
and ``tau = 2`` the mean absolute error ``1 - s_y``. As a function of ``s_y`` the loss is

    Psi^tau(s) = Phi^tau((1 - s) / s) = (s^(tau - 1) - 1) / (1 - tau)    (-log s at tau = 1).

Conditional quantities are per input ``x``, with ``p = P(Y = . | x)``: the conditional risk
``C(p, s) = sum_y p_y Psi^tau(s_y)``, its minimum over the simplex ``C*(p)``, and the regrets
``C(p, s) - C*(p)`` (surrogate) and ``max_y p_y - p_{argmax s}`` (zero-one). The paper's
H-consistency bound for the complete hypothesis set says: zero-one regret
``<= Gamma_tau(surrogate regret)``, with ``Gamma_tau`` the inverse of the calibration function
``T_tau`` (:func:`calibration_function`).

The adversarial part implements the paper's smooth adversarial comp-sum loss (its Section on
adversarial robustness) and the two baselines it is compared with, PGD adversarial training
(Madry et al., 2018) and TRADES (Zhang et al., 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, minimize_scalar

#: The five members of the family the chapter follows, with the names the literature uses.
NAMED_TAUS = {
    0.0: "sum-exponential",
    0.5: "comp-sum, tau = 0.5",
    1.0: "logistic (cross-entropy)",
    1.5: "generalized cross-entropy",
    2.0: "mean absolute error",
}

#: The closed forms of the bound are implemented for this range of tau.
TAU_MAX = 2.0


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _check_tau(tau: float, *, at_most: float | None = None) -> float:
    tau = float(tau)
    if not np.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if at_most is not None and tau > at_most:
        raise ValueError(f"tau must be in [0, {at_most:g}] here, got {tau}")
    return tau


def _check_simplex(p: np.ndarray, name: str, *, strict: bool = False) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim == 0 or p.shape[-1] < 2:
        raise ValueError(f"{name} must have at least two classes on its last axis, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has non-finite entries")
    if np.any(p < 0) or (strict and np.any(p <= 0)):
        kind = "strictly positive" if strict else "non-negative"
        raise ValueError(f"{name} must be {kind}; min is {p.min():.3g}")
    if np.any(np.abs(p.sum(axis=-1) - 1.0) > 1e-8):
        raise ValueError(f"{name} must sum to 1 along its last axis")
    return p


def _check_n(n: int) -> int:
    if int(n) != n or n < 2:
        raise ValueError(f"the number of classes n must be an integer >= 2, got {n}")
    return int(n)


# ---------------------------------------------------------------------------------------------
# the loss family
# ---------------------------------------------------------------------------------------------


def phi_tau(u: np.ndarray | float, tau: float) -> np.ndarray:
    """The comp-sum transform ``Phi^tau(u)`` of the paper's family (its definition of comp-sum
    losses): ``log(1 + u)`` at ``tau = 1``, ``((1 + u)^(1 - tau) - 1) / (1 - tau)`` otherwise."""
    tau = _check_tau(tau)
    u = np.asarray(u, dtype=float)
    if np.any(u < 0):
        raise ValueError("u = sum_{y' != y} exp(h(x, y') - h(x, y)) is non-negative")
    if tau == 1.0:
        return np.log1p(u)
    return np.expm1((1.0 - tau) * np.log1p(u)) / (1.0 - tau)


def psi_tau(s: np.ndarray | float, tau: float) -> np.ndarray:
    """The comp-sum loss as a function of the softmax probability ``s`` of the true class,
    ``Psi^tau(s) = Phi^tau((1 - s) / s)``: ``(s^(tau-1) - 1) / (1 - tau)``, or ``-log s``."""
    tau = _check_tau(tau)
    s = np.asarray(s, dtype=float)
    if np.any(s <= 0) or np.any(s > 1):
        raise ValueError("softmax probabilities must lie in (0, 1]")
    log_s = np.log(s)
    if tau == 1.0:
        return -log_s
    return np.expm1((tau - 1.0) * log_s) / (1.0 - tau)


def comp_sum_loss(
    logits: torch.Tensor, y: torch.Tensor, tau: float, reduction: str = "mean"
) -> torch.Tensor:
    """The comp-sum loss ``Phi^tau(u)`` of the paper (its family of comp-sum losses) on a batch.

    Computed from ``log s_y = log_softmax(logits)[y]`` so that large scores do not overflow:
    ``Phi^tau(u) = expm1((tau - 1) log s_y) / (1 - tau)``, and ``-log s_y`` at ``tau = 1`` (which
    is exactly ``F.cross_entropy``).
    """
    tau = _check_tau(tau)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (batch, n_classes >= 2), got {tuple(logits.shape)}")
    if y.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(y.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    log_sy = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    if tau == 1.0:
        loss = -log_sy
    else:
        loss = torch.expm1((tau - 1.0) * log_sy) / (1.0 - tau)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------------------------
# conditional risks and regrets
# ---------------------------------------------------------------------------------------------


def conditional_risk(p: np.ndarray, s: np.ndarray, tau: float) -> np.ndarray:
    """Conditional surrogate risk ``C(p, s) = sum_y p_y Psi^tau(s_y)`` (batched on the last
    axis): the expected comp-sum loss at an input whose label distribution is ``p`` and whose
    softmax scores are ``s``."""
    p = _check_simplex(p, "p")
    s = _check_simplex(s, "s", strict=True)
    return (p * psi_tau(s, tau)).sum(axis=-1)


def bayes_conditional_risk(p: np.ndarray, tau: float) -> np.ndarray:
    """The minimal conditional risk ``C*(p) = inf_s C(p, s)`` over all score vectors (the
    complete hypothesis set), in closed form from the first-order conditions.

    For ``tau < 2``, ``Psi^tau`` is strictly convex and the minimiser is ``s ∝ p^(1/(2 - tau))``,
    which gives ``C* = ((sum_y p_y^(1/(2-tau)))^(2-tau) - 1) / (1 - tau)`` (the entropy of ``p``
    at ``tau = 1``). At ``tau = 2`` the loss is linear in ``s`` and ``C* = 1 - max_y p_y``.
    """
    tau = _check_tau(tau, at_most=TAU_MAX)
    p = _check_simplex(p, "p")
    if tau == 2.0:
        return 1.0 - p.max(axis=-1)
    if tau == 1.0:
        safe = np.where(p > 0, p, 1.0)
        return -(p * np.log(safe)).sum(axis=-1)
    alpha = 1.0 / (2.0 - tau)
    return np.expm1((2.0 - tau) * np.log((p**alpha).sum(axis=-1))) / (1.0 - tau)


def conditional_regret_surrogate(p: np.ndarray, s: np.ndarray, tau: float) -> np.ndarray:
    """Conditional surrogate regret ``C(p, s) - C*(p)`` for the complete hypothesis set."""
    return np.maximum(conditional_risk(p, s, tau) - bayes_conditional_risk(p, tau), 0.0)


def conditional_regret_01(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Conditional zero-one regret ``max_y p_y - p_{h(x)}`` of predicting ``argmax_y s_y``."""
    p = _check_simplex(p, "p")
    s = np.asarray(s, dtype=float)
    if s.shape != p.shape:
        raise ValueError(f"p and s must have the same shape, got {p.shape} and {s.shape}")
    predicted = np.argmax(s, axis=-1)
    return p.max(axis=-1) - np.take_along_axis(p, predicted[..., None], axis=-1)[..., 0]


def min_risk_predicting(
    p: np.ndarray, tau: float, predicted: int, *, method: str = "exact"
) -> float:
    """``inf C(p, s)`` over score vectors that predict class ``predicted`` (``s_predicted`` is a
    largest entry): the best surrogate risk a classifier that makes this decision can reach.

    ``method="exact"`` pools the predicted class with every class whose probability exceeds the
    pool's mean and evaluates ``C*`` at the pooled distribution (the first-order conditions of the
    constrained convex problem tie the pooled scores together). ``method="numeric"`` solves the
    constrained problem over the simplex with scipy (SLSQP), independently of that argument;
    the tests check one against the other.
    """
    tau = _check_tau(tau, at_most=TAU_MAX)
    p = _check_simplex(p, "p")
    if p.ndim != 1:
        raise ValueError("min_risk_predicting takes one distribution p (a 1-D array)")
    n = p.size
    if int(predicted) != predicted or not 0 <= predicted < n:
        raise ValueError(f"predicted must be a class index in [0, {n}), got {predicted}")
    if method == "exact":
        return float(_pooled_min(p[None, :], tau, int(predicted))[0])
    if method != "numeric":
        raise ValueError(f"method must be 'exact' or 'numeric', got {method!r}")
    if n == 2:
        # one free variable: the score of the predicted class, which must be at least 1/2
        other = 1 - int(predicted)

        def risk2(a: float) -> float:
            s = np.empty(2)
            s[predicted], s[other] = a, 1.0 - a
            return float(conditional_risk(p, np.clip(s, 1e-300, 1.0), tau))

        res = minimize_scalar(risk2, bounds=(0.5, 1.0 - 1e-15), method="bounded",
                              options=dict(xatol=1e-13))
        return float(min(res.fun, risk2(0.5)))
    eps = 1e-12
    cons = [{"type": "eq", "fun": lambda s: s.sum() - 1.0}]
    cons += [
        {"type": "ineq", "fun": (lambda s, k=k: s[predicted] - s[k])}
        for k in range(n) if k != predicted
    ]

    def risk(s: np.ndarray) -> float:
        return float((p * psi_tau(np.clip(s, eps, 1.0), tau)).sum())

    best = np.inf
    for start in (np.full(n, 1.0 / n), 0.5 * (p + 1.0 / n)):
        start = start.copy()
        start[predicted] = start.max() + 1e-3
        start /= start.sum()
        res = minimize(risk, start, method="SLSQP", bounds=[(eps, 1.0)] * n,
                       constraints=cons, options=dict(ftol=1e-15, maxiter=500))
        best = min(best, res.fun)
    return float(best)


def _pooled_min(p: np.ndarray, tau: float, predicted: int) -> np.ndarray:
    """Vectorised exact ``min_risk_predicting`` for a batch of distributions (rows of ``p``)."""
    n = p.shape[1]
    others = np.delete(np.arange(n), predicted)
    rest = -np.sort(-p[:, others], axis=1)  # descending
    chain = np.concatenate([p[:, [predicted]], rest], axis=1)
    prefix_mean = np.cumsum(chain, axis=1) / np.arange(1, n + 1)
    joins = rest > prefix_mean[:, :-1]  # class k joins while it beats the pool's mean so far
    size = 1 + np.cumprod(joins, axis=1).sum(axis=1)
    pooled_mean = prefix_mean[np.arange(p.shape[0]), size - 1]
    in_pool = np.arange(n)[None, :] < size[:, None]
    q = np.where(in_pool, pooled_mean[:, None], chain)
    return bayes_conditional_risk(q, tau)


# ---------------------------------------------------------------------------------------------
# the paper's bound functions
# ---------------------------------------------------------------------------------------------


def calibration_function(t: np.ndarray | float, tau: float, n: int) -> np.ndarray:
    """The paper's ``T_tau(t)`` from its H-consistency theorem for comp-sum losses (complete,
    symmetric hypothesis sets); the bound is ``Gamma_tau = T_tau^{-1}``. With
    ``A(t) = ((1 + t)^(1/(2-tau)) + (1 - t)^(1/(2-tau))) / 2``:

    - ``tau in [0, 1)``: ``2^(1-tau) / (1 - tau) * (1 - A^(2-tau))`` (``1 - sqrt(1 - t^2)`` at 0);
    - ``tau = 1``: ``(1+t)/2 log(1+t) + (1-t)/2 log(1-t)``;
    - ``tau in (1, 2)``: ``(A^(2-tau) - 1) / ((tau - 1) n^(tau-1))``;
    - ``tau = 2``: ``t / n``.

    Only the last two depend on the number of classes ``n``.
    """
    tau = _check_tau(tau, at_most=TAU_MAX)
    n = _check_n(n)
    t = np.asarray(t, dtype=float)
    if np.any(t < 0) or np.any(t > 1):
        raise ValueError("a zero-one conditional regret t lies in [0, 1]")
    if tau == 2.0:
        return t / n
    if tau == 1.0:
        with np.errstate(divide="ignore", invalid="ignore"):  # (1 - t) log(1 - t) -> 0 at t = 1
            right = np.where(t < 1, (1 - t) / 2 * np.log1p(-np.minimum(t, 1 - 1e-300)), 0.0)
        return (1 + t) / 2 * np.log1p(t) + right
    alpha = 1.0 / (2.0 - tau)
    A = ((1 + t) ** alpha + (1 - t) ** alpha) / 2
    if tau < 1.0:
        return 2 ** (1 - tau) / (1 - tau) * (1 - A ** (2 - tau))
    return (A ** (2 - tau) - 1) / ((tau - 1) * n ** (tau - 1))


def gamma_tau(v: np.ndarray | float, tau: float, n: int) -> np.ndarray:
    """The bound function ``Gamma_tau = T_tau^{-1}`` (capped at 1, the largest zero-one regret):
    zero-one conditional regret ``<= Gamma_tau(surrogate conditional regret)``.

    Closed forms at ``tau = 0`` (``sqrt(2v - v^2)``) and ``tau = 2`` (``n v``); elsewhere the
    increasing ``T_tau`` is inverted by bisection to machine precision.
    """
    tau = _check_tau(tau, at_most=TAU_MAX)
    n = _check_n(n)
    v = np.asarray(v, dtype=float)
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("a surrogate conditional regret is a finite number >= 0")
    if tau == 0.0:
        return np.sqrt(np.clip(2 * v - v**2, 0.0, 1.0)) * (v < 1) + (v >= 1)
    if tau == 2.0:
        return np.minimum(n * v, 1.0)
    top = float(calibration_function(1.0, tau, n))
    lo, hi = np.zeros_like(v), np.ones_like(v)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = calibration_function(mid, tau, n) < v
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(v >= top, 1.0, hi)


def tight_calibration(
    t: float,
    tau: float,
    n: int = 2,
    *,
    n_samples: int = 20_000,
    rng: np.random.Generator | None = None,
) -> float:
    """Numerically, the smallest surrogate conditional regret among all ``(p, s)`` whose zero-one
    conditional regret is ``t``: the best possible bound function, to compare with ``T_tau``.

    With ``n = 2`` the distribution is fixed by ``t`` (``p = ((1+t)/2, (1-t)/2)``), and the
    minimum over scores predicting the wrong class is a one-dimensional convex problem solved
    with scipy (``min_risk_predicting(..., method="numeric")``). With ``n > 2`` the other
    ``n - 2`` probabilities are free: they are searched at random (Dirichlet draws at several
    concentrations plus the boundary cases), with the exact inner minimum; the result is then an
    upper estimate of the infimum.
    """
    tau = _check_tau(tau, at_most=TAU_MAX)
    n = _check_n(n)
    if not 0 <= t <= 1:
        raise ValueError(f"a zero-one conditional regret t lies in [0, 1], got {t}")
    if n == 2:
        p = np.array([(1 + t) / 2, (1 - t) / 2])
        return min_risk_predicting(p, tau, 1, method="numeric") - float(
            bayes_conditional_risk(p, tau)
        )
    rng = np.random.default_rng(0) if rng is None else rng
    # p_0 = max, p_1 = p_0 - t is predicted, p_2.. <= p_0 share the rest r = 1 - 2 p_0 + t
    lo, hi = max(t, (1 + t) / n), (1 + t) / 2
    p0 = rng.uniform(lo, hi, n_samples)
    p0[: n_samples // 10] = lo
    p0[n_samples // 10 : n_samples // 5] = hi
    conc = rng.choice([0.05, 0.3, 1.0, 5.0, 100.0], size=(n_samples, 1))
    w = rng.gamma(np.broadcast_to(conc, (n_samples, n - 2)))
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    rest = w * (1 - 2 * p0 + t)[:, None]
    p = np.concatenate([p0[:, None], (p0 - t)[:, None], rest], axis=1)
    ok = rest.max(axis=1) <= p0 + 1e-12
    p = np.clip(p[ok], 0, None)
    p /= p.sum(axis=1, keepdims=True)
    regret = _pooled_min(p, tau, 1) - bayes_conditional_risk(p, tau)
    return float(regret.min())


def random_conditionals(
    n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(p, s)`` pairs for testing the bound: ``p`` from Dirichlet draws at several
    concentrations, ``s`` the softmax of Gaussian scores at several scales, half of them centred
    on the ``p``-ordering (nearly right) and some nearly tied, where the bound is nearly tight."""
    n = _check_n(n)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    conc = rng.choice([0.1, 0.5, 1.0, 5.0, 50.0], size=(size, 1))
    p = rng.gamma(np.broadcast_to(conc, (size, n)))
    p = np.maximum(p, 1e-300)
    p /= p.sum(axis=1, keepdims=True)
    scale = rng.choice([0.01, 0.1, 1.0, 3.0], size=(size, 1))
    scores = rng.normal(size=(size, n)) * scale
    aligned = rng.random(size) < 0.5
    scores[aligned] += np.log(p[aligned] + 1e-12) * rng.uniform(0, 1, (aligned.sum(), 1))
    s = np.exp(scores - scores.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    return p, s


# ---------------------------------------------------------------------------------------------
# training on data, and the adversarial comparison
# ---------------------------------------------------------------------------------------------


LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def margin_vector(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Delta_h(x, y) = (h(x, y) - h(x, y'))_{y'}``: the score margins of the true class (its
    own entry is 0), the quantity the smooth adversarial term compares at ``x`` and ``x'``."""
    return logits.gather(1, y[:, None]) - logits


def pgd_linf(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Projected gradient ascent on ``objective(x')`` (summed over the batch) in the l_inf ball
    of radius ``eps`` around ``x``, kept inside the input box ``clamp`` (Madry et al., 2018)."""
    if eps < 0 or steps < 0 or step_size < 0:
        raise ValueError("eps, steps and step_size must be non-negative")
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        x_adv = (x + eps * noise.to(x.device)).clamp(*clamp)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(*clamp)
    return x_adv.detach()


def adv_comp_sum_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    tau: float = 1.0,
    nu: float = 1.0,
    eps: float = 0.1,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The regularised smooth adversarial comp-sum loss of the paper (ADV-COMP-SUM):

        Phi^tau(u(h, x, y)) + nu * sup_{||x' - x||_inf <= eps} ||Delta_h(x', y) - Delta_h(x, y)||_2,

    the comp-sum loss at the clean input plus a smooth term that penalises how much the margin
    vector moves inside the perturbation ball; the sup is approximated by PGD.
    """
    if nu < 0:
        raise ValueError(f"nu must be non-negative, got {nu}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean_margin = margin_vector(model(x), y)

    def smooth_term(x_adv: torch.Tensor) -> torch.Tensor:
        return (margin_vector(model(x_adv), y) - clean_margin).norm(dim=1)

    x_adv = pgd_linf(smooth_term, x, eps, steps, step_size, generator=generator)
    model.train(was_training)
    logits = model(x)
    move = (margin_vector(model(x_adv), y) - margin_vector(logits, y)).norm(dim=1)
    return comp_sum_loss(logits, y, tau) + nu * move.mean()


def trades_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 6.0,
    eps: float = 0.1,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES (Zhang et al., 2019): cross-entropy at ``x`` plus ``beta`` times the KL divergence
    from the clean to the perturbed prediction, the perturbation maximising that KL (PGD started
    from a small random point)."""
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean_log = torch.log_softmax(model(x), dim=1)

    def kl(x_adv: torch.Tensor) -> torch.Tensor:
        return F.kl_div(torch.log_softmax(model(x_adv), dim=1), clean_log, log_target=True,
                        reduction="none").sum(dim=1)

    x0 = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)
    x_adv = pgd_linf(kl, x0, eps, steps, step_size, random_start=False)
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    model.train(was_training)
    logits = model(x)
    robust = F.kl_div(torch.log_softmax(model(x_adv), dim=1), torch.log_softmax(logits, dim=1),
                      log_target=True, reduction="batchmean")
    return F.cross_entropy(logits, y) + beta * robust


def pgd_at_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 0.1,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD adversarial training (Madry et al., 2018): cross-entropy at the PGD point that
    maximises the cross-entropy in the l_inf ball."""
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    was_training = model.training
    model.eval()
    x_adv = pgd_linf(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps, steps,
                     step_size, generator=generator)
    model.train(was_training)
    return F.cross_entropy(model(x_adv), y)


def train_classifier(
    model: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-2,
    generator: torch.Generator | None = None,
) -> torch.nn.Module:
    """Minibatch Adam on ``loss_fn(model, x_batch, y_batch)``; returns the trained model."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch_size must be positive integers and lr positive")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(X.shape[0], generator=generator)
        for start in range(0, X.shape[0], batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model, X[idx], y[idx]).backward()
            opt.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``X`` that ``model`` classifies correctly."""
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).float().mean())


def robust_accuracy(
    model: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 20,
    restarts: int = 3,
    generator: torch.Generator | None = None,
) -> float:
    """Accuracy under an l_inf PGD attack on the cross-entropy with random restarts: an input
    counts as robust only if no restart (and the clean input) flips its prediction."""
    model.eval()
    with torch.no_grad():
        robust = model(X).argmax(dim=1) == y
    for _ in range(restarts):
        x_adv = pgd_linf(lambda z: F.cross_entropy(model(z), y, reduction="none"), X, eps,
                         steps, 2.5 * eps / steps, generator=generator)
        with torch.no_grad():
            robust &= model(x_adv).argmax(dim=1) == y
    return float(robust.float().mean())
