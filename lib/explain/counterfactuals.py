"""Counterfactual explanations for a binary classifier, and counterfactuals robust to retraining.

A model ``m(x) = sigmoid(f(x))`` (``f``: a torch network giving one logit per row) rejects ``x``
when ``m(x) < 0.5``; a counterfactual (CF) is a nearby ``x'`` with ``m(x') >= 0.5``. This
module gives

* :func:`closest_counterfactual`: Wachter et al.'s search (2017), gradient descent on
  ``||x' - x||^2 + lam * BCE(m(x'), 1)``, stopped at the first crossing of the boundary and
  refined onto it by bisection: the closest CF, the baseline that retraining invalidates;
* :func:`high_confidence_counterfactual`: push a CF until ``m(x') >= target`` (no local term);
* :func:`stability`: the Monte-Carlo Stability measure of Hamman et al. (ICML 2023, Sec. 4),
  ``R_hat(x') = (1/k) sum_i [m(X_i) - |m(x') - m(X_i)|]``, ``X_i ~ N(x', sigma^2 I)``,
  differentiable in ``x'``;
* :func:`trex`: their Algorithm 1 (T-Rex), gradient ascent on ``R_hat`` from a base CF until
  ``R_hat >= tau``;
* :func:`validity` and :func:`outlier_fraction`: the evaluation (robust validity under changed
  models, realism by scikit-learn's local outlier factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.neighbors import LocalOutlierFactor
from torch import nn
from torch.nn.functional import softplus

DTYPE = torch.float64


def _as_points(x: np.ndarray | torch.Tensor, name: str = "x") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x)
    t = t.to(DTYPE)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _clamp(x: torch.Tensor, bounds: tuple[np.ndarray, np.ndarray] | None) -> torch.Tensor:
    if bounds is None:
        return x
    lo, hi = (torch.as_tensor(np.asarray(b, dtype=np.float64)) for b in bounds)
    return torch.maximum(torch.minimum(x, hi), lo)


def _check_bounds(bounds, d: int) -> None:
    if bounds is None:
        return
    lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
    if lo.shape != (d,) or hi.shape != (d,) or (lo > hi).any():
        raise ValueError(f"bounds must be two length-{d} vectors with lower <= upper")


def probability(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x) = sigmoid(f(x))`` for rows of ``x`` (any leading shape), differentiable."""
    return torch.sigmoid(model(x).squeeze(-1))


@dataclass
class CounterfactualResult:
    """Counterfactuals ``cfs`` (n, d) and, per point, whether the search reached its goal."""

    cfs: np.ndarray
    reached: np.ndarray
    iterations: np.ndarray
    stability: np.ndarray | None = None
    path: list[np.ndarray] = field(default_factory=list)


