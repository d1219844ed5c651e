"""The LV-HBA paper's toy, the AiPOD and GAM baselines, and the proximal Lagrangian gradient."""

import numpy as np
import pytest
from scipy import optimize

from lib.optim.bilevel import (
    HalfspaceToy,
    SVMHyperProblem,
    lv_hba,
    proximal_lagrangian_value,
)
from lib.optim.coupled_equality_toy import CoupledEqualityToy
from lib.optim.gradient_approximation_bilevel import (
    InequalityConstrainedBilevel,
    gam,
    gam_gradient,
)
from lib.optim.implicit_projected_bilevel import (
    EqualityConstrainedBilevel,
    aipod,
    implicit_gradient,
)


def numeric_grad(fun, v, h=1e-6):
    return np.array([(fun(v + h * e) - fun(v - h * e)) / (2 * h) for e in np.eye(v.size)])


# --- the paper's toy ------------------------------------------------------------------------


def test_equality_toy_oracles_match_finite_differences():
    toy = CoupledEqualityToy(4)
    rng = np.random.default_rng(0)
    x, th, lam = rng.normal(size=4), rng.normal(size=8), np.array([0.3])
    Fx, Fy = toy.upper_grad(x, th)
    np.testing.assert_allclose(Fx, numeric_grad(lambda v: toy.upper_value(v, th), x), atol=1e-6)
    np.testing.assert_allclose(Fy, numeric_grad(lambda v: toy.upper_value(x, v), th), atol=1e-6)
    fx, ft = toy.lower_grad(x, th)
    np.testing.assert_allclose(fx, numeric_grad(lambda v: toy.lower_value(v, th), x), atol=1e-6)
    np.testing.assert_allclose(ft, numeric_grad(lambda v: toy.lower_value(x, v), th), atol=1e-6)
    gx, gt = toy.constraint_vjp(x, th, lam)
    lag = lambda xx, tt: float(lam @ toy.constraint(xx, tt))  # noqa: E731
    np.testing.assert_allclose(gx, numeric_grad(lambda v: lag(v, th), x), atol=1e-6)
    np.testing.assert_allclose(gt, numeric_grad(lambda v: lag(x, v), th), atol=1e-6)
    Hyy, Hxy = toy.lower_hessians(x, th)
    np.testing.assert_allclose(Hyy, numeric_grad(lambda v: toy.lower_grad(x, v)[1], th).T,
                               atol=1e-6)
    np.testing.assert_allclose(Hxy, numeric_grad(lambda v: toy.lower_grad(x, v)[0], th).T,
                               atol=1e-6)


def test_equality_toy_known_solution_against_scipy():
    """x* = -0.3, y* = (0.7, -0.4): LL-optimal, and optimal for the optimistic problem."""
    n = 5
    toy = CoupledEqualityToy(n)
    xs, ys = toy.solution()
    assert toy.lower_gap(xs, ys) < 1e-12
    assert abs(toy.constraint(xs, ys)[0]) < 1e-12

    # over the LL solution set (y1 = x + 1, 1^T y2 = -2 1^T x - n): min over (x, y2) by SLSQP
    def obj(v):
        x, y2 = v[:n], v[n:]
        return toy.upper_value(x, np.r_[x + 1.0, y2])

    res = optimize.minimize(
        obj, np.zeros(2 * n), method="SLSQP", options={"ftol": 1e-14},
        constraints=[{"type": "eq", "fun": lambda v: v[n:].sum() + 2 * v[:n].sum() + n}])
    np.testing.assert_allclose(res.x[:n], xs, atol=1e-6)
    np.testing.assert_allclose(res.x[n:], ys[n:], atol=1e-6)


def test_equality_toy_start_projection_and_errors():
    toy = CoupledEqualityToy(6)
    x0, y0, t0 = toy.official_start()
    np.testing.assert_allclose(x0, -20.0)
    np.testing.assert_allclose(y0, 10.0)
    assert abs(toy.constraint(x0, y0)[0]) < 1e-9 and abs(toy.constraint(x0, t0)[0]) < 1e-9
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 6)), rng.normal(size=(3, 12))
    px, py = toy.project_upper(x, y)
    np.testing.assert_allclose(toy.constraint(px, py), 0.0, atol=1e-12)
    np.testing.assert_allclose(toy.project_upper(px, py)[1], py)
    with pytest.raises(ValueError, match="positive integer"):
        CoupledEqualityToy(0)


def test_lv_hba_with_equality_constraint_converges_on_paper_toy():
    toy = CoupledEqualityToy(5)
    x0, y0, t0 = toy.official_start()
    tr = lv_hba(toy.problem(), x0, y0, iterations=20_000, alpha=0.008, beta=0.02, eta=0.01,
                gamma1=1.0, gamma2=1.0, c0=0.3, p=0.45, equality=True, theta0=t0,
                lam0=np.ones(1), z0=-np.ones(1), monitor=toy.metrics())
    assert tr.at("rel_error", 20_000) < 0.05
    assert tr.lam[0] < 0  # the multiplier of g = 0 settles near -1, outside [0, U]
    assert len(tr.seconds) == len(tr.iterations) and tr.seconds[-1] <= tr.wall_seconds + 1e-9


