"""Training data for a learned second-stage value: sampled plans and scenarios labelled with
the exact ``V(x, xi)`` (Neur2RO's data generation, Sec. 5 of the ICLR paper)."""

from __future__ import annotations

import numpy as np

from lib.robust.capital_budgeting import CapitalBudgetingInstance, second_stage_value


def sample_plans(inst: CapitalBudgetingInstance, count: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """Random first-stage plans as in the paper's data generation: draw a density ``p`` uniform
    on [0, 1], include each project with probability ``p``, reject plans over budget."""
    out = []
    while len(out) < count:
        p = rng.uniform()
        x = (rng.uniform(size=inst.n) < p).astype(float)
        if inst.cost @ x <= inst.budget:
            out.append(x)
    return np.array(out)


def sample_scenarios(kappa: int, count: int, rng: np.random.Generator,
                     gamma: float | None = None) -> np.ndarray:
    """Scenarios uniform in the box ``[-1, 1]^kappa``; with ``gamma``, those outside the
    budgeted set are scaled back onto its boundary ``||xi||_1 = gamma``."""
    xi = rng.uniform(-1, 1, size=(count, kappa))
    if gamma is not None:
        norm = np.abs(xi).sum(1)
        scale = np.where(norm > gamma, gamma / np.maximum(norm, 1e-12), 1.0)
        xi = xi * scale[:, None]
    return xi


def make_dataset(inst: CapitalBudgetingInstance, n_plans: int, n_scenarios: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, XI, labels)``: ``n_plans`` sampled plans, each with ``n_scenarios`` scenarios drawn
    from the whole box (so one network serves every ``Gamma``), labelled with the exact
    ``V(x, xi)``."""
    if n_plans < 1 or n_scenarios < 1:
        raise ValueError("need at least one plan and one scenario")
    plans = sample_plans(inst, n_plans, rng)
    X, XI, labels = [], [], []
    for x in plans:
        xi = sample_scenarios(inst.kappa, n_scenarios, rng)
        X.append(np.repeat(x[None], n_scenarios, 0))
        XI.append(xi)
        labels.append(second_stage_value(inst, x, xi))
    return np.vstack(X), np.vstack(XI), np.concatenate(labels)
