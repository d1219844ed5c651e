"""Neur2RO: exact references, the big-M encoding of the value network, and the CCG loop."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

import lib.robust.milp_embedding as milp_embedding
from lib.robust.capital_budgeting import (
    CapitalBudgetingInstance,
    _max_linear_over_budgeted_box,
    exact_robust_optimum,
    feasible_plans,
    make_instance,
    nominal_plan,
    recourse_options,
    second_stage_value,
    static_robust_plan,
    worst_case_value,
)
from lib.robust.ccg import (
    MainProblem,
    encoding_errors,
    neur2ro_ccg,
    solve_adversarial,
    solve_main,
)
from lib.robust.training_data import make_dataset, sample_scenarios
from lib.robust.value_network import random_value_network, train_value_network


def small(seed: int, n: int = 5, kappa: int = 2, gamma: float = 1.5):
    return make_instance(np.random.default_rng(seed), n=n, kappa=kappa, gamma=gamma)


@pytest.mark.parametrize("seed", range(3))
def test_second_stage_value_matches_brute_force(seed):
    inst = small(seed)
    rng = np.random.default_rng(seed + 10)
    x = feasible_plans(inst)[rng.integers(len(feasible_plans(inst)))]
    xi = sample_scenarios(inst.kappa, 5, rng, inst.gamma)
    got = second_stage_value(inst, x, xi)
    for m, z in enumerate(xi):
        r = inst.profits(z)
        best = np.inf
        for y in itertools.product([0, 1], repeat=inst.n):
            y = np.array(y, float)
            if np.any(y * x) or inst.cost @ (x + y) > inst.budget:
                continue
            best = min(best, -(r @ (x + inst.late_factor * y)))
        assert got[m] == pytest.approx(best, abs=1e-12)


def test_maximal_recourse_options_are_maximal():
    inst = small(0)
    x = np.zeros(inst.n)
    Y = recourse_options(inst, x, maximal_only=True)
    for y in Y:
        slack = inst.budget - inst.cost @ y
        assert np.all(inst.cost[y == 0] > slack - 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_worst_case_value_is_the_max_over_xi(seed):
    inst = small(seed)
    rng = np.random.default_rng(seed)
    for x in feasible_plans(inst)[::7]:
        value, xi = worst_case_value(inst, x)
        assert np.abs(xi).sum() <= inst.gamma + 1e-7 and np.abs(xi).max() <= 1 + 1e-9
        assert second_stage_value(inst, x, xi)[0] == pytest.approx(value, abs=1e-7)
        samples = sample_scenarios(inst.kappa, 2000, rng, inst.gamma)
        assert second_stage_value(inst, x, samples).max() <= value + 1e-7


@pytest.mark.parametrize("gamma", [0.0, 0.7, 1.0, 2.3, 3.0])
def test_max_linear_over_budgeted_box_matches_lp(gamma):
    rng = np.random.default_rng(1)
    G = rng.normal(size=(4, 3))
    got = _max_linear_over_budgeted_box(G, gamma)
    for g, v in zip(G, got):
        # variables xi, s: max g^T xi, |xi| <= s <= 1, sum s <= gamma
        A = np.block([[np.eye(3), -np.eye(3)], [-np.eye(3), -np.eye(3)],
                      [np.zeros((1, 3)), np.ones((1, 3))]])
        b = np.concatenate([np.zeros(6), [gamma]])
        res = linprog(np.concatenate([-g, np.zeros(3)]), A_ub=A, b_ub=b,
                      bounds=[(-1, 1)] * 3 + [(0, 1)] * 3)
        assert v == pytest.approx(-res.fun, abs=1e-9)


def test_exact_optimum_beats_the_baselines():
    inst = small(2, n=6)
    best = exact_robust_optimum(inst)
    values = [worst_case_value(inst, x)[0] for x in feasible_plans(inst)]
    assert best.value == pytest.approx(min(values), abs=1e-12)
    assert nominal_plan(inst).value >= best.value - 1e-12
    assert static_robust_plan(inst).value >= best.value - 1e-12


def test_no_uncertainty_makes_nominal_optimal():
    inst = small(3, n=6).with_gamma(0.0)
    assert nominal_plan(inst).value == pytest.approx(exact_robust_optimum(inst).value, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_encoding_is_exact_with_inputs_fixed(seed):
    """With x and xi pinned, the MILP's output must be the forward pass, in both problems."""
    inst = small(seed)
    rng = np.random.default_rng(seed + 100)
    net = random_value_network(inst.n, inst.kappa, rng)
    for _ in range(3):
        x = feasible_plans(inst)[rng.integers(len(feasible_plans(inst)))]
        xi = sample_scenarios(inst.kappa, 1, rng, inst.gamma)[0]
        expected = net.forward(x, xi)[0]
        adv = solve_adversarial(net, inst, x, fixed_xi=xi)
        main = solve_main(net, inst, xi[None], fixed_x=x)
        assert adv.value == pytest.approx(expected, abs=1e-6)
        assert main.theta == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_milp_optima_equal_forward_pass_and_are_optimal(seed):
    inst = small(seed)
    rng = np.random.default_rng(seed + 200)
    net = random_value_network(inst.n, inst.kappa, rng)
    assert encoding_errors(net, inst, rng, count=3).max() <= 1e-6
    x = feasible_plans(inst)[0]
    adv = solve_adversarial(net, inst, x, mip_rel_gap=1e-9)
    samples = sample_scenarios(inst.kappa, 1000, rng, inst.gamma)
    assert net.forward(x, samples).max() <= adv.value + 1e-6
    scen = sample_scenarios(inst.kappa, 3, rng, inst.gamma)
    main = solve_main(net, inst, scen)
    brute = min(net.forward(p, scen).max() for p in feasible_plans(inst))
    assert main.theta == pytest.approx(brute, abs=1e-6)