# --- AiPOD ----------------------------------------------------------------------------------


def strongly_convex_equality_problem(seed=0, n=4, d=6, m=2):
    """The LLSC toy's form: F = sin(c^T x + e^T y) + log(|x + y|^2 + 1), f = 1/2 |y - C x|^2."""
    rng = np.random.default_rng(seed)
    A, H, C = rng.normal(size=(m, d)), rng.normal(size=(m, n)), rng.normal(size=(d, n)) / 2
    cv, ev, c = rng.normal(size=n), rng.normal(size=d), rng.normal(size=m)
    assert n <= d

    def F(x, y):
        return np.sin(cv @ x + ev @ y) + np.log(((x - y[:n]) ** 2).sum() + 1)

    def upper_grad(x, y):
        s = np.cos(cv @ x + ev @ y)
        r = x - y[:n]
        q = 2 * r / ((r**2).sum() + 1)
        gy = s * ev
        gy[:n] -= q
        return s * cv + q, gy

    def lower_grad(x, y):
        r = y - C @ x
        return -C.T @ r, r

    def lower_hessians(x, y):
        return np.eye(d), -C.T

    problem = EqualityConstrainedBilevel(upper_grad, lower_grad, lower_hessians, A, H, c)

    def y_star(x):  # projection of C x onto {A y = c - H x}
        v = C @ x
        return v - np.linalg.pinv(A) @ (A @ v + H @ x - c)

    return problem, F, y_star, rng


def test_implicit_gradient_matches_finite_differences():
    problem, F, y_star, rng = strongly_convex_equality_problem()
    x = rng.normal(size=4)
    Phi = lambda v: F(v, y_star(v))  # noqa: E731
    np.testing.assert_allclose(implicit_gradient(problem, x, y_star(x)), numeric_grad(Phi, x),
                               atol=1e-6)


def test_aipod_reaches_a_stationary_point():
    problem, F, y_star, rng = strongly_convex_equality_problem(seed=2)
    x0 = rng.normal(size=4)
    tr = aipod(problem, x0, np.zeros(6), outer=400, inner=20, upper_steps=1, alpha=0.05,
               beta=0.5, monitor=lambda x, y: {"F": F(x, y_star(x))})
    g = implicit_gradient(problem, tr.x, y_star(tr.x))
    g0 = implicit_gradient(problem, x0, y_star(x0))
    assert np.linalg.norm(g) < 1e-3 * max(1.0, np.linalg.norm(g0))
    assert tr.series("F")[-1] < tr.series("F")[0]
    assert np.linalg.norm(tr.y - y_star(tr.x)) < 1e-4  # y tracks y*(x); x moved after it


def test_aipod_stalls_on_the_paper_toy_from_a_generic_start():
    toy = CoupledEqualityToy(5)
    A, H, c = toy.equality_matrices()
    problem = EqualityConstrainedBilevel(toy.upper_grad, toy.lower_grad, toy.lower_hessians,
                                         A, H, c)
    x0, y0, _ = toy.official_start()
    good = aipod(problem, x0, y0, outer=200, inner=5, upper_steps=2, alpha=0.1, beta=0.5,
                 constant_hessian=True, monitor=toy.metrics())
    assert good.series("rel_error")[-1] < 1e-8
    rng = np.random.default_rng(0)
    bad = aipod(problem, x0 + rng.normal(size=5), y0 + rng.normal(size=10), outer=200, inner=5,
                upper_steps=2, alpha=0.1, beta=0.5, monitor=toy.metrics())
    assert bad.series("ll_gap")[-1] < 1e-8 and bad.series("rel_error")[-1] > 0.1


# --- GAM ------------------------------------------------------------------------------------


def halfspace_gam_problem(toy: HalfspaceToy) -> InequalityConstrainedBilevel:
    a, h = toy.a[0], toy.h[0]
    n = a.size

    def lower_solve(x, warm):
        theta = toy.lower_solution(x[None])[0]
        lam = max(0.0, (a + h) @ x - toy.b) / (a @ a)
        return theta, np.array([lam])

    return InequalityConstrainedBilevel(
        lower_solve=lower_solve,
        upper_grad=lambda x, t: tuple(v[0] for v in toy.upper_grad(x[None], t[None])),
        lagrangian_hessians=lambda x, t, lam: (np.eye(n), -np.eye(n)),
        constraint_jacobians=lambda x, t: (a[None], h[None]),
    )


