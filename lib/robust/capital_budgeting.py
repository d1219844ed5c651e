"""The two-stage robust capital-budgeting problem of Neur2RO's benchmarks, with exact references.

The problem (Dumouchelle et al., ICLR 2024, Sec. 7, simplified to uncertain profits only;
costs are known): ``n`` projects with costs ``c``, nominal profits ``r_bar`` and risk loadings
``Phi`` (one row per project). A first-stage plan ``x`` in {0,1}^n is funded now at full
profit; after the risk factors ``xi`` are revealed, the second stage may fund further projects
``y`` at the reduced profit factor ``k``, within the same budget ``B``. Profits are
``r(xi) = r_bar * (1 + Phi xi / 2)`` and ``xi`` lies in the budgeted box
``Xi = {xi in [-1, 1]^kappa : ||xi||_1 <= Gamma}``. As a minimisation,

    V(x, xi) = min_{y in Y(x)} -r(xi)^T (x + k y),   Y(x) = {y : y <= 1 - x, c^T (x + y) <= B},
    min_{x : c^T x <= B}  max_{xi in Xi}  V(x, xi).

This module holds the instance generator and the exact references: the second stage by
enumerating the ``2^n`` project subsets, the inner max-min as one LP per plan, the robust
optimum by enumerating every plan; and the nominal and static baselines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from lib.util.native_output import silence_native_output


@dataclass(frozen=True)
class CapitalBudgetingInstance:
    """A two-stage robust capital-budgeting instance with uncertain profits.

    ``cost`` (n,), ``profit`` (n,) nominal profits, ``loadings`` (n, kappa) risk loadings with
    ``||loadings[i]||_1 <= 1`` (so every profit stays in ``[r_bar / 2, 3 r_bar / 2]``),
    ``budget`` B, ``late_factor`` k in (0, 1] (profit kept by a project funded in the second
    stage), ``gamma`` the budget of the uncertainty set ``{||xi||_inf <= 1, ||xi||_1 <= gamma}``.
    """

    cost: np.ndarray
    profit: np.ndarray
    loadings: np.ndarray
    budget: float
    late_factor: float = 0.8
    gamma: float = 1.0

    def __post_init__(self) -> None:
        cost, profit, loadings = (np.asarray(a, dtype=float) for a in
                                  (self.cost, self.profit, self.loadings))
        if cost.ndim != 1 or cost.size == 0:
            raise ValueError(f"cost must be a non-empty vector, got shape {cost.shape}")
        n = cost.size
        if n > 16:
            raise ValueError(f"at most 16 projects (exact references enumerate 2^n plans), got {n}")
        if profit.shape != (n,):
            raise ValueError(f"profit must have shape ({n},), got {profit.shape}")
        if loadings.ndim != 2 or loadings.shape[0] != n or loadings.shape[1] == 0:
            raise ValueError(f"loadings must have shape ({n}, kappa), got {loadings.shape}")
        if np.any(cost <= 0) or np.any(profit <= 0):
            raise ValueError("costs and nominal profits must be positive")
        if np.any(np.abs(loadings).sum(1) > 1 + 1e-9):
            raise ValueError("each row of loadings needs ||Phi_i||_1 <= 1 (profits stay positive)")
        if not 0 < self.budget:
            raise ValueError(f"budget must be positive, got {self.budget}")
        if not 0 < self.late_factor <= 1:
            raise ValueError(f"late_factor must lie in (0, 1], got {self.late_factor}")
        if not 0 <= self.gamma <= loadings.shape[1]:
            raise ValueError(f"gamma must lie in [0, kappa={loadings.shape[1]}], got {self.gamma}")
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "profit", profit)
        object.__setattr__(self, "loadings", loadings)

    @property
    def n(self) -> int:
        return self.cost.size

    @property
    def kappa(self) -> int:
        return self.loadings.shape[1]

    def with_gamma(self, gamma: float) -> CapitalBudgetingInstance:
        """The same projects under another uncertainty budget."""
        return CapitalBudgetingInstance(self.cost, self.profit, self.loadings, self.budget,
                                        self.late_factor, gamma)

    def profits(self, xi: np.ndarray) -> np.ndarray:
        """``r(xi) = r_bar * (1 + Phi xi / 2)``; ``xi`` of shape (kappa,) or (m, kappa)."""
        xi = np.asarray(xi, dtype=float)
        return self.profit * (1 + xi @ self.loadings.T / 2)


def make_instance(rng: np.random.Generator, n: int = 8, kappa: int = 3, gamma: float = 2.0,
                  late_factor: float = 0.8, budget_fraction: float = 0.5
                  ) -> CapitalBudgetingInstance:
    """Sample an instance in the spirit of the paper's capital-budgeting generator.

    Costs uniform on [1, 10], nominal profits ``cost / 5`` times a uniform factor in
    [0.8, 1.2] (so projects differ in return), budget ``budget_fraction`` of the total cost.
    Each project's loadings are uniform simplex weights with random signs: a risk factor helps
    some projects and hurts others, so a robust plan hedges (with non-negative loadings, as in
    the paper's generator where costs are uncertain too, the worst case here would be the
    same corner for every plan).
    """
    if n < 2 or kappa < 1:
        raise ValueError(f"need n >= 2 projects and kappa >= 1 factors, got n={n}, kappa={kappa}")
    if not 0 < budget_fraction < 1:
        raise ValueError(f"budget_fraction must lie in (0, 1), got {budget_fraction}")
    cost = rng.uniform(1, 10, size=n)
    profit = cost / 5 * rng.uniform(0.8, 1.2, size=n)
    weights = rng.dirichlet(np.ones(kappa), size=n)
    signs = rng.choice([-1.0, 1.0], size=(n, kappa))
    return CapitalBudgetingInstance(cost, profit, weights * signs, budget_fraction * cost.sum(),
                                    late_factor, gamma)


def all_subsets(n: int) -> np.ndarray:
    """All ``2^n`` binary vectors of length ``n`` as rows (float)."""
    if not 1 <= n <= 16:
        raise ValueError(f"n must lie in [1, 16], got {n}")
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(float)


def _check_plan(inst: CapitalBudgetingInstance, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != (inst.n,):
        raise ValueError(f"a plan must have shape ({inst.n},), got {x.shape}")
    if not np.all((x == 0) | (x == 1)):
        raise ValueError("a plan must be a 0/1 vector")
    if inst.cost @ x > inst.budget + 1e-9:
        raise ValueError(f"plan costs {inst.cost @ x:.3f}, over the budget {inst.budget:.3f}")
    return x


def _check_xi(inst: CapitalBudgetingInstance, xi: np.ndarray) -> np.ndarray:
    xi = np.atleast_2d(np.asarray(xi, dtype=float))
    if xi.shape[1] != inst.kappa:
        raise ValueError(f"xi must have {inst.kappa} components, got shape {xi.shape}")
    return xi


def recourse_options(inst: CapitalBudgetingInstance, x: np.ndarray,
                     maximal_only: bool = False) -> np.ndarray:
    """The feasible second-stage decisions ``Y(x)`` (rows), optionally only the maximal ones.

    Profits stay positive on ``Xi``, so a decision to which another affordable project could be
    added is never the minimiser; dropping them shrinks the inner max-min LP.
    """
    x = _check_plan(inst, x)
    Y = all_subsets(inst.n)
    slack = inst.budget - inst.cost @ x - Y @ inst.cost
    Y_ok = (Y @ x == 0) & (slack >= -1e-9)
    Y, slack = Y[Y_ok], slack[Y_ok]
    if maximal_only:
        free = (1 - x)[None, :] * (1 - Y)
        addable = (free * (inst.cost[None, :] <= slack[:, None] + 1e-9)).any(1)
        Y = Y[~addable]
    return Y


def second_stage_value(inst: CapitalBudgetingInstance, x: np.ndarray, xi: np.ndarray
                       ) -> np.ndarray:
    """``V(x, xi) = min_y -r(xi)^T (x + k y)`` exactly, by enumerating ``Y(x)``; one value per
    row of ``xi`` (the label the value network learns: first- plus second-stage objective)."""
    x = _check_plan(inst, x)
    xi = _check_xi(inst, xi)
    R = inst.profits(xi)  # (m, n)
    Y = recourse_options(inst, x, maximal_only=True)
    return -(R @ x) - inst.late_factor * (R @ Y.T).max(1)


def worst_case_value(inst: CapitalBudgetingInstance, x: np.ndarray
                     ) -> tuple[float, np.ndarray]:
    """The exact robust value ``max_{xi in Xi} V(x, xi)`` of a plan and a worst ``xi``.

    ``V(x, .)`` is the minimum of finitely many affine functions of ``xi`` (one per maximal
    ``y``), so the max-min is one LP: maximise ``t`` subject to ``t <= -r(xi)^T (x + k y)`` for
    every ``y``, ``xi`` in the budgeted box (``|xi_j| <= s_j``, ``sum s <= Gamma``).
    """
    x = _check_plan(inst, x)
    kappa = inst.kappa
    W = x[None, :] + inst.late_factor * recourse_options(inst, x, maximal_only=True)
    weighted = W * inst.profit[None, :]  # rows r_bar * w
    # variables: xi (kappa), s (kappa), t; minimise -t
    rows = np.hstack([0.5 * weighted @ inst.loadings, np.zeros((len(W), kappa)),
                      np.ones((len(W), 1))])
    rhs = -weighted.sum(1)
    eye = np.eye(kappa)
    box = np.vstack([np.hstack([eye, -eye, np.zeros((kappa, 1))]),
                     np.hstack([-eye, -eye, np.zeros((kappa, 1))]),
                     np.hstack([np.zeros(kappa), np.ones(kappa), [0.0]])[None, :]])
    A_ub = np.vstack([rows, box])
    b_ub = np.concatenate([rhs, np.zeros(2 * kappa), [inst.gamma]])
    objective = np.zeros(2 * kappa + 1)
    objective[-1] = -1.0
    bounds = [(-1, 1)] * kappa + [(0, 1)] * kappa + [(None, None)]
    res = linprog(objective, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the inner max-min LP failed: {res.message}")
    return -float(res.fun), res.x[:kappa].copy()


def feasible_plans(inst: CapitalBudgetingInstance) -> np.ndarray:
    """Every first-stage plan within budget (rows)."""
    X = all_subsets(inst.n)
    return X[X @ inst.cost <= inst.budget + 1e-9]


@dataclass
class PlanResult:
    """A first-stage plan with its exact robust value (lower is better: minus worst profit)."""

    x: np.ndarray
    value: float
    seconds: float


def exact_robust_optimum(inst: CapitalBudgetingInstance) -> PlanResult:
    """The exact two-stage robust optimum, by enumerating every plan and solving its inner
    max-min LP (:func:`worst_case_value`): the ground truth at small ``n``."""
    start = time.perf_counter()
    best_x, best = None, np.inf
    for x in feasible_plans(inst):
        value, _ = worst_case_value(inst, x)
        if value < best - 1e-12:
            best_x, best = x, value
    return PlanResult(best_x, best, time.perf_counter() - start)


def nominal_plan(inst: CapitalBudgetingInstance) -> PlanResult:
    """The nominal baseline: plan for ``xi = 0`` (one deterministic MILP over ``x`` and ``y``),
    then report the plan's exact robust value."""
    start = time.perf_counter()
    n, k = inst.n, inst.late_factor
    objective = -np.concatenate([inst.profit, k * inst.profit])
    A = np.vstack([np.hstack([np.eye(n), np.eye(n)]),
                   np.concatenate([inst.cost, inst.cost])[None, :]])
    hi = np.concatenate([np.ones(n), [inst.budget]])
    with silence_native_output():
        res = milp(objective, integrality=np.ones(2 * n), bounds=Bounds(0, 1),
                   constraints=LinearConstraint(A, -np.inf, hi), options={"disp": False})
    x = np.round(res.x[:n])
    value, _ = worst_case_value(inst, x)
    return PlanResult(x, value, time.perf_counter() - start)


