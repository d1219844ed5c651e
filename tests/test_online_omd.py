"""SEA streams, regret bookkeeping, optimistic OMD and its baselines."""

import math

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


# ---- replicates are independent; curved streams; online Newton step; ensemble ------------------
from dataclasses import replace  # noqa: E402

from lib.online.ensemble import optimistic_ensemble, step_grid  # noqa: E402
from lib.online.newton_step import ons_gamma, optimistic_ons  # noqa: E402
from lib.online.projection import project_ball_eigen, project_ball_metric  # noqa: E402
from lib.online.regret import expected_minimisers, path_length  # noqa: E402

H = np.array([1.0, 0.3, 0.05])


def stack(*streams):
    """One batch holding the replicates of several streams (same kind, T, d)."""
    first = streams[0]
    return replace(first, means=np.concatenate([s.means for s in streams]),
                   scales=np.concatenate([s.scales for s in streams]),
                   directions=np.concatenate([s.directions for s in streams]))


LEARNERS = {
    "oomd": lambda s: optimistic_omd(s),
    "oomd-sc": lambda s: optimistic_omd(s, schedule="strongly_convex"),
    "adagrad": ogd_adagrad,
    "ogd-sc": ogd_strongly_convex,
    "oons": lambda s: optimistic_ons(s),
    "ons": lambda s: optimistic_ons(s, hint="zero"),
    "ensemble": optimistic_ensemble,
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_a_replicate_plays_the_same_alone_and_batched(name):
    kind = "linear" if name in ("oomd", "adagrad", "ensemble") else "quadratic"
    rng = np.random.default_rng(3)
    T, d = 300, 3
    extra = {} if kind == "linear" else {"curvature": H}
    quiet = sea_stream(constant_means(T, d, rng, norm=0.5), 0.05, rng, kind=kind, **extra)
    loud = sea_stream(switching_means(T, d, 7, rng), 1.0, rng, kind=kind, **extra)
    loud = replace(loud, means=3 * loud.means)  # much larger gradients next door
    alone = LEARNERS[name](quiet).x[0]
    batched = LEARNERS[name](stack(quiet, loud, quiet)).x
    np.testing.assert_allclose(batched[0], alone, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batched[2], alone, rtol=0, atol=1e-12)
    assert quiet.gradient_bound.shape == (1,)


def test_metric_projection_matches_a_solver():
    rng = np.random.default_rng(0)
    for k in range(12):
        d = 4
        A = rng.normal(size=(d, d))
        U = A @ A.T + 0.01 * np.eye(d) if k % 3 else np.diag(rng.uniform(0, 2, d) * (k % 2))
        if k % 3 == 0:
            U[0, 0] = 1.0
        y = rng.normal(size=d) * 2
        x = project_ball_metric(y, U, 1.0)
        res = minimize(lambda v, U=U, y=y: (v - y) @ U @ (v - y), np.zeros(d), method="SLSQP",
                       constraints={"type": "ineq", "fun": lambda v: 1 - v @ v},
                       options={"ftol": 1e-14, "maxiter": 500})
        assert np.linalg.norm(x) <= 1 + 1e-12
        assert (x - y) @ U @ (x - y) <= res.fun + 1e-8
    # the diagonal form agrees with the full one; inside the ball nothing moves
    y = rng.normal(size=(5, 3)) * 3
    h = np.array([2.0, 0.5, 0.1])
    np.testing.assert_allclose(project_ball_metric(y, h, 1.0, diagonal=True),
                               project_ball_metric(y, np.diag(h), 1.0), atol=1e-10)
    inside = np.array([0.2, -0.1, 0.3])
    np.testing.assert_allclose(project_ball_metric(inside, np.diag(h), 1.0), inside)
    # the identity metric is the Euclidean projection
    np.testing.assert_allclose(project_ball_metric(y, np.eye(3), 1.0), project_ball(y, 1.0),
                               atol=1e-10)


def test_curved_quadratic_stream():
    rng = np.random.default_rng(6)
    T, d = 8, 3
    s = sea_stream(switching_means(T, d, 2, rng, norm=0.5), 0.4, rng, kind="quadratic",
                   curvature=H)
    x = project_ball(rng.normal(size=(1, T, d)), 1.0)
    # gradient by finite differences
    t, eps = 3, 1e-6
    num = [(s.losses(x + eps * e * (np.arange(T) == t)[None, :, None])[0, t]
            - s.losses(x - eps * e * (np.arange(T) == t)[None, :, None])[0, t]) / (2 * eps)
           for e in np.eye(d)]
    np.testing.assert_allclose(s.gradient(t, x[:, t])[0], num, rtol=1e-6, atol=1e-8)
    # sigma_t^2 is the expectation over sphere noise: s^2 sum h^2 / d
    u = rng.standard_normal((200_000, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    assert s.sigma2[0, 0] == pytest.approx(0.16 * ((H * u) ** 2).sum(1).mean(), rel=0.01)
    assert s.smoothness == 1.0 and s.strong_convexity == 0.05
    # exp-concavity: alpha (x - c)^T H (x - c) <= 1 everywhere on the ball
    pts = project_ball(rng.normal(size=(4000, d)) * 2, 1.0)
    worst = max((H * (pts - c) ** 2).sum(1).max() for c in s.centres[0])
    assert s.exp_concavity[0] * worst <= 1 + 1e-12
    # hindsight minimum with curvature against a solver
    for t in (0, 7):
        def total(v, t=t):
            return s.losses(np.broadcast_to(v, s.means.shape).copy())[0, : t + 1].sum()
        res = minimize(total, np.zeros(d), method="SLSQP",
                       constraints={"type": "ineq", "fun": lambda v: 1 - v @ v},
                       options={"ftol": 1e-13, "maxiter": 500})
        assert hindsight_min_curve(s)[0, t] == pytest.approx(res.fun, abs=1e-6)
    # the per-round optimum of F_t minimises F_t on the ball
    u_t = expected_minimisers(s)[0, 0]
    F = lambda v: 0.5 * (H * (v - s.means[0, 0]) ** 2).sum()  # noqa: E731
    assert all(F(u_t) <= F(p) + 1e-12 for p in pts[:500])


def test_path_length_of_switching_means():
    rng = np.random.default_rng(1)
    s = sea_stream(switching_means(100, 3, 5, rng), 0.0, rng)
    assert path_length(s)[0] == pytest.approx(2.0 * 5)  # -a to a on the unit sphere: 2 each


def test_online_newton_step_by_hand_and_regret():
    means = np.array([[[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
    s = sea_stream(means, 0.0, np.random.default_rng(0), kind="quadratic",
                   curvature=np.array([1.0, 0.5]))
    gamma = ons_gamma(s)
    G, D = s.gradient_bound[0], s.diameter
    assert gamma[0] == pytest.approx(0.5 * min(1 / (4 * G * D), s.exp_concavity[0]))
    run = optimistic_ons(s)
    delta = 1 + gamma[0] * G**2
    # round 1: M = 0, xhat = 0 so x_1 = 0; g_1 = -H c_1 = (-2, 0); xhat_2 = Proj_U(-g_1 / delta)
    np.testing.assert_allclose(run.x[0, 0], [0, 0])
    g1 = np.array([-2.0, 0.0])
    xhat2 = project_ball_metric(-g1 / delta, delta * np.eye(2), 1.0)
    U2 = delta * np.eye(2) + 0.5 * gamma[0] * np.outer(g1, g1)
    y = xhat2 - np.linalg.solve(U2, g1)  # round 2 hint M_2 = g_1
    np.testing.assert_allclose(run.x[0, 1], project_ball_metric(y, U2, 1.0), atol=1e-12)
    plain = optimistic_ons(s, hint="zero")
    np.testing.assert_allclose(plain.x[0, 1], xhat2, atol=1e-12)  # x_t = xhat_t without hint
    # noiseless fixed curved quadratic: the regret stops growing
    rng = np.random.default_rng(2)
    q = sea_stream(constant_means(2000, 3, rng, norm=0.5), 0.0, rng, kind="quadratic",
                   curvature=H, n=2)
    r = regret_curve(q, optimistic_ons(q, gamma=q.exp_concavity).x)
    assert r[:, -1].max() < 1.0 and np.abs(r[:, -1] - r[:, 999]).max() < 1e-3


def test_ensemble_parts_and_dynamic_regret():
    rng = np.random.default_rng(4)
    T = 2000
    s = sea_stream(np.stack([switching_means(T, 3, S, rng) for S in (3, 40)]), 0.1, rng)
    run = optimistic_ensemble(s)
    grid = step_grid(s)
    np.testing.assert_allclose(run.grid, grid)
    assert grid.shape == (2, math.ceil(math.log2(4 * math.sqrt(T))) + 1)
    np.testing.assert_allclose(grid[:, 1] / grid[:, 0], 2.0)
    np.testing.assert_allclose(run.weights.sum(-1), 1.0)
    np.testing.assert_allclose(np.einsum("ntk,nktd->ntd", run.weights, run.base_x), run.x)
    # the ensemble is close to its best base learner in hindsight
    dyn = dynamic_regret_curve(s, run.x)[:, -1]
    base = np.stack([dynamic_regret_curve(s, run.base_x[:, i])[:, -1]
                     for i in range(grid.shape[1])], 1)
    assert np.all(dyn <= 1.5 * base.min(1) + 10)
    # one learner: a fixed-step optimistic OMD; first round by hand
    one = optimistic_ensemble(s, n_learners=1)
    np.testing.assert_allclose(one.x[:, 0], 0.0)
    np.testing.assert_allclose(one.x[:, 1], project_ball(
        project_ball(-grid[:, :1] * s.centres[:, 0], 1.0) - grid[:, :1] * s.centres[:, 0], 1.0))


def test_new_bad_inputs_raise():
    rng = np.random.default_rng(0)
    means = constant_means(10, 2, rng)
    with pytest.raises(ValueError, match="curvature"):
        sea_stream(means, 0.1, rng, kind="quadratic", curvature=np.ones(3))
    with pytest.raises(ValueError, match="curvature"):
        sea_stream(means, 0.1, rng, kind="quadratic", curvature=np.array([1.0, -1.0]))
    lin = sea_stream(means, 0.1, rng)
    with pytest.raises(ValueError, match="exp-concave"):
        optimistic_ons(lin)
    quad = sea_stream(means, 0.1, rng, kind="quadratic")
    with pytest.raises(ValueError, match="hint"):
        optimistic_ons(quad, hint="future")
    with pytest.raises(ValueError, match="delta"):
        optimistic_ons(quad, delta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        optimistic_ons(quad, gamma=0.0)
    with pytest.raises(ValueError, match="linear"):
        optimistic_ensemble(quad)
    with pytest.raises(ValueError, match="n_learners"):
        optimistic_ensemble(lin, n_learners=0)
    with pytest.raises(ValueError, match="radius"):
        project_ball_metric(np.ones(2), np.eye(2), 0.0)
    with pytest.raises(ValueError, match="shape"):
        project_ball_metric(np.ones(2), np.eye(3))
    with pytest.raises(ValueError, match="diagonal"):
        project_ball_metric(np.ones(2), np.ones(3), diagonal=True)
    with pytest.raises(ValueError, match="semi-definite"):
        project_ball_eigen(np.ones(2), np.array([-1.0, 1.0]), None)