def test_gam_gradient_matches_finite_differences_on_halfspace_toy():
    toy = HalfspaceToy.sample(4, np.random.default_rng(3), batch=1, activity=1.0)
    problem = halfspace_gam_problem(toy)
    a, h = toy.a[0], toy.h[0]
    rng = np.random.default_rng(4)
    for active in (True, False):
        x = rng.normal(size=4)
        shift = ((a + h) @ x - toy.b) - (1.0 if active else -1.0)
        x = x - shift * (a + h) / ((a + h) @ (a + h))
        theta, lam = problem.lower_solve(x, None)
        assert (lam[0] > 0) == active
        grad, singular = gam_gradient(problem, x, theta, lam)
        Phi = lambda v: toy.reduced_value(v[None])[0]  # noqa: E731
        np.testing.assert_allclose(grad, numeric_grad(Phi, x), atol=1e-6)
        assert not singular


def test_gam_gradient_on_svm_matches_finite_differences_and_dense_solve():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(90, 4))
    y = np.sign(Z @ np.ones(4) + 0.7 * rng.normal(size=90))
    svm = SVMHyperProblem(Z[:70], y[:70], Z[70:], y[70:])
    problem = InequalityConstrainedBilevel(svm.lower_solve, svm.upper_grad,
                                           svm.lagrangian_hessians, svm.constraint_jacobians,
                                           svm.project_c)
    c = 0.5 * rng.normal(size=70)
    theta, lam = svm.lower_solve(c)
    grad, singular = gam_gradient(problem, c, theta, lam)  # sparse path: 5 + 70 + |A| > 64
    assert not singular
    Phi = lambda v: svm.upper_value(v, svm.lower_solution(v))  # noqa: E731
    for i in rng.choice(np.flatnonzero(lam > 1e-3), size=4, replace=False):
        e = np.zeros(70)
        e[i] = 1e-5
        fd = (Phi(c + e) - Phi(c - e)) / 2e-5
        assert abs(grad[i] - fd) < 1e-4 * max(1.0, abs(fd))
    assert np.all(grad[lam <= 1e-5] == 0.0)


def test_gam_decreases_the_reduced_objective_and_bad_inputs():
    toy = HalfspaceToy.sample(4, np.random.default_rng(5), batch=1, activity=1.0)
    problem = halfspace_gam_problem(toy)
    x_star, _ = toy.reference_solution("kkt")
    tr = gam(problem, np.zeros(4), iterations=300, alpha=0.5,
             monitor=lambda x, t: {"err": np.linalg.norm(x - x_star[0])})
    assert tr.series("err")[-1] < 1e-6
    assert tr.series("singular")[-1] == 0
    with pytest.raises(ValueError, match="iterations"):
        gam(problem, np.zeros(4), iterations=0, alpha=0.1)
    with pytest.raises(ValueError, match="alpha"):
        gam(problem, np.zeros(4), iterations=3, alpha=0.0)
    with pytest.raises(ValueError, match="active_tol"):
        gam_gradient(problem, np.zeros(4), np.zeros(4), np.zeros(1), active_tol=-1.0)


def test_aipod_bad_inputs():
    problem, *_ = strongly_convex_equality_problem()
    with pytest.raises(ValueError, match="must be >= 1"):
        aipod(problem, np.zeros(4), np.zeros(6), outer=0, inner=1, upper_steps=1, alpha=0.1,
              beta=0.1)
    with pytest.raises(ValueError, match="positive"):
        aipod(problem, np.zeros(4), np.zeros(6), outer=1, inner=1, upper_steps=1, alpha=-0.1,
              beta=0.1)
    with pytest.raises(ValueError, match="same number of rows"):
        EqualityConstrainedBilevel(problem.upper_grad, problem.lower_grad, problem.lower_hessians,
                                   np.ones((2, 6)), np.ones((3, 4)), np.zeros(2))


# --- the proximal Lagrangian value function -------------------------------------------------


def test_proximal_lagrangian_gradient_matches_finite_differences():
    toy = HalfspaceToy.sample(3, np.random.default_rng(6), batch=1)
    rng = np.random.default_rng(7)
    x, y, z = rng.normal(size=(1, 3)), rng.normal(size=(1, 3)), np.array([[5.0]])
    kw = dict(gamma1=1.5, gamma2=1.5, eta=0.2, steps=4000)
    _, grads = proximal_lagrangian_value(toy.problem(), x, y, z, **kw)
    assert grads["lam"][0, 0] > 0
    v = lambda xx, yy, zz: proximal_lagrangian_value(  # noqa: E731
        toy.problem(), xx[None], yy[None], zz[None], **kw)[0][0]
    np.testing.assert_allclose(grads["x"][0], numeric_grad(lambda u: v(u, y[0], z[0]), x[0]),
                               atol=1e-6)
    np.testing.assert_allclose(grads["y"][0], numeric_grad(lambda u: v(x[0], u, z[0]), y[0]),
                               atol=1e-6)
    np.testing.assert_allclose(grads["z"][0], numeric_grad(lambda u: v(x[0], y[0], u), z[0]),
                               atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        proximal_lagrangian_value(toy.problem(), x, y, z, gamma1=1.0, gamma2=1.0, eta=0.1,
                                  steps=0)
    with pytest.raises(ValueError, match="gamma1"):
        proximal_lagrangian_value(toy.problem(), x, y, z, gamma1=0.0, gamma2=1.0, eta=0.1)