def static_robust_plan(inst: CapitalBudgetingInstance) -> PlanResult:
    """The static (single-stage) robust baseline: choose ``x`` as if no second-stage investment
    were possible, ``min_x max_xi -r(xi)^T x`` (by enumeration; the inner max is a closed form
    over the budgeted box), then report its exact two-stage robust value."""
    start = time.perf_counter()
    X = feasible_plans(inst)
    g = (X * inst.profit) @ inst.loadings / 2  # -r(xi)^T x = -r_bar^T x - g^T xi
    worst = -(X @ inst.profit) + _max_linear_over_budgeted_box(-g, inst.gamma)
    x = X[int(np.argmin(worst))]
    value, _ = worst_case_value(inst, x)
    return PlanResult(x, value, time.perf_counter() - start)


def _max_linear_over_budgeted_box(G: np.ndarray, gamma: float) -> np.ndarray:
    """``max_{||xi||_inf <= 1, ||xi||_1 <= gamma} g^T xi`` for each row ``g`` of ``G``: spend
    the budget on the largest ``|g_j|`` (whole units, then a fraction)."""
    a = -np.sort(-np.abs(G), axis=1)
    full = int(np.floor(gamma))
    total = a[:, :full].sum(1)
    if full < a.shape[1]:
        total = total + (gamma - full) * a[:, full]
    return total