def _drop_upper_bound(model, h, pre, bias, lower, upper):
    """A deliberately wrong ReLU: the row h <= upper * delta is missing."""
    delta = int(model.add_vars(1, 0, 1, integer=True)[0])
    row = {j: -a for j, a in pre.items()}
    row[h] = 1.0
    model.add_row(dict(row), bias, np.inf)
    row_m = dict(row)
    row_m[delta] = -lower
    model.add_row(row_m, -np.inf, bias - lower)


def _wrong_sign(model, h, pre, bias, lower, upper):
    """A deliberately wrong ReLU: the big-M term of h <= a - lower (1 - delta) has its sign
    flipped (h <= a + lower (1 - delta))."""
    delta = int(model.add_vars(1, 0, 1, integer=True)[0])
    row = {j: -a for j, a in pre.items()}
    row[h] = 1.0
    model.add_row(dict(row), bias, np.inf)
    row_m = dict(row)
    row_m[delta] = lower
    model.add_row(row_m, -np.inf, bias + lower)
    model.add_row({h: 1.0, delta: -upper}, -np.inf, 0.0)


@pytest.mark.parametrize("broken", [_drop_upper_bound, _wrong_sign])
def test_a_broken_encoding_is_caught(monkeypatch, broken):
    inst = small(0)
    worst = []
    for seed in range(3):
        net = random_value_network(inst.n, inst.kappa, np.random.default_rng(seed + 300))
        monkeypatch.setattr(milp_embedding, "_relu_big_m", broken)
        try:
            errors = encoding_errors(net, inst, np.random.default_rng(seed), count=2)
        except RuntimeError:  # the broken rows may even make the MILP infeasible
            errors = np.array([np.inf])
        monkeypatch.undo()
        worst.append(errors.max())
    assert max(worst) > 1e-3


def test_training_fits_and_ccg_converges_consistently():
    inst = small(1, n=6, kappa=2, gamma=2.0)
    rng = np.random.default_rng(0)
    X, XI, y = make_dataset(inst, 60, 10, rng)
    net, report = train_value_network(X, XI, y, hidden=(0, 0, 8), embed=4, epochs=40,
                                      batch_size=128, lr=1e-2)
    assert report.test_rel_error < 0.1
    assert net.forward(X[:5], XI[:5]).shape == (5,)
    trace = neur2ro_ccg(net, inst, max_iter=10)
    assert trace.converged and trace.iterations <= 10
    S = np.array(trace.scenarios)
    assert trace.thetas[-1] == pytest.approx(net.forward(trace.x, S).max(),
                                             abs=1e-5)
    assert trace.adversarial[-1] <= trace.thetas[-1] + 1e-4 * max(1, abs(trace.thetas[-1]))
    assert inst.cost @ trace.x <= inst.budget + 1e-9


def test_bad_inputs_raise():
    inst = small(0)
    with pytest.raises(ValueError, match="budget"):
        second_stage_value(inst, np.ones(inst.n), np.zeros(inst.kappa))
    with pytest.raises(ValueError, match="0/1"):
        worst_case_value(inst, np.full(inst.n, 0.5))
    with pytest.raises(ValueError, match="components"):
        second_stage_value(inst, np.zeros(inst.n), np.zeros(inst.kappa + 1))
    with pytest.raises(ValueError, match="gamma"):
        inst.with_gamma(inst.kappa + 1.0)
    with pytest.raises(ValueError, match="loadings"):
        CapitalBudgetingInstance(np.ones(3), np.ones(3), np.ones((3, 2)), 1.0)
    with pytest.raises(ValueError, match="late_factor"):
        make_instance(np.random.default_rng(0), n=4, late_factor=1.5)
    with pytest.raises(ValueError, match="at least one scenario"):
        solve_main(random_value_network(inst.n, inst.kappa, np.random.default_rng(0)), inst,
                   np.zeros((0, inst.kappa)))
    with pytest.raises(ValueError, match="max_iter"):
        neur2ro_ccg(random_value_network(inst.n, inst.kappa, np.random.default_rng(0)), inst,
                    max_iter=0)
    with pytest.raises(ValueError, match="shape"):
        MainProblem(random_value_network(inst.n, inst.kappa, np.random.default_rng(0)), inst,
                    fixed_x=np.zeros(inst.n + 1))
