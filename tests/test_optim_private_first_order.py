"""Private SpiderBoost, DP-GD and the non-convex GLM objective they run on."""

import numpy as np
import pytest
from scipy.optimize import check_grad

from lib.losses.smooth_nonconvex_glm import SmoothNonconvexGLM, logistic_glm_data
from lib.optim.private_first_order import (
    dp_gd,
    dp_gd_schedule,
    gd,
    private_spiderboost,
    spiderboost_schedule,
)
from lib.privacy.zcdp import rho_for


@pytest.fixture
def problem():
    X, y = logistic_glm_data(300, 5, np.random.default_rng(0))
    return SmoothNonconvexGLM(X, y, lam=0.1)


def test_data_lie_in_the_unit_ball():
    X, y = logistic_glm_data(500, 7, np.random.default_rng(1))
    assert np.linalg.norm(X, axis=1).max() <= 1.0
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_gradient_matches_finite_differences(problem):
    w = np.random.default_rng(2).standard_normal(problem.d)
    err = check_grad(problem.value, problem.gradient, w)
    assert err < 1e-6
    per_sample = problem.sample_gradients(w).mean(axis=0)
    np.testing.assert_allclose(per_sample, problem.data_gradient(w), atol=1e-14)


def test_objective_is_nonconvex_and_smoothness_constant(problem):
    assert problem.beta == pytest.approx(0.25 + 0.2)
    # the penalty's curvature is negative at |w| = 1
    h = lambda w: (problem.penalty_gradient(np.array([w + 1e-6])) -  # noqa: E731
                   problem.penalty_gradient(np.array([w - 1e-6])))[0] / 2e-6
    assert h(1.0) < 0 < h(0.0)
    assert problem.value(np.zeros(problem.d)) == pytest.approx(np.log(2))


def test_schedules_spend_the_budget_exactly(problem):
    rho = rho_for(1.0, 1e-6)
    for schedule, run in ((dp_gd_schedule(problem, rho), dp_gd),
                          (spiderboost_schedule(problem, rho), private_spiderboost)):
        out = run(problem, np.zeros((3, problem.d)), schedule, np.random.default_rng(0))
        assert out.ledger.rho == pytest.approx(rho, rel=1e-12)
        assert len(out.ledger.kinds) == schedule.T
        assert out.grad_norms.shape == (schedule.T + 1, 3)


def test_spiderboost_schedule_absorbs_and_counts(problem):
    rho = rho_for(2.0, 1e-6)
    s = spiderboost_schedule(problem, rho)
    assert s.absorbs and 1 <= s.q <= s.T
    assert s.n_refresh + s.n_difference == s.T
    out = private_spiderboost(problem, np.zeros((2, problem.d)), s, np.random.default_rng(1))
    assert out.ledger.count("refresh") == s.n_refresh
    diff = out.step_lengths > 0
    np.testing.assert_allclose(out.difference_noise_sd[diff] / out.step_lengths[diff], s.sigma2)


def test_spiderboost_without_noise_is_gradient_descent(problem):
    s = spiderboost_schedule(problem, rho_for(1.0, 1e-6))
    W0 = np.full((1, problem.d), 0.3)
    # the ledger rejects sigma = 0, so compare the trajectories with a tiny noise instead
    tiny = type(s)(s.method, T=s.T, eta=s.eta, sigma1=1e-150, q=s.q, sigma2=1e-150)
    out = private_spiderboost(problem, W0, tiny, np.random.default_rng(0))
    np.testing.assert_allclose(out.grad_norms, gd(problem, W0, s.T, s.eta), rtol=1e-9)


def test_more_samples_give_smaller_gradients():
    rho = rho_for(2.0, 1e-6)
    rms = []
    for n in (300, 3000):
        X, y = logistic_glm_data(n, 5, np.random.default_rng(n))
        p = SmoothNonconvexGLM(X, y)
        out = private_spiderboost(p, np.zeros((4, 5)), spiderboost_schedule(p, rho),
                                  np.random.default_rng(0))
        rms.append(np.median(np.sqrt(out.mean_sq_grad)))
    assert rms[1] < rms[0]


@pytest.mark.parametrize(
    "call",
    [
        lambda p: SmoothNonconvexGLM(p.X * 2.0, p.y),
        lambda p: SmoothNonconvexGLM(p.X, p.y[:-1]),
        lambda p: SmoothNonconvexGLM(p.X, p.y * 0.5),
        lambda p: SmoothNonconvexGLM(p.X, p.y, lam=-1.0),
        lambda p: dp_gd_schedule(p, 0.0),
        lambda p: dp_gd_schedule(p, 0.1, T=0),
        lambda p: spiderboost_schedule(p, 0.1, split=1.0),
        lambda p: spiderboost_schedule(p, -0.1),
        lambda p: dp_gd(p, np.zeros((2, p.d + 1)), dp_gd_schedule(p, 0.1),
                        np.random.default_rng(0)),
        lambda p: gd(p, np.zeros((1, p.d)), 0, 0.1),
        lambda p: logistic_glm_data(0, 3, np.random.default_rng(0)),
    ],
)
def test_bad_input_raises(problem, call):
    with pytest.raises(ValueError):
        call(problem)
