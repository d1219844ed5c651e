"""Learning-augmented column-and-constraint generation (Neur2RO, Dumouchelle et al., ICLR 2024,
Sec. 4): the main problem over a scenario list and the adversarial problem over the uncertainty
set, both with the value network embedded as MILP constraints, and the loop that alternates
them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lib.robust.capital_budgeting import CapitalBudgetingInstance
from lib.robust.milp_embedding import MilpModel, encode_mlp
from lib.robust.training_data import sample_plans, sample_scenarios
from lib.robust.value_network import Layer, ValueNetwork


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
