"""Target-based surrogates: upper bound and tightness, MM descent, gradients, SSO, bad input."""

import numpy as np
import pytest

from lib.optim.target_surrogates import (
    LOGISTIC,
    SQUARED,
    TargetProblem,
    build_surrogate,
    full_batch_mm,
    linear_target_problem,
    minimize_surrogate,
    reference_minimum,
    sgd,
    sso,
    tune_step,
)


def logistic_problem(seed: int, n: int = 60, d: int = 5, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.logspace(-scale, 0, d)
    y = np.where(X @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0, 1.0, -1.0)
    return linear_target_problem(X, y, "logistic")


def squared_problem(seed: int, n: int = 40, d: int = 4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return linear_target_problem(X, X @ rng.normal(size=d) + 0.1 * rng.normal(size=n), SQUARED)


@pytest.mark.parametrize("loss", [LOGISTIC, SQUARED])
def test_loss_derivative_and_smoothness(loss):
    rng = np.random.default_rng(0)
    z = rng.normal(size=50) * 3
    y = np.sign(rng.normal(size=50)) if loss is LOGISTIC else rng.normal(size=50)
    h = 1e-6
    numeric = (loss.value(z + h, y) - loss.value(z - h, y)) / (2 * h)
    np.testing.assert_allclose(loss.derivative(z, y), numeric, rtol=1e-6, atol=1e-9)
    second = (loss.derivative(z + h, y) - loss.derivative(z - h, y)) / (2 * h)
    assert np.all(np.abs(second) <= loss.smoothness + 1e-6)


@pytest.mark.parametrize("regularizer", ["batch", "full"])
@pytest.mark.parametrize("seed", range(3))
def test_surrogate_gradient_matches_finite_differences(seed, regularizer):
    p = logistic_problem(seed)
    rng = np.random.default_rng(seed + 1)
    s = build_surrogate(p, rng.normal(size=p.dim), 0.7, rng.choice(p.n, 8, replace=False),
                        regularizer=regularizer)
    theta = s.theta_t + 0.3 * rng.normal(size=p.dim)
    value, grad = s.value_and_grad(theta)
    assert value == pytest.approx(s.value(theta), rel=1e-12)
    h = 1e-6
    numeric = np.array([(s.value(theta + h * e) - s.value(theta - h * e)) / (2 * h)
                        for e in np.eye(p.dim)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_surrogate_is_tight_and_a_global_upper_bound(seed):
    p = logistic_problem(seed)
    rng = np.random.default_rng(seed + 5)
    theta_t = rng.normal(size=p.dim)
    s = build_surrogate(p, theta_t, 1 / LOGISTIC.smoothness)
    assert s.value(theta_t) == pytest.approx(p.loss(theta_t), abs=1e-13)
    np.testing.assert_allclose(s.value_and_grad(theta_t)[1], p.gradient(theta_t), atol=1e-12)
    for _ in range(200):
        theta = theta_t + rng.normal(size=p.dim) * rng.choice([0.1, 1.0, 10.0])
        assert s.value(theta) >= p.loss(theta) - 1e-12
    # a batch surrogate bounds the batch loss, and is tight there too
    idx = rng.choice(p.n, 10, replace=False)
    sb = build_surrogate(p, theta_t, 4.0, idx)
    batch_loss = lambda t: float(np.mean(LOGISTIC.value(p.design[idx] @ t, p.y[idx])))
    assert sb.value(theta_t) == pytest.approx(batch_loss(theta_t), abs=1e-13)
    for _ in range(100):
        theta = theta_t + rng.normal(size=p.dim) * 3
        assert sb.value(theta) >= batch_loss(theta) - 1e-12


def test_too_large_eta_breaks_the_bound():
    p = squared_problem(0)
    theta_t = np.zeros(p.dim)
    s = build_surrogate(p, theta_t, 10.0)  # the squared loss is 1-smooth: eta must be <= 1
    direction = -p.gradient(theta_t)
    assert s.value(theta_t + direction) < p.loss(theta_t + direction)


@pytest.mark.parametrize("inner", ["armijo", "exact"])
@pytest.mark.parametrize("seed", range(3))
def test_mm_never_increases_the_loss(seed, inner):
    p = logistic_problem(seed, scale=1.5)
    trace = full_batch_mm(p, np.zeros(p.dim), eta=4.0, m=10, n_outer=30, inner=inner,
                          inner_lr=50.0)
    assert np.max(np.diff(trace.losses)) <= 1e-12
    assert trace.losses[-1] < trace.losses[0]
    assert trace.expensive_calls == list(range(31))
    assert trace.inner_steps[-1] == 300


def test_wrong_sign_surrogate_increases_the_loss():
    p = logistic_problem(0)
    trace = full_batch_mm(p, np.zeros(p.dim), eta=4.0, m=5, n_outer=5, sign=-1.0)
    assert trace.losses[-1] > trace.losses[0]


def test_mm_reaches_the_minimum():
    p = squared_problem(1)
    h_star = reference_minimum(p)
    trace = full_batch_mm(p, np.zeros(p.dim), eta=1.0, m=50, n_outer=40, inner_lr=10.0)
    assert trace.losses[-1] - h_star < 1e-8


def test_exact_full_regulariser_step_is_projected_sgd_in_target_space():
    p = logistic_problem(2, n=30, d=4)
    rng = np.random.default_rng(0)
    theta_t, eta = rng.normal(size=p.dim), 0.8
    idx = np.array([1, 4, 9, 17])
    s = build_surrogate(p, theta_t, eta, idx, regularizer="full")
    theta_exact, _ = minimize_surrogate(s, 1, inner="exact")
    # projected SGD in target space: z <- Proj_range(X)(z - eta * (n/b) scatter(grad))
    X, z = p.design, p.design @ theta_t
    step = np.zeros(p.n)
    step[idx] = (p.n / idx.size) * LOGISTIC.derivative(z[idx], p.y[idx])
    target = z - eta * step
    projected = X @ np.linalg.lstsq(X, target, rcond=None)[0]
    np.testing.assert_allclose(X @ theta_exact, projected, atol=1e-10)
    # many Armijo inner steps converge to the same point
    theta_many, _ = minimize_surrogate(s, 3000, inner="armijo", inner_lr=100.0)
    np.testing.assert_allclose(X @ theta_many, projected, atol=1e-5)


def test_sso_and_sgd_count_one_expensive_call_per_step():
    p = logistic_problem(0)
    rng = np.random.default_rng(0)
    t_sso = sso(p, np.zeros(p.dim), eta=1.0, m=7, batch_size=10, n_outer=12, rng=rng)
    assert t_sso.expensive_calls[-1] == 12 and p.expensive_examples == 120
    assert t_sso.inner_steps[-1] == 84
    assert t_sso.losses[-1] < t_sso.losses[0]
    t_sgd = sgd(p, np.zeros(p.dim), lr=1.0, batch_size=10, n_steps=12, rng=rng)
    assert t_sgd.expensive_calls[-1] == 12 and t_sgd.inner_steps[-1] == 0
    assert t_sgd.losses[-1] < t_sgd.losses[0]


def test_sso_with_one_inner_gd_step_is_sgd():
    p = logistic_problem(3)
    eta, inner_lr = 2.0, 0.3
    a = sso(p, np.zeros(p.dim), eta=eta, m=1, batch_size=6, n_outer=10,
            rng=np.random.default_rng(1), inner="gd", inner_lr=inner_lr)
    b = sgd(p, np.zeros(p.dim), lr=inner_lr, batch_size=6, n_steps=10,
            rng=np.random.default_rng(1))
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-13)


def test_tune_step_picks_the_best_and_survives_divergence():
    best, scores = tune_step(lambda s: (s - 2.0) ** 2 if s < 8 else np.inf, [0.5, 1, 2, 4, 8])
    assert best == 2 and scores[8] == np.inf


def test_bad_input():
    p = logistic_problem(0)
    theta = np.zeros(p.dim)
    with pytest.raises(ValueError, match="eta"):
        build_surrogate(p, theta, 0.0)
    with pytest.raises(ValueError, match="regularizer"):
        build_surrogate(p, theta, 1.0, regularizer="none")
    with pytest.raises(ValueError, match="shape"):
        build_surrogate(p, np.zeros(p.dim + 1), 1.0)
    with pytest.raises(ValueError, match="indices"):
        build_surrogate(p, theta, 1.0, np.array([0, p.n]))
    s = build_surrogate(p, theta, 1.0)
    with pytest.raises(ValueError, match="inner steps"):
        minimize_surrogate(s, 0)
    with pytest.raises(ValueError, match="inner must"):
        minimize_surrogate(s, 1, inner="newton")
    with pytest.raises(ValueError, match="batch_size"):
        sso(p, theta, eta=1.0, m=1, batch_size=p.n + 1, n_outer=1, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="step size"):
        sgd(p, theta, lr=-1.0, batch_size=4, n_steps=1, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="outer steps"):
        full_batch_mm(p, theta, eta=1.0, m=1, n_outer=0)
    with pytest.raises(ValueError, match="labels"):
        linear_target_problem(np.ones((3, 2)), np.array([0.0, 1.0, 1.0]), "logistic")
    with pytest.raises(ValueError, match="unknown loss"):
        linear_target_problem(np.ones((3, 2)), np.ones(3), "hinge")
    with pytest.raises(ValueError, match="y must have shape"):
        linear_target_problem(np.ones((3, 2)), np.ones(4), "squared")
    generic = TargetProblem(lambda t, i: np.zeros(i.size), lambda t, i, v: np.zeros(2),
                            np.ones(3), "squared", 2)
    with pytest.raises(ValueError, match="exact inner solve"):
        minimize_surrogate(build_surrogate(generic, np.zeros(2), 1.0), 1, inner="exact")
    with pytest.raises(ValueError, match="grid"):
        tune_step(lambda s: s, [])
