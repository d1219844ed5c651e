"""SEA streams, regret bookkeeping, optimistic OMD and its baselines."""

import numpy as np
import pytest
from scipy.optimize import minimize

from lib.online.optimistic_omd import (
    follow_the_leader,
    ogd_adagrad,
    ogd_strongly_convex,
    optimistic_omd,
    regret_certificate,
    sea_convex_bound,
    sea_strongly_convex_rate,
)
from lib.online.regret import (
    constant_player,
    dynamic_regret_curve,
    hindsight_min_curve,
    project_ball,
    regret_curve,
)
from lib.online.streams import constant_means, sea_stream, switching_means


def small_stream(kind="linear", seed=0, T=40, d=3, sigma=0.3, n=2, lam=2.0):
    rng = np.random.default_rng(seed)
    means = np.stack([switching_means(T, d, 3, rng, norm=0.6) for _ in range(n)])
    return sea_stream(means, sigma, rng, kind=kind, lam=lam)


@pytest.mark.parametrize("kind", ["linear", "quadratic"])
def test_gradient_matches_finite_differences(kind):
    s = small_stream(kind, T=5, n=1)
    rng = np.random.default_rng(1)
    x = project_ball(rng.normal(size=(1, 5, 3)) * 0.3, 1.0)
    t, h = 2, 1e-6
    numeric = []
    for e in np.eye(3):
        plus, minus = x.copy(), x.copy()
        plus[0, t] += h * e
        minus[0, t] -= h * e
        numeric.append((s.losses(plus)[0, t] - s.losses(minus)[0, t]) / (2 * h))
    np.testing.assert_allclose(s.gradient(t, x[:, t])[0], numeric, rtol=1e-6, atol=1e-8)


def test_sea_quantities_have_their_closed_forms():
    rng = np.random.default_rng(0)
    T, d, S, norm = 50, 4, 5, 0.7
    means = switching_means(T, d, S, rng, norm=norm)
    s = sea_stream(means, np.array([[0.0], [0.2], [0.5]]), rng)
    # every draw of sphere noise has norm s_t: realised and expected variances coincide
    np.testing.assert_allclose(s.sigma2_total, T * np.array([0.0, 0.04, 0.25]))
    np.testing.assert_allclose(s.realised_noise2, s.sigma2_total)
    np.testing.assert_allclose(s.Sigma2_total, norm**2 + 4 * norm**2 * S)
    np.testing.assert_allclose(s.Sigma2_max, 4 * norm**2)
    assert np.count_nonzero(np.diff(means[:, 0])) == S


def test_quadratic_variations_match_brute_force_suprema():
    rng = np.random.default_rng(2)
    lam, T, d = 1.5, 6, 3
    s = sea_stream(switching_means(T, d, 2, rng, norm=0.5), 0.4, rng, kind="quadratic", lam=lam)
    xs = project_ball(rng.normal(size=(4000, d)), 1.0)
    xs = np.concatenate([xs, xs / np.linalg.norm(xs, axis=1, keepdims=True)])
    mu, c = s.means[0], s.centres[0]
    for t in range(T):
        noise = np.linalg.norm(lam * (xs - c[t]) - lam * (xs - mu[t]), axis=1) ** 2
        assert noise.max() == pytest.approx(s.sigma2[0, t], rel=1e-9)
        prev = np.zeros_like(xs) if t == 0 else lam * (xs - mu[t - 1])
        drift = np.linalg.norm(lam * (xs - mu[t]) - prev, axis=1) ** 2
        assert drift.max() <= s.Sigma2[0, t] * (1 + 1e-12)
        assert drift.max() >= s.Sigma2[0, t] * 0.98  # the sup is attained on the sphere


@pytest.mark.parametrize("kind", ["linear", "quadratic"])
def test_hindsight_minimum_matches_a_solver(kind):
    s = small_stream(kind, T=12, n=1)
    for t in (0, 5, 11):
        def total(x, t=t):
            plays = np.broadcast_to(x, s.means.shape).copy()
            return s.losses(plays)[0, : t + 1].sum()

        res = minimize(total, np.zeros(3), method="SLSQP",
                       constraints={"type": "ineq", "fun": lambda x: 1 - x @ x},
                       options={"ftol": 1e-12, "maxiter": 500})
        assert hindsight_min_curve(s)[0, t] == pytest.approx(res.fun, abs=1e-6)
        assert hindsight_min_curve(s)[0, t] <= res.fun + 1e-9


@pytest.mark.parametrize("kind", ["linear", "quadratic"])
def test_certificate_bounds_the_regret_of_every_prefix(kind):
    for seed in range(3):
        s = small_stream(kind, seed=seed, T=300, n=3, sigma=0.5)
        for hint in ("last", "zero"):
            run = optimistic_omd(s, hint=hint)
            assert np.all(regret_curve(s, run.x) <= regret_certificate(run, s.diameter) + 1e-9)


def test_sea_bound_holds_on_average_and_oomd_is_adaptive():
    rng = np.random.default_rng(5)
    T, d, n = 2000, 3, 16
    means = np.stack([constant_means(T, d, rng) for _ in range(n)])
    for sigma in (0.0, 0.3):
        s = sea_stream(means, sigma, rng)
        regret = regret_curve(s, optimistic_omd(s).x)
        assert regret[:, -1].mean() <= sea_convex_bound(s)[:, -1].mean()
    # with sigma = 0 and a fixed mean the hint is exact from round 2 on: regret stays O(1)
    s0 = sea_stream(means, 0.0, rng)
    r0 = regret_curve(s0, optimistic_omd(s0).x)
    assert r0.max() < 3 and abs(r0[:, -1] - r0[:, 200]).max() < 1e-6


