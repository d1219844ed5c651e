"""Worst-case risk of a stable predictor over the mutable mechanisms (the paper's Sec. 5.1,
Thm 5.2, and Algorithm 1).

The paper shows that the worst-case risk over environments,
``h*(S') = max_e E_e[(Y - f_S'(X))^2]``, is attained by replacing each mutable mechanism
with an intervention function ``J_m : pa(X_m) -> X_m`` and maximising the risk over the J's.
As in the official code, each J is a small network and the descendants of X_M are
regenerated through their structural equations before the predictor is scored; the
maximisation is Adam ascent. Our J class is bounded, ``J_m = B tanh(MLP_m(pa_m))``, which
contains every scaled mechanism ``alpha g_m`` with ``|alpha| <= B`` (the official code
bounds J with a weight-norm penalty and early stopping instead). Restarts run as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lib.causal.scm import AdditiveNoiseSCM, Data
from lib.causal.stable_predictors import PolynomialEnsemble, PolynomialRidge

Predictor = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass
class WorstCase:
    """Result of :func:`estimate_worst_case_risk` for ``K`` predictors and ``R`` restarts."""

    risk: np.ndarray  # (K,) best risk over restarts: the estimate of h*(S')
    restart_risks: np.ndarray  # (K, R)
    trace: np.ndarray  # (steps, K, R) risk during the ascent


def _batched_mlp(k: int, hidden: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    w1 = torch.randn(batch, k, hidden, generator=gen, dtype=torch.float64) / np.sqrt(max(k, 1))
    b1 = torch.randn(batch, 1, hidden, generator=gen, dtype=torch.float64)
    w2 = torch.randn(batch, hidden, 1, generator=gen, dtype=torch.float64) / np.sqrt(hidden)
    b2 = 0.5 * torch.randn(batch, 1, 1, generator=gen, dtype=torch.float64)
    return [p.requires_grad_() for p in (w1, b1, w2, b2)]


def estimate_worst_case_risk(scm: AdditiveNoiseSCM, data: Mapping[str, torch.Tensor],
                             predictor: PolynomialRidge | PolynomialEnsemble, bound: float,
                             family: str = "scaled", steps: int = 25, restarts: int = 3,
                             hidden: int = 4, lr: float = 0.3, seed: int = 0) -> WorstCase:
    """``h*(S') ~ max_J mean_i (y_i - f_S'(x_i^J))^2`` over intervention functions J on X_M.

    ``data``: the pooled training sample. Its noises are abducted and kept; each mutable
    mechanism is replaced by ``J_m``, the descendants of X_M are regenerated through the
    stable structural equations, and the risk is maximised by Adam for ``steps`` steps from
    several starts, run as one batch. Families of J:

    - ``"scaled"``: ``J_m = a_m g_m(w_m^T pa_m)`` with ``|a_m| <= bound`` (the environments'
      own family, Sec. 6.1), started from a ``restarts^|X_M|`` grid of scales;
    - ``"mlp"``: ``J_m = bound * tanh(MLP_m(pa_m))``, a ``hidden``-unit network (the paper's
      choice; ours is bounded by the tanh instead of a weight penalty), ``restarts`` random
      initialisations. It contains the scaled family.
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if steps < 1 or restarts < 1 or hidden < 1:
        raise ValueError("steps, restarts and hidden must be >= 1")
    if family not in ("scaled", "mlp"):
        raise ValueError(f"family must be 'scaled' or 'mlp', got {family!r}")
    if not scm.mutable:
        raise ValueError("the model has no mutable mechanism to optimise over")
    models = predictor.models if isinstance(predictor, PolynomialEnsemble) else [predictor]
    starts = restarts ** len(scm.mutable) if family == "scaled" else restarts
    ensemble = PolynomialEnsemble(models, repeat=starts)
    k, batch = len(models), len(models) * starts
    gen = torch.Generator().manual_seed(int(seed))
    noise = scm.abduct(data)
    y = data[scm.target]
    n = len(y)
    params: list[torch.Tensor] = []
    replace: dict[str, Callable[[Data], torch.Tensor]] = {}
    if family == "scaled":
        grid = np.arctanh(np.linspace(-0.9, 0.9, restarts)) if restarts > 1 else np.zeros(1)
        mesh = np.stack(np.meshgrid(*[grid] * len(scm.mutable), indexing="ij"), -1)
        mesh = np.tile(mesh.reshape(starts, len(scm.mutable)), (k, 1))
        for col, m in enumerate(scm.mutable):
            theta = torch.tensor(mesh[:, col:col + 1], dtype=torch.float64, requires_grad=True)
            params.append(theta)
            mech = scm.mechanisms[m]
            replace[m] = (lambda d, th=theta, mech=mech:
                          bound * torch.tanh(th) * mech.mean(d, n))
    else:
        for m in scm.mutable:
            parents = scm.mechanisms[m].parents
            w1, b1, w2, b2 = _batched_mlp(len(parents), hidden, batch, gen)
            params += [w1, b1, w2, b2]

            def j(d: Data, parents=parents, w1=w1, b1=b1, w2=w2, b2=b2) -> torch.Tensor:
                if parents:
                    x = torch.stack([d[p].expand(batch, n) for p in parents], dim=-1)
                else:
                    x = torch.zeros(batch, n, 0, dtype=torch.float64)
                return bound * torch.tanh((torch.tanh(x @ w1 + b1) @ w2 + b2)[..., 0])

            replace[m] = j
    opt = torch.optim.Adam(params, lr=lr)
    trace = np.empty((steps, k, starts))
    for t in range(steps):
        risk = ((y - ensemble(scm.propagate(noise, replace=replace))) ** 2).mean(dim=-1)
        trace[t] = risk.detach().numpy().reshape(k, starts)
        opt.zero_grad()
        (-risk.sum()).backward()
        opt.step()
    with torch.no_grad():
        final = ((y - ensemble(scm.propagate(noise, replace=replace))) ** 2).mean(dim=-1)
    best = np.maximum(final.numpy().reshape(k, starts), trace.max(axis=0))
    return WorstCase(best.max(axis=1), best, trace)


def grid_environment_risks(scm: AdditiveNoiseSCM, predictors: Mapping[str, Predictor],
                           scales: Sequence[Mapping[str, float]], n: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Brute force: the risk of each predictor in each environment of ``scales`` (one dict
    of mutable-mechanism factors per environment), on ``n`` fresh draws from the true SCM.
    The same noises are used for every environment and predictor (common random numbers).
    Returns, per name, an array ``(environments,)`` or, for an ensemble of K predictors,
    ``(environments, K)``."""
    if n < 1 or not scales:
        raise ValueError("need n >= 1 and at least one environment")
    noise = scm.noise(n, rng)
    out: dict[str, list] = {name: [] for name in predictors}
    with torch.no_grad():
        for sc in scales:
            world = scm.propagate(noise, scales=sc)
            for name, f in predictors.items():
                out[name].append(((world[scm.target] - f(world)) ** 2).mean(dim=-1).numpy())
    return {name: np.stack(v) for name, v in out.items()}


def select_minimax_subset(estimates: Mapping[frozenset[str], float]) -> frozenset[str]:
    """Algorithm 1's last step: the subset with the smallest estimated worst-case risk
    (ties broken towards the smaller, then the lexicographically first subset)."""
    if not estimates:
        raise ValueError("no subsets to choose from")
    return min(estimates, key=lambda s: (estimates[s], len(s), sorted(s)))
