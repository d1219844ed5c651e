"""Neur2RO (Dumouchelle, Julien, Kurtz, Khalil, ICLR 2024): a ReLU value network inside
column-and-constraint generation, on a two-stage robust capital-budgeting problem.

The problem (the paper's capital-budgeting benchmark, Sec. 7, simplified to uncertain profits
only; costs are known): ``n`` projects with costs ``c``, nominal profits ``r_bar`` and risk
loadings ``Phi`` (one row per project). A first-stage plan ``x`` in {0,1}^n is funded now at
full profit; after the risk factors ``xi`` are revealed, the second stage may fund further
projects ``y`` at the reduced profit factor ``k``, within the same budget ``B``. Profits are
``r(xi) = r_bar * (1 + Phi xi / 2)`` and ``xi`` lies in the budgeted box
``Xi = {xi in [-1, 1]^kappa : ||xi||_1 <= Gamma}``. As a minimisation,

    V(x, xi) = min_{y in Y(x)} -r(xi)^T (x + k y),   Y(x) = {y : y <= 1 - x, c^T (x + y) <= B},
    min_{x : c^T x <= B}  max_{xi in Xi}  V(x, xi).

This module holds the instance generator, the exact references (second stage by enumerating
the ``2^n`` project subsets, the inner max-min as one LP per plan, the robust optimum by
enumerating every plan), the nominal and static baselines, the training data and the value
network (separate ``x`` and ``xi`` embedding branches joined by a small ReLU head, Sec. 5),
its big-M MILP encoding with interval bounds, and the learning-augmented CCG loop (Sec. 4).
The MILPs are solved with HiGHS through :func:`scipy.optimize.milp`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix

from lib.native_output import silence_native_output

Layer = tuple[np.ndarray, np.ndarray]  # (W, b) with W of shape (out, in)


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Training data and the value network
# --------------------------------------------------------------------------------------------


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


@dataclass
class ValueNetwork:
    """The value network ``NN(x, xi)`` as float64 arrays (what the MILPs encode).

    ``x_branch`` and ``xi_branch`` are ReLU MLPs (ReLU after every layer but the last) mapping
    ``x`` and ``xi`` to embeddings; ``head`` is a ReLU MLP on their concatenation ``[e_x, e_xi]``
    whose last layer has the label scaling folded in, so ``forward`` returns objective units.
    """

    x_branch: list[Layer]
    xi_branch: list[Layer]
    head: list[Layer]

    @property
    def embed_dim(self) -> tuple[int, int]:
        return self.x_branch[-1][0].shape[0], self.xi_branch[-1][0].shape[0]

    def embed_x(self, x: np.ndarray) -> np.ndarray:
        return _mlp(self.x_branch, np.atleast_2d(np.asarray(x, dtype=float)))

    def embed_xi(self, xi: np.ndarray) -> np.ndarray:
        return _mlp(self.xi_branch, np.atleast_2d(np.asarray(xi, dtype=float)))

    def forward(self, x: np.ndarray, xi: np.ndarray) -> np.ndarray:
        """``NN(x, xi)`` for rows of ``x`` and ``xi`` (broadcast if one of them is one row)."""
        ex, exi = self.embed_x(x), self.embed_xi(xi)
        if len(ex) == 1 and len(exi) > 1:
            ex = np.repeat(ex, len(exi), 0)
        if len(exi) == 1 and len(ex) > 1:
            exi = np.repeat(exi, len(ex), 0)
        return _mlp(self.head, np.hstack([ex, exi]))[:, 0]


def _mlp(layers: list[Layer], z: np.ndarray) -> np.ndarray:
    for i, (W, b) in enumerate(layers):
        z = z @ W.T + b
        if i < len(layers) - 1:
            z = np.maximum(z, 0)
    return z


def random_value_network(n: int, kappa: int, rng: np.random.Generator, hidden: int = 8,
                         embed: int = 4) -> ValueNetwork:
    """An untrained network with Gaussian weights (for testing the MILP encodings)."""
    def mlp(sizes: list[int]) -> list[Layer]:
        return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
                for i, o in zip(sizes[:-1], sizes[1:])]
    return ValueNetwork(mlp([n, hidden, embed]), mlp([kappa, hidden, embed]),
                        mlp([2 * embed, hidden, 1]))


@dataclass
class TrainingReport:
    seconds: float
    train_mae: float
    test_mae: float
    test_rel_error: float
    losses: list[float] = field(default_factory=list)


def train_value_network(X: np.ndarray, XI: np.ndarray, labels: np.ndarray, *,
                        hidden: tuple[int, int, int] = (16, 16, 16), embed: int = 8,
                        epochs: int = 300, batch_size: int = 256,
                        lr: float = 3e-3, test_fraction: float = 0.2, seed: int = 0
                        ) -> tuple[ValueNetwork, TrainingReport]:
    """Fit ``NN(x, xi) ~ V(x, xi)`` by mean squared error (Adam, torch, CPU).

    The architecture follows the paper's decomposition (Sec. 5): separate ``x`` and ``xi``
    embedding networks joined by a ReLU head, so that in the main problem each scenario's
    ``xi`` embedding is a constant and in the adversarial problem the plan's embedding is. It
    is a per-instance MLP, not the paper's instance-agnostic set-based network.
    """
    import torch

    X, XI, labels = (np.asarray(a, dtype=float) for a in (X, XI, labels))
    if not (len(X) == len(XI) == len(labels)) or len(X) < 10:
        raise ValueError("X, XI and labels need the same length (at least 10 samples)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=gen).numpy()
    n_test = max(1, int(test_fraction * len(X)))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = float(labels[train].mean()), float(labels[train].std() + 1e-12)

    torch.manual_seed(seed)

    def mlp(sizes: list[int]) -> torch.nn.Sequential:
        mods: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(torch.nn.ReLU())
        return torch.nn.Sequential(*mods)

    hx, hxi, hh = hidden
    fx = mlp([X.shape[1], *([hx] if hx else []), embed])
    fxi = mlp([XI.shape[1], *([hxi] if hxi else []), embed])
    head = mlp([2 * embed, hh, 1])
    params = [*fx.parameters(), *fxi.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    tx = torch.tensor(X, dtype=torch.float32)
    txi = torch.tensor(XI, dtype=torch.float32)
    ty = torch.tensor((labels - mean) / std, dtype=torch.float32)

    def predict(idx: np.ndarray) -> torch.Tensor:
        return head(torch.cat([fx(tx[idx]), fxi(txi[idx])], 1))[:, 0]

    losses = []
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            loss = torch.mean((predict(idx) - ty[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / len(order))

    def export(seq: torch.nn.Sequential, scale: float = 1.0, shift: float = 0.0) -> list[Layer]:
        lins = [m for m in seq if isinstance(m, torch.nn.Linear)]
        out = [(m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
               for m in lins]
        W, b = out[-1]
        out[-1] = (W * scale, b * scale + shift)
        return out

    net = ValueNetwork(export(fx), export(fxi), export(head, std, mean))
    pred = net.forward(X, XI)
    err = np.abs(pred - labels)
    report = TrainingReport(time.perf_counter() - start, float(err[train].mean()),
                            float(err[test].mean()),
                            float((err[test] / np.abs(labels[test])).mean()), losses)
    return net, report


# --------------------------------------------------------------------------------------------
# The network as mixed-integer constraints (big-M with interval bounds)
# --------------------------------------------------------------------------------------------


class MilpModel:
    """A tiny builder for :func:`scipy.optimize.milp`: variables with bounds and integrality,
    sparse linear rows ``lo <= a^T v <= hi``, and a linear objective to minimise."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.cost: list[float] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def add_vars(self, count: int, lb: np.ndarray | float, ub: np.ndarray | float,
                 integer: bool = False) -> np.ndarray:
        lb = np.broadcast_to(np.asarray(lb, dtype=float), (count,))
        ub = np.broadcast_to(np.asarray(ub, dtype=float), (count,))
        start = len(self.lb)
        self.lb += lb.tolist()
        self.ub += ub.tolist()
        self.integer += [int(integer)] * count
        self.cost += [0.0] * count
        return np.arange(start, start + count)

    def add_row(self, coef: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coef, lo, hi))

    def solve(self, mip_rel_gap: float = 1e-7, time_limit: float | None = None):
        n_var = len(self.lb)
        r = [i for i, (c, _, _) in enumerate(self.rows) for _ in c]
        k = [j for c, _, _ in self.rows for j in c]
        v = [a for c, _, _ in self.rows for a in c.values()]
        A = coo_matrix((v, (r, k)), shape=(len(self.rows), n_var)).tocsr()
        lo = np.array([row[1] for row in self.rows])
        hi = np.array([row[2] for row in self.rows])
        options = {"disp": False, "mip_rel_gap": mip_rel_gap}
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
        args = dict(integrality=np.array(self.integer),
                    bounds=Bounds(np.array(self.lb), np.array(self.ub)),
                    constraints=LinearConstraint(A, lo, hi))
        with silence_native_output():  # HiGHS prints from C++ even with disp=False
            res = milp(np.array(self.cost), options=options, **args)
            if res.status == 4:  # HiGHS "Solve error": seen on a few of these small big-M
                # models with presolve on, or with it off; the other setting then solves them
                options["presolve"] = False
                res = milp(np.array(self.cost), options=options, **args)
        if res.x is None:
            raise RuntimeError(f"the MILP found no solution: {res.message}")
        return res


