"""The probabilistic guarantee behind Stability-based robust counterfactuals, made computable.

Hamman et al. (ICML 2023, Sec. 4) show that a counterfactual ``x'`` whose Stability estimate
``R_hat_{k,sigma^2}(x', m)`` is high stays valid under a naturally-occurring model change with
high probability, via the concentration of Lipschitz functions of Gaussian vectors. This module
evaluates a bound of that form; its constants and the exact form of the model-change assumption
are *our derivation* (see the chapter), built from two ingredients:

1. **Estimator concentration** (:func:`concentration_tail`). If ``m`` is ``gamma``-Lipschitz
   (l2), each term ``m(X_i) - |m(x') - m(X_i)|`` is ``2 gamma``-Lipschitz in ``X_i``, so
   ``R_hat`` is ``2 gamma sigma / sqrt(k)``-Lipschitz in the ``k d`` standard normals, and the
   Gaussian concentration inequality gives
   ``Pr(R_hat - R >= eps) <= exp(-k eps^2 / (8 gamma^2 sigma^2))``, with ``R = E R_hat``.
2. **Model change** (:func:`model_change_spread`). Pointwise ``M(x') >= M(X) - |M(x') - M(X)|``,
   so ``M(x') >= R_M(x')``, the population Stability of the changed model. If retraining moves
   it by a mean square ``E_M (R_M(x') - R(x'))^2 <= nu``, Chebyshev gives
   ``Pr_M(M(x') < 0.5) <= nu / (R(x') - 0.5)^2``.

Together (:func:`invalidation_bound`), for ``R_hat >= tau > 0.5`` and any ``0 < eps < tau - 0.5``:
``Pr(M(x') < 0.5) <= exp(-k eps^2 / (8 gamma^2 sigma^2)) + nu / (R_hat - eps - 0.5)^2``.
``gamma`` is replaced by :func:`sampled_local_lipschitz`, an empirical *local* estimate (the
largest gradient norm seen around ``x'``), as the paper's practical relaxations suggest.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lib.explain.counterfactuals import _as_points, probability, stability


def concentration_tail(eps: np.ndarray | float, *, k: int, sigma: float, gamma: np.ndarray | float
                       ) -> np.ndarray:  # fmt: skip
    """``exp(-k eps^2 / (8 gamma^2 sigma^2))``: the one-sided tail of ``R_hat`` (ingredient 1)."""
    eps = np.asarray(eps, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    if k < 1 or sigma <= 0:
        raise ValueError(f"k must be >= 1 and sigma > 0, got {k} and {sigma}")
    if (eps < 0).any() or (gamma <= 0).any():
        raise ValueError("eps must be non-negative and gamma positive")
    return np.exp(-k * eps**2 / (8.0 * gamma**2 * sigma**2))


def sampled_local_lipschitz(
    model: nn.Module, x: np.ndarray, *, sigma: float, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Largest ``||grad m||_2`` over ``x'`` and ``n_samples`` draws of ``N(x', sigma^2 I)``, by row.

    An empirical local Lipschitz constant of ``m = sigmoid(f)``: a lower estimate of the true
    constant on the neighbourhood (sampling can miss the steepest point), not a certificate.
    """
    pts = _as_points(x)
    if sigma <= 0 or n_samples < 0:
        raise ValueError("sigma must be positive and n_samples non-negative")
    n, d = pts.shape
    noise = torch.from_numpy(rng.standard_normal((n, n_samples, d)))
    cloud = torch.cat([pts[:, None, :], pts[:, None, :] + sigma * noise], dim=1)
    cloud.requires_grad_(True)
    (grad,) = torch.autograd.grad(probability(model, cloud).sum(), cloud)
    return grad.norm(dim=2).max(dim=1).values.numpy()


@torch.no_grad()
def model_change_spread(
    base: nn.Module,
    models: list[nn.Module],
    x: np.ndarray,
    *,
    sigma: float,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``R_hat(x', M_j) - R_hat(x', m)`` per changed model ``M_j`` and row ``x'``, on common noise.

    Its mean square estimates ``nu`` of ingredient 2, the spread of the Stability that retraining
    causes. Use models *disjoint* from those the guarantee is then tested on.
    """
    if len(models) == 0:
        raise ValueError("model_change_spread needs at least one changed model")
    pts = _as_points(x)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    noise = torch.from_numpy(rng.standard_normal((pts.shape[0], k, pts.shape[1])))
    r_base = stability(base, pts, noise, sigma)
    return np.stack([(stability(M, pts, noise, sigma) - r_base).numpy() for M in models])


def invalidation_bound(
    stability_hat: np.ndarray,
    *,
    k: int,
    sigma: float,
    gamma: np.ndarray | float,
    nu: float,
    n_grid: int = 400,
) -> np.ndarray:
    """Upper bound on ``Pr(M(x') < 0.5)`` per counterfactual, from its Stability estimate.

    ``min over eps in (0, R_hat - 0.5)`` of ``exp(-k eps^2/(8 gamma^2 sigma^2)) +
    min(1, nu / (R_hat - eps - 0.5)^2)``, capped at 1; it is 1 (vacuous) where ``R_hat <= 0.5``.
    """
    r = np.atleast_1d(np.asarray(stability_hat, dtype=np.float64))
    gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), r.shape)
    if nu < 0 or n_grid < 2:
        raise ValueError(f"nu must be non-negative and n_grid at least 2, got {nu} and {n_grid}")
    bound = np.ones_like(r)
    for i, (ri, gi) in enumerate(zip(r, gamma)):
        margin = ri - 0.5
        if margin <= 0:
            continue
        eps = np.linspace(0.0, margin, n_grid + 1)[1:-1]
        gap = margin - eps
        tail = concentration_tail(eps, k=k, sigma=sigma, gamma=gi)
        change = np.minimum(1.0, nu / gap**2) if nu > 0 else np.zeros_like(gap)
        bound[i] = min(1.0, float(np.min(tail + change)))
    return bound
