"""Constrained bilevel optimisation: oracles vs finite differences, closed forms, LV-HBA, inputs."""

import numpy as np
import pytest
from scipy import optimize

from lib.optim.bilevel import (
    HalfspaceToy,
    SVMHyperProblem,
    lv_hba,
    squared_hinge_newton,
    value_function_penalty,
)


def numeric_grad(fun, v, h=1e-6):
    return np.array([(fun(v + h * e) - fun(v - h * e)) / (2 * h) for e in np.eye(v.size)])


@pytest.mark.parametrize("n_free", [0, 3])
def test_toy_oracles_match_finite_differences(n_free):
    rng = np.random.default_rng(0)
    toy = HalfspaceToy.sample(4, rng, n_free=n_free)
    x, th = rng.normal(size=4), rng.normal(size=4 + n_free)
    lam = np.array([0.7])
    F = lambda xx, tt: toy.upper_value(xx[None], tt[None])[0]  # noqa: E731
    f = lambda xx, tt: toy.lower_value(xx[None], tt[None])[0]  # noqa: E731
    gx, gy = toy.upper_grad(x[None], th[None])
    np.testing.assert_allclose(gx[0], numeric_grad(lambda v: F(v, th), x), atol=1e-6)
    np.testing.assert_allclose(gy[0], numeric_grad(lambda v: F(x, v), th), atol=1e-6)
    fx, ft = toy.lower_grad(x[None], th[None])
    np.testing.assert_allclose(fx[0], numeric_grad(lambda v: f(v, th), x), atol=1e-6)
    np.testing.assert_allclose(ft[0], numeric_grad(lambda v: f(x, v), th), atol=1e-6)
    vx, vt = toy.constraint_vjp(x[None], th[None], lam[None])
    lag = lambda xx, tt: lam @ toy.constraint(xx[None], tt[None])[0]  # noqa: E731
    np.testing.assert_allclose(vx[0], numeric_grad(lambda v: lag(v, th), x), atol=1e-6)
    np.testing.assert_allclose(vt[0], numeric_grad(lambda v: lag(x, v), th), atol=1e-6)


def test_closed_form_lower_level_matches_numerical_solve():
    rng = np.random.default_rng(1)
    toy = HalfspaceToy.sample(5, rng, batch=3)
    x = 2 * rng.normal(size=(3, 5))
    closed = toy.lower_solution(x)
    for i in range(3):
        xi, ai, hi = x[i], toy.a[i], toy.h[i]
        res = optimize.minimize(
            lambda th, xi=xi: 0.5 * ((th - xi) ** 2).sum(), np.zeros(5),
            jac=lambda th, xi=xi: th - xi,
            constraints=[{"type": "ineq",
                          "fun": lambda th, xi=xi, ai=ai, hi=hi: -(ai @ th + hi @ xi - toy.b)}],
            method="SLSQP", options={"ftol": 1e-14},
        )
        np.testing.assert_allclose(closed[i], res.x, atol=1e-6)
    assert np.all(toy.constraint(x, closed) <= 1e-12)


@pytest.mark.parametrize("n_free", [0, 2])
def test_reference_solution_kkt_agrees_with_scipy_and_beats_samples(n_free):
    toy = HalfspaceToy.sample(6, np.random.default_rng(2), n_free=n_free, batch=2)
    xk, yk = toy.reference_solution("kkt")
    xs, _ = toy.reference_solution("scipy")
    np.testing.assert_allclose(xk, xs, atol=1e-5)
    assert np.all(toy.lower_gap(xk, yk) < 1e-8)
    F_star = toy.upper_value(xk, yk)
    rng = np.random.default_rng(3)
    for _ in range(200):  # no random LL-optimal point does better
        x = xk + 0.3 * rng.normal(size=xk.shape)
        if n_free == 0:
            F = toy.reduced_value(x)
        else:
            y2 = yk[:, 6:] + 0.3 * rng.normal(size=(2, n_free))
            ok = toy.constraint(x, np.concatenate([x, y2], 1))[:, 0] <= 0
            F = np.where(ok, toy.reduced_value(x, y2), np.inf)
        assert np.all(F >= F_star - 1e-10)


def test_projection_onto_upper_feasible_set():
    toy = HalfspaceToy.sample(4, np.random.default_rng(4), batch=2)
    rng = np.random.default_rng(5)
    x, y = 3 * rng.normal(size=(2, 4)), 3 * rng.normal(size=(2, 4))
    px, py = toy.project_upper(x, y)
    assert np.all(toy.constraint(px, py) <= 1e-12)
    qx, qy = toy.project_upper(px, py)  # idempotent
    np.testing.assert_allclose(np.c_[qx, qy], np.c_[px, py])


def test_lv_hba_converges_on_tiny_toy():
    toy = HalfspaceToy.sample(3, np.random.default_rng(6), batch=2, activity=1.0)
    xs, _ = toy.reference_solution()
    mon = toy.metrics(xs, toy.reduced_value(xs))
    tr = lv_hba(toy.problem(), np.zeros((2, 3)), np.zeros((2, 3)), iterations=8000, alpha=0.1,
                beta=0.1, eta=0.2, gamma1=10.0, gamma2=10.0, c0=3.0, p=0.3, monitor=mon)
    assert np.all(tr.at("rel_error", 8000) < 0.1)
    assert np.all(tr.at("rel_error", 8000) < 0.3 * tr.at("rel_error", 100))
    assert np.all(tr.at("ll_gap", 8000) < 0.05)
    # per-instance hyper-parameters give the same result as separate runs
    tr2 = lv_hba(toy.problem(), np.zeros((2, 3)), np.zeros((2, 3)), iterations=500,
                 alpha=[0.1, 0.05], beta=0.1, eta=0.2, gamma1=10.0, gamma2=10.0, c0=3.0, p=0.3)
    one = HalfspaceToy(**{k: getattr(toy, k)[1:] for k in "aehts"}, b=toy.b, rho=toy.rho)
    tr3 = lv_hba(one.problem(), np.zeros((1, 3)), np.zeros((1, 3)), iterations=500, alpha=0.05,
                 beta=0.1, eta=0.2, gamma1=10.0, gamma2=10.0, c0=3.0, p=0.3)
    np.testing.assert_allclose(tr2.x[1], tr3.x[0], atol=1e-12)