def interval_bounds(W: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``W z + b`` over the box ``lo <= z <= hi`` (interval arithmetic)."""
    Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
    return Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b


def _relu_big_m(model: MilpModel, h: int, pre: dict[int, float], bias: float,
                lower: float, upper: float) -> None:
    """``h = max(0, a)`` for the pre-activation ``a = pre^T v + bias`` with ``lower < 0 <
    upper``: one binary ``delta`` (1 when the unit is active) and the four big-M rows

        h >= a,   h >= 0 (variable bound),   h <= a - lower (1 - delta),   h <= upper delta.
    """
    delta = int(model.add_vars(1, 0, 1, integer=True)[0])
    row = {j: -a for j, a in pre.items()}
    row[h] = 1.0
    model.add_row(dict(row), bias, np.inf)  # h - a >= 0
    row_m = dict(row)
    row_m[delta] = -lower
    model.add_row(row_m, -np.inf, bias - lower)  # h - a - lower delta <= -lower
    model.add_row({h: 1.0, delta: -upper}, -np.inf, 0.0)  # h <= upper delta


def _lp_ranges(model: MilpModel, W: np.ndarray, b: np.ndarray, z: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``W z + b`` over the LP relaxation of ``model`` (binaries relaxed to [0, 1]):
    valid for every integer-feasible point, and usually much tighter than interval arithmetic
    because they see the budget or uncertainty-set rows and the coupling between units."""
    n_var = len(model.lb)
    r = [i for i, (c, _, _) in enumerate(model.rows) for _ in c]
    k = [j for c, _, _ in model.rows for j in c]
    v = [a for c, _, _ in model.rows for a in c.values()]
    A = coo_matrix((v, (r, k)), shape=(len(model.rows), n_var)).tocsr()
    cons = LinearConstraint(A, [row[1] for row in model.rows], [row[2] for row in model.rows])
    bounds = Bounds(np.array(model.lb), np.array(model.ub))
    lo, hi = np.full(len(b), -np.inf), np.full(len(b), np.inf)
    for u in range(len(b)):
        c = np.zeros(n_var)
        c[z] = W[u]
        for sign in (1.0, -1.0):
            with silence_native_output():
                res = milp(sign * c, bounds=bounds, constraints=cons, options={"disp": False})
            if res.status == 0:
                value = sign * float(res.fun) + b[u]
                if sign > 0:
                    lo[u] = value
                else:
                    hi[u] = value
    pad = 1e-7 * (1 + np.abs(np.concatenate([lo, hi])).max(initial=0))  # LP tolerance
    return lo - pad, hi + pad


def encode_mlp(model: MilpModel, inputs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               layers: list[Layer], tighten: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add ``z_L = MLP(z_0)`` to ``model`` (ReLU after every layer but the last).

    ``inputs`` are the variable indices of ``z_0`` with bounds ``lo, hi``. Each hidden unit's
    pre-activation bounds come from interval arithmetic on the previous layer's bounds,
    intersected (``tighten``) with the range over the LP relaxation of the model built so far.
    A unit that is always off is fixed to 0, one that is always on is linear, and an unstable
    one gets the big-M encoding of :func:`_relu_big_m` with those bounds as its ``M``. Returns
    the output variable indices and their bounds.
    """
    z, zlo, zhi = np.asarray(inputs), np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    for i, (W, b) in enumerate(layers):
        plo, phi = interval_bounds(W, b, zlo, zhi)
        if tighten:
            llo, lhi = _lp_ranges(model, W, b, z)
            plo, phi = np.maximum(plo, llo), np.minimum(phi, lhi)
        last = i == len(layers) - 1
        if last:
            out = model.add_vars(len(b), plo, phi)
            for u in range(len(b)):
                row = {int(j): -float(a) for j, a in zip(z, W[u]) if a != 0}
                row[int(out[u])] = 1.0
                model.add_row(row, float(b[u]), float(b[u]))
            z, zlo, zhi = out, plo, phi
            break
        hlo, hhi = np.maximum(plo, 0), np.maximum(phi, 0)
        out = model.add_vars(len(b), hlo, hhi)
        for u in range(len(b)):
            pre = {int(j): float(a) for j, a in zip(z, W[u]) if a != 0}
            if phi[u] <= 0:
                continue  # always inactive: bounds already fix h = 0
            if plo[u] >= 0:
                row = {j: -a for j, a in pre.items()}
                row[int(out[u])] = 1.0
                model.add_row(row, float(b[u]), float(b[u]))  # always active: h = a
                continue
            _relu_big_m(model, int(out[u]), pre, float(b[u]), float(plo[u]), float(phi[u]))
        z, zlo, zhi = out, hlo, hhi
    return z, zlo, zhi


def _head_with_constant(net: ValueNetwork, constant: np.ndarray, constant_first: bool
                        ) -> list[Layer]:
    """The head as a function of one embedding when the other is the constant ``constant``:
    its first layer's columns for the constant part fold into the bias."""
    (W1, b1), rest = net.head[0], net.head[1:]
    dx, _ = net.embed_dim
    if constant_first:  # the x embedding is constant (adversarial problem)
        W_var, W_const = W1[:, dx:], W1[:, :dx]
    else:  # the xi embedding is constant (main problem)
        W_var, W_const = W1[:, :dx], W1[:, dx:]
    return [(W_var, b1 + W_const @ constant), *rest]


def _add_uncertainty_set(model: MilpModel, kappa: int, gamma: float) -> np.ndarray:
    """``xi`` in ``{||xi||_inf <= 1, ||xi||_1 <= gamma}`` with auxiliaries ``s >= |xi|``."""
    m = min(1.0, gamma)
    xi = model.add_vars(kappa, -m, m)
    s = model.add_vars(kappa, 0, m)
    for j in range(kappa):
        model.add_row({int(s[j]): 1.0, int(xi[j]): -1.0}, 0.0, np.inf)
        model.add_row({int(s[j]): 1.0, int(xi[j]): 1.0}, 0.0, np.inf)
    model.add_row({int(j): 1.0 for j in s}, -np.inf, gamma)
    return xi


@dataclass
class AdversarialResult:
    xi: np.ndarray
    value: float  # MILP optimum, max_xi NN(x, xi)
    seconds: float


def solve_adversarial(net: ValueNetwork, inst: CapitalBudgetingInstance, x: np.ndarray,
                      fixed_xi: np.ndarray | None = None, tighten: bool = True,
                      mip_rel_gap: float = 1e-4) -> AdversarialResult:
    """The adversarial problem of learning-augmented CCG (Sec. 4): ``max_{xi in Xi} NN(x, xi)``
    for a fixed plan. The plan's embedding is a constant; only the ``xi`` branch and the head
    are encoded. ``fixed_xi`` pins ``xi`` (used to test that the encoding is exact)."""
    start = time.perf_counter()
    x = np.asarray(x, dtype=float)
    model = MilpModel()
    xi = _add_uncertainty_set(model, inst.kappa, inst.gamma)
    if fixed_xi is not None:
        fixed_xi = np.asarray(fixed_xi, dtype=float)
        for j, v in zip(xi, fixed_xi):
            model.lb[j] = model.ub[j] = float(v)
    m = min(1.0, inst.gamma)
    e, elo, ehi = encode_mlp(model, xi, -m * np.ones(inst.kappa), m * np.ones(inst.kappa),
                             net.xi_branch, tighten)
    head = _head_with_constant(net, net.embed_x(x)[0], constant_first=True)
    out, _, _ = encode_mlp(model, e, elo, ehi, head, tighten)
    model.cost[int(out[0])] = -1.0
    res = model.solve(mip_rel_gap)
    return AdversarialResult(res.x[xi].copy(), -float(res.fun), time.perf_counter() - start)


@dataclass
class MainResult:
    x: np.ndarray
    theta: float  # MILP optimum, min_x max_{xi in S} NN(x, xi)
    seconds: float


class MainProblem:
    """The main problem of learning-augmented CCG (Sec. 4), built incrementally:
    ``min theta`` over plans within budget with ``theta >= NN(x, xi)`` for every scenario
    added so far. The plan's embedding is encoded once and shared; each scenario adds only a
    copy of the head, with that scenario's ``xi`` embedding as a constant (the reason for the
    separate branches). ``fixed_x`` pins the plan (used to test the encoding)."""

    def __init__(self, net: ValueNetwork, inst: CapitalBudgetingInstance,
                 fixed_x: np.ndarray | None = None, tighten: bool = True) -> None:
        self.net, self.inst, self.tighten = net, inst, tighten
        self.model = model = MilpModel()
        self.x = model.add_vars(inst.n, 0, 1, integer=True)
        if fixed_x is not None:
            fixed_x = np.asarray(fixed_x, dtype=float)
            if fixed_x.shape != (inst.n,):
                raise ValueError(f"fixed_x must have shape ({inst.n},), got {fixed_x.shape}")
            for j, v in zip(self.x, fixed_x):
                model.lb[j] = model.ub[j] = float(v)
        model.add_row({int(j): float(c) for j, c in zip(self.x, inst.cost)}, -np.inf,
                      inst.budget)
        self.e, self.elo, self.ehi = encode_mlp(model, self.x, np.zeros(inst.n),
                                                np.ones(inst.n), net.x_branch, tighten)
        self.theta = int(model.add_vars(1, -np.inf, np.inf)[0])
        model.cost[self.theta] = 1.0
        self.scenarios: list[np.ndarray] = []

    def add_scenario(self, xi: np.ndarray) -> None:
        xi = np.asarray(xi, dtype=float)
        if xi.shape != (self.inst.kappa,):
            raise ValueError(f"a scenario must have shape ({self.inst.kappa},), got {xi.shape}")
        head = _head_with_constant(self.net, self.net.embed_xi(xi)[0], constant_first=False)
        out, _, _ = encode_mlp(self.model, self.e, self.elo, self.ehi, head, self.tighten)
        self.model.add_row({self.theta: 1.0, int(out[0]): -1.0}, 0.0, np.inf)
        self.scenarios.append(xi)

    def solve(self, mip_rel_gap: float = 1e-4) -> MainResult:
        if not self.scenarios:
            raise ValueError("the main problem needs at least one scenario")
        start = time.perf_counter()
        res = self.model.solve(mip_rel_gap)
        return MainResult(np.round(res.x[self.x]), float(res.fun), time.perf_counter() - start)


def solve_main(net: ValueNetwork, inst: CapitalBudgetingInstance, scenarios: np.ndarray,
               fixed_x: np.ndarray | None = None, tighten: bool = True,
               mip_rel_gap: float = 1e-7) -> MainResult:
    """Build and solve :class:`MainProblem` for a scenario list in one call."""
    scenarios = np.atleast_2d(np.asarray(scenarios, dtype=float))
    if scenarios.size == 0:
        raise ValueError("the main problem needs at least one scenario")
    start = time.perf_counter()
    main = MainProblem(net, inst, fixed_x, tighten)
    for xi in scenarios:
        main.add_scenario(xi)
    res = main.solve(mip_rel_gap)
    return MainResult(res.x, res.theta, time.perf_counter() - start)


def encoding_errors(net: ValueNetwork, inst: CapitalBudgetingInstance, rng: np.random.Generator,
                    count: int = 10) -> np.ndarray:
    """``|MILP optimum - NN(solution)|`` for adversarial problems at random plans and for main
    problems over random scenario sets: zero (to solver tolerance) iff the encoding is exact
    at the optimum."""
    errors = []
    for _ in range(count):
        x = sample_plans(inst, 1, rng)[0]
        adv = solve_adversarial(net, inst, x)
        errors.append(abs(adv.value - net.forward(x, adv.xi)[0]))
        scen = sample_scenarios(inst.kappa, 2, rng, inst.gamma)
        main = solve_main(net, inst, scen)
        errors.append(abs(main.theta - net.forward(main.x, scen).max()))
    return np.array(errors)


# --------------------------------------------------------------------------------------------
# Learning-augmented column-and-constraint generation
# --------------------------------------------------------------------------------------------


@dataclass
class CCGTrace:
    """The run of :func:`neur2ro_ccg`: the final plan and, per iteration, the main problem's
    ``theta``, the adversarial value and the scenario added."""

    x: np.ndarray
    thetas: list[float]
    adversarial: list[float]
    scenarios: list[np.ndarray]  # the main problem's scenario list at the end
    plans: list[np.ndarray]  # the main problem's plan, per iteration
    adversarial_xi: list[np.ndarray]  # the adversarial problem's maximiser, per iteration
    converged: bool
    seconds: float

    @property
    def iterations(self) -> int:
        return len(self.thetas)


def neur2ro_ccg(net: ValueNetwork, inst: CapitalBudgetingInstance, max_iter: int = 10,
                tol: float = 1e-4, first_scenario: np.ndarray | None = None) -> CCGTrace:
    """Learning-augmented CCG (the paper's Sec. 4, its Neur2RO algorithm).

    Start from one scenario (the nominal ``xi = 0`` by default). Repeat: solve the main
    problem over the scenarios so far for a plan ``x`` and its predicted worst value
    ``theta``; solve the adversarial problem ``max_xi NN(x, xi)``; if it exceeds ``theta`` by
    more than ``tol`` (relative), add its maximiser and repeat, else stop. The returned plan
    must be judged by its exact robust value, never by ``theta``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    start = time.perf_counter()
    first = np.zeros(inst.kappa) if first_scenario is None else np.asarray(first_scenario, float)
    main = MainProblem(net, inst)
    main.add_scenario(first)
    thetas, advs, plans, adv_xis = [], [], [], []
    converged = False
    for _ in range(max_iter):
        sol = main.solve()
        adv = solve_adversarial(net, inst, sol.x)
        thetas.append(sol.theta)
        advs.append(adv.value)
        plans.append(sol.x)
        adv_xis.append(adv.xi)
        if adv.value <= sol.theta + tol * max(1.0, abs(sol.theta)):
            converged = True
            break
        main.add_scenario(adv.xi)
    return CCGTrace(plans[-1], thetas, advs, list(main.scenarios), plans, adv_xis, converged,
                    time.perf_counter() - start)