def closest_counterfactual(
    model: nn.Module,
    x: np.ndarray,
    *,
    lam: float = 1.0,
    lr: float = 0.01,
    max_iter: int = 3000,
    grow_every: int = 300,
    bisection_steps: int = 30,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> CounterfactualResult:
    """Wachter-style closest counterfactual: the first boundary crossing of a penalised descent.

    Gradient descent with step ``lr`` on ``||x' - x||^2 + lam * softplus(-f(x'))`` (the binary
    cross-entropy of ``m(x')`` against the target class 1, written on the logit so that it
    never takes the log of 0), starting at ``x``. ``lam`` doubles every ``grow_every`` steps
    while a point has not crossed. Each point stops at its first iterate with ``m(x') >= 0.5``,
    and bisection on the last step's segment then moves it back to the boundary (the returned
    CF has ``f(x') >= 0`` and lies within ``2**-bisection_steps`` of a step from ``f = 0``).
    """
    x0 = _as_points(x)
    _check_bounds(bounds, x0.shape[1])
    if lam <= 0 or lr <= 0 or max_iter < 1 or grow_every < 1:
        raise ValueError("lam and lr must be positive, max_iter and grow_every at least 1")
    with torch.no_grad():
        if (model(x0).squeeze(-1) >= 0).any():
            raise ValueError("every x must be rejected by the model (m(x) < 0.5)")
    n = x0.shape[0]
    cur = x0.clone()
    out = x0.clone()
    done = torch.zeros(n, dtype=torch.bool)
    iters = np.full(n, max_iter)
    weight = torch.full((n,), float(lam), dtype=DTYPE)
    for it in range(1, max_iter + 1):
        prev = cur.detach()
        z = prev.clone().requires_grad_(True)
        loss = ((z - x0) ** 2).sum(1) + weight * softplus(-model(z).squeeze(-1))
        (grad,) = torch.autograd.grad(loss.sum(), z)
        with torch.no_grad():
            cur = _clamp(prev - lr * grad, bounds)
            crossed = (~done) & (model(cur).squeeze(-1) >= 0)
            if crossed.any():
                lo, hi = prev[crossed], cur[crossed]  # f(lo) < 0 <= f(hi)
                for _ in range(bisection_steps):
                    mid = 0.5 * (lo + hi)
                    pos = model(mid).squeeze(-1) >= 0
                    hi = torch.where(pos[:, None], mid, hi)
                    lo = torch.where(pos[:, None], lo, mid)
                out[crossed] = hi
                iters[crossed.numpy()] = it
                done |= crossed
            if done.all():
                break
            cur = torch.where(done[:, None], out, cur)
            if it % grow_every == 0:
                weight = torch.where(done, weight, weight * 2.0)
    return CounterfactualResult(cfs=out.numpy(), reached=done.numpy(), iterations=iters)


def high_confidence_counterfactual(
    model: nn.Module,
    x_start: np.ndarray,
    *,
    target: float,
    step: float = 0.02,
    max_iter: int = 2000,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> CounterfactualResult:
    """Push each start point along the normalised logit gradient until ``m(x') >= target``.

    The "plain high-confidence" baseline: the same kind of walk as :func:`trex` but on the
    model's own output at ``x'`` only, without the neighbourhood or its variability term.
    """
    if not 0.5 <= target < 1.0:
        raise ValueError(f"target must lie in [0.5, 1), got {target}")
    if step <= 0 or max_iter < 1:
        raise ValueError("step must be positive and max_iter at least 1")
    x = _as_points(x_start, "x_start").clone()
    _check_bounds(bounds, x.shape[1])
    logit_target = float(np.log(target / (1 - target)))
    n = x.shape[0]
    active = torch.ones(n, dtype=torch.bool)
    iters = np.zeros(n, dtype=int)
    for it in range(max_iter + 1):
        z = x.clone().requires_grad_(True)
        logit = model(z).squeeze(-1)
        active &= logit.detach() < logit_target
        if not active.any() or it == max_iter:
            break
        (grad,) = torch.autograd.grad(logit.sum(), z)
        with torch.no_grad():
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            x = torch.where(active[:, None], _clamp(x + step * direction, bounds), x)
        iters[active.numpy()] = it + 1
    with torch.no_grad():
        reached = probability(model, x) >= target
    return CounterfactualResult(cfs=x.numpy(), reached=reached.numpy(), iterations=iters)


def stability(model: nn.Module, x: torch.Tensor, noise: torch.Tensor, sigma: float,
              variability: bool = True) -> torch.Tensor:  # fmt: skip
    """The Stability estimator ``R_hat_{k,sigma^2}(x', m)`` of Hamman et al. (Sec. 4), per row.

    ``R_hat(x') = (1/k) sum_i [ m(X_i) - |m(x') - m(X_i)| ]`` with ``X_i = x' + sigma Z_i``;
    ``noise`` holds the standard normal ``Z`` with shape ``(n, k, d)`` for ``x`` of shape
    ``(n, d)``. The first term rewards a confidently positive neighbourhood, the second
    penalises the model's variability around ``x'``; ``variability=False`` drops it (the mean
    output over the neighbourhood alone, an ablation). Differentiable in ``x`` (autograd).
    """
    if x.ndim != 2 or noise.ndim != 3 or noise.shape[::2] != (x.shape[0], x.shape[1]):
        raise ValueError(f"x must be (n, d) and noise (n, k, d), got {tuple(x.shape)} and "
                         f"{tuple(noise.shape)}")  # fmt: skip
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    m_center = probability(model, x)  # (n,)
    m_samples = probability(model, x[:, None, :] + sigma * noise)  # (n, k)
    if not variability:
        return m_samples.mean(dim=1)
    return (m_samples - (m_center[:, None] - m_samples).abs()).mean(dim=1)


def stability_estimate(
    model: nn.Module, x: np.ndarray, *, sigma: float, k: int, rng: np.random.Generator,
    chunk: int = 4096,
) -> np.ndarray:  # fmt: skip
    """:func:`stability` at each row of ``x`` with ``k`` fresh samples drawn from ``rng``."""
    pts = _as_points(x)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    out = []
    with torch.no_grad():
        for start in range(0, pts.shape[0], max(1, chunk // k)):
            block = pts[start : start + max(1, chunk // k)]
            noise = torch.from_numpy(rng.standard_normal((block.shape[0], k, block.shape[1])))
            out.append(stability(model, block, noise, sigma))
    return torch.cat(out).numpy()


def trex(
    model: nn.Module,
    x_start: np.ndarray,
    *,
    tau: float,
    sigma: float,
    k: int,
    step: float,
    max_iter: int,
    rng: np.random.Generator,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    resample: bool = True,
    k_check: int | None = None,
    variability: bool = True,
    keep_path: bool = False,
) -> CounterfactualResult:
    """T-Rex (Hamman et al., Algorithm 1): ascend ``R_hat`` from a base CF until ``R_hat >= tau``.

    With ``resample`` (the default) every iteration draws ``k`` fresh standard normal vectors
    per point, so the stopping test ``R_hat >= tau`` is made on samples the walk has not been
    fitted to; with ``resample=False`` each point keeps one draw for the whole walk (common
    random numbers: smoother, but the walk can overfit that draw). With ``k_check`` the stopping
    test uses its own fixed draw of ``k_check`` vectors per point, never used for a gradient,
    so the returned ``R_hat`` is not fitted to the noise the walk followed (``variability=False``
    ascends the neighbourhood mean alone, an ablation of the second term). While a point's
    ``R_hat`` is below ``tau`` it takes a step of length ``step`` along the normalised gradient
    ``grad R_hat / ||grad R_hat||``, clipped to ``bounds`` when given. A start point that the
    model still rejects first climbs the logit (which does not saturate) until ``m(x') >= 0.5``.
    Returns the first iterate with ``R_hat >= tau``; ``reached`` is False for points that hit
    ``max_iter`` (their last iterate is returned and must be reported, not hidden).
    """
    if not 0.5 < tau < 1.0:
        raise ValueError(f"tau must lie in (0.5, 1), got {tau}")
    if sigma <= 0 or k < 1 or step <= 0 or max_iter < 1:
        raise ValueError("sigma and step must be positive, k and max_iter at least 1")
    x = _as_points(x_start, "x_start").clone()
    _check_bounds(bounds, x.shape[1])
    n, d = x.shape
    if k_check is not None and k_check < 1:
        raise ValueError(f"k_check must be at least 1 or None, got {k_check}")
    noise = torch.from_numpy(rng.standard_normal((n, k, d)))
    check_noise = None
    if k_check is not None:
        check_noise = torch.from_numpy(rng.standard_normal((n, k_check, d)))
    active = torch.ones(n, dtype=torch.bool)
    iters = np.zeros(n, dtype=int)
    value = torch.zeros(n, dtype=DTYPE)
    path = [x.numpy().copy()] if keep_path else []
    for it in range(max_iter + 1):
        if resample and it > 0:
            noise = torch.from_numpy(rng.standard_normal((n, k, d)))
        z = x.clone().requires_grad_(True)
        r = stability(model, z, noise, sigma, variability)
        logit = model(z).squeeze(-1)
        if check_noise is None:
            tested = r.detach()
        else:
            with torch.no_grad():
                tested = stability(model, z.detach(), check_noise, sigma, variability)
        value = torch.where(active, tested, value)
        active &= tested < tau
        if not active.any() or it == max_iter:
            break
        rejected = logit.detach() < 0
        objective = torch.where(rejected, logit, r)  # the logit surrogate only while m(x') < 0.5
        (grad,) = torch.autograd.grad(objective.sum(), z)
        with torch.no_grad():
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            x = torch.where(active[:, None], _clamp(x + step * direction, bounds), x)
        iters[active.numpy()] = it + 1
        if keep_path:
            path.append(x.numpy().copy())
    reached = (value >= tau).numpy()
    return CounterfactualResult(cfs=x.detach().numpy(), reached=reached, iterations=iters,
                                stability=value.numpy(), path=path)  # fmt: skip


@torch.no_grad()
def validity(models: list[nn.Module], cfs: np.ndarray) -> np.ndarray:
    """Boolean matrix ``(n_models, n_cfs)``: does changed model ``M_j`` keep ``M(x') >= 0.5``?"""
    if len(models) == 0:
        raise ValueError("validity needs at least one model")
    pts = _as_points(cfs, "cfs")
    return np.stack([(model(pts).squeeze(-1) >= 0).numpy() for model in models])


def outlier_fraction(cfs: np.ndarray, reference: np.ndarray, n_neighbors: int = 20) -> float:
    """Share of ``cfs`` that scikit-learn's LocalOutlierFactor, fitted on ``reference``, flags."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[0] <= n_neighbors:
        raise ValueError(f"reference must be (n, d) with more than {n_neighbors} rows")
    lof = LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True).fit(reference)
    return float(np.mean(lof.predict(np.asarray(cfs, dtype=np.float64)) == -1))