def test_double_loop_baseline_runs_and_improves():
    toy = HalfspaceToy.sample(3, np.random.default_rng(7), activity=1.0)
    xs, _ = toy.reference_solution()
    mon = toy.metrics(xs, toy.reduced_value(xs))
    tr = value_function_penalty(toy.problem(), np.zeros((1, 3)), np.zeros((1, 3)), outer=800,
                                inner=10, alpha=0.1, eta=0.2, c0=3.0, p=0.3, monitor=mon)
    assert tr.at("rel_error", 800)[0] < 0.5 * tr.at("rel_error", 0)[0]
    assert tr.oracle_calls[-1] == 800 * 11


def svm_problem(seed=0, n=40, d=3):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n + 20, d))
    y = np.sign(Z @ np.ones(d) + 0.5 * rng.normal(size=n + 20))
    return SVMHyperProblem(Z[:n], y[:n], Z[n:], y[n:]), rng


def test_svm_oracles_match_finite_differences():
    P, rng = svm_problem()
    c = rng.normal(size=P.n_train)
    th = rng.normal(size=P.dim + 1 + P.n_train)
    lam = rng.random(P.n_train)
    np.testing.assert_allclose(P.upper_grad(c, th)[1],
                               numeric_grad(lambda v: P.upper_value(c, v), th), atol=1e-6)
    fc, ft = P.lower_grad(c, th)
    np.testing.assert_allclose(fc, numeric_grad(lambda v: P.lower_value(v, th), c), atol=1e-6)
    np.testing.assert_allclose(ft, numeric_grad(lambda v: P.lower_value(c, v), th), atol=1e-6)
    vc, vt = P.constraint_vjp(c, th, lam)
    np.testing.assert_allclose(vt, numeric_grad(lambda v: lam @ P.constraint(c, v), th), atol=1e-6)
    np.testing.assert_allclose(vc, 0.0)


def test_svm_projection_and_lower_level_against_scipy():
    P, rng = svm_problem(1)
    th0 = rng.normal(size=P.dim + 1 + P.n_train)
    _, th = P.project_upper(np.zeros(P.n_train), th0)
    assert np.all(P.constraint(None, th) <= 1e-9)
    cons = [{"type": "ineq", "fun": lambda v: -P.constraint(None, v)}]
    opts = {"ftol": 1e-13, "maxiter": 500}
    res = optimize.minimize(lambda v: 0.5 * ((v - th0) ** 2).sum(), th0, jac=lambda v: v - th0,
                            constraints=cons, method="SLSQP", options=opts)
    np.testing.assert_allclose(th, res.x, atol=1e-5)
    c = rng.normal(size=P.n_train)
    ll = P.lower_solution(c)
    res = optimize.minimize(lambda v: P.lower_value(c, v), ll + 0.1,
                            jac=lambda v: P.lower_grad(c, v)[1], constraints=cons,
                            method="SLSQP", options=opts)
    assert P.lower_value(c, ll) <= res.fun + 1e-7
    assert np.all(P.constraint(c, ll) <= 1e-9)


def test_squared_hinge_newton_matches_sklearn_linear_svc_objective():
    from sklearn.svm import LinearSVC

    P, _ = svm_problem(2, n=60)
    C = 0.7
    w, b = squared_hinge_newton(P.Z_train, P.y_train, np.full(P.n_train, 2 * C), b_reg=0.0)
    clf = LinearSVC(C=C, loss="squared_hinge", dual=False, intercept_scaling=100.0, tol=1e-10,
                    max_iter=100000).fit(P.Z_train, P.y_train)
    np.testing.assert_allclose(w, clf.coef_[0], atol=2e-3)


def test_bad_inputs():
    toy = HalfspaceToy.sample(3, np.random.default_rng(8))
    prob, z = toy.problem(), np.zeros((1, 3))
    kw = dict(alpha=0.1, beta=0.1, eta=0.1, gamma1=1.0, gamma2=1.0)
    with pytest.raises(ValueError, match="iterations"):
        lv_hba(prob, z, z, iterations=0, **kw)
    with pytest.raises(ValueError, match="alpha"):
        lv_hba(prob, z, z, iterations=5, **{**kw, "alpha": -1.0})
    with pytest.raises(ValueError, match="penalty exponent"):
        lv_hba(prob, z, z, iterations=5, p=1.5, **kw)
    with pytest.raises(ValueError, match="batch shape"):
        lv_hba(prob, z, z, iterations=5, **{**kw, "eta": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="outer and inner"):
        value_function_penalty(prob, z, z, outer=5, inner=0, alpha=0.1, eta=0.1)
    with pytest.raises(ValueError, match="n >= 1"):
        HalfspaceToy.sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="method"):
        toy.reference_solution("newton")
    with pytest.raises(ValueError, match="labels"):
        SVMHyperProblem(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]), np.zeros((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="c_min"):
        SVMHyperProblem(np.zeros((2, 2)), np.ones(2), np.zeros((2, 2)), np.ones(2), c_min=1.0,
                        c_max=0.0)