def test_oomd_first_rounds_by_hand():
    means = np.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    s = sea_stream(means, 0.0, np.random.default_rng(0))
    run = optimistic_omd(s, delta=1.0)
    D = 2.0
    # round 1: M_1 = 0 so x_1 = xhat_1 = 0; eta_1 = D / sqrt(delta); xhat_2 = Proj(-eta_1 g_1)
    np.testing.assert_allclose(run.x[0, 0], [0, 0])
    assert run.eta[0, 0] == pytest.approx(D)
    xhat2 = np.array([-1.0, 0.0])  # -2 e_1 projected onto the unit ball
    # round 2: eta_2 = D / sqrt(1 + ||g_1 - 0||^2); x_2 = Proj(xhat_2 - eta_2 M_2), M_2 = g_1
    eta2 = D / np.sqrt(2.0)
    assert run.eta[0, 1] == pytest.approx(eta2)
    np.testing.assert_allclose(run.x[0, 1], project_ball(xhat2 - eta2 * np.array([1.0, 0]), 1))
    assert run.hint_error2[0, 1] == pytest.approx(2.0)  # ||e_2 - e_1||^2


def test_zero_hint_is_plain_omd_and_baselines_behave():
    s = small_stream("quadratic", T=60, sigma=0.0, lam=1.0)
    lazy = optimistic_omd(s, hint="zero")
    grads = s.lam * (lazy.x - s.centres)
    np.testing.assert_allclose(lazy.hint_error2, (grads**2).sum(-1))  # M_t = 0
    # OGD with eta_1 = 1 / lam jumps to c_1 in one step on a noiseless quadratic
    ogd = ogd_strongly_convex(s)
    np.testing.assert_allclose(ogd.x[:, 1], s.centres[:, 0])
    # FTL on quadratics plays the running mean of the centres
    ftl = follow_the_leader(s)
    np.testing.assert_allclose(ftl.x[:, 5], s.centres[:, :5].mean(1))
    ada = ogd_adagrad(s)
    assert np.all(np.linalg.norm(ada.x, axis=-1) <= 1 + 1e-12)
    sc = optimistic_omd(s, schedule="strongly_convex")
    assert np.all(np.diff(sc.eta, axis=1) <= 0)
    assert sc.eta[0, -1] == pytest.approx(2 / 60)


def test_constant_player_has_linear_regret_and_rates():
    rng = np.random.default_rng(4)
    s = sea_stream(constant_means(500, 3, rng), 0.1, rng, n=2)
    zero = regret_curve(s, constant_player(s))
    assert zero[:, -1].min() > 0.9 * 500  # f_t(0) = 0, best fixed point ~ -||mu|| T
    q = small_stream("quadratic", T=200, sigma=0.0)
    assert np.all(sea_strongly_convex_rate(q) > 0)
    # noiseless: f_t = F_t and u_t minimises it, so every round's dynamic-regret term is >= 0
    assert np.all(np.diff(dynamic_regret_curve(q, optimistic_omd(q).x), axis=1) >= -1e-12)


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    means = constant_means(10, 2, rng)
    with pytest.raises(ValueError, match="kind"):
        sea_stream(means, 0.1, rng, kind="cubic")
    with pytest.raises(ValueError, match="non-negative"):
        sea_stream(means, -0.1, rng)
    with pytest.raises(ValueError, match="broadcast"):
        sea_stream(means, np.ones((3, 7)), rng)
    with pytest.raises(ValueError, match="shape"):
        sea_stream(np.ones(5), 0.1, rng)
    with pytest.raises(ValueError, match="radius"):
        sea_stream(means, 0.1, rng, radius=0.0)
    with pytest.raises(ValueError, match="n_switches"):
        switching_means(10, 2, 10, rng)
    with pytest.raises(ValueError, match="T >= 1"):
        constant_means(0, 2, rng)
    s = sea_stream(means, 0.1, rng)
    with pytest.raises(ValueError, match="hint"):
        optimistic_omd(s, hint="future")
    with pytest.raises(ValueError, match="schedule"):
        optimistic_omd(s, schedule="adam")
    with pytest.raises(ValueError, match="lam"):
        optimistic_omd(s, schedule="strongly_convex")
    with pytest.raises(ValueError, match="delta"):
        optimistic_omd(s, delta=0.0)
    with pytest.raises(ValueError, match="smoothness"):
        optimistic_omd(s, smoothness=-1.0)
    with pytest.raises(ValueError, match="decision set"):
        regret_curve(s, np.full(s.means.shape, 2.0))
    with pytest.raises(ValueError, match="shape"):
        regret_curve(s, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="linear"):
        sea_convex_bound(sea_stream(means, 0.1, rng, kind="quadratic"))
    with pytest.raises(ValueError, match="quadratic"):
        sea_strongly_convex_rate(s)
    with pytest.raises(ValueError, match="non-increasing"):
        regret_certificate(follow_the_leader(s), 2.0)
    with pytest.raises(ValueError, match="diameter"):
        regret_certificate(optimistic_omd(s), 0.0)
    with pytest.raises(ValueError, match="decision set"):
        constant_player(s, np.array([3.0, 0.0]))
