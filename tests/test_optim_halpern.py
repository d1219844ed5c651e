"""Finite-sum operators with an oracle counter; Halpern, VR-Halpern and extragradient."""

import math

import numpy as np
import pytest

from lib.optim.halpern import (
    anchor_weight,
    extra_anchored_gradient,
    extragradient,
    forward_backward_residual,
    halpern,
    halpern_deterministic,
    inexact_halpern,
    vr_forb_resolvent,
    vr_halpern,
)
from lib.optim.operators import (
    FiniteSumOperator,
    bilinear_game,
    least_squares_operator,
    linear_operator,
    random_least_squares,
)


def small_problem(seed=0, n=200, d=8):
    A, b = random_least_squares(n, d, np.random.default_rng(seed), smallest_scale=0.1)
    return A, b, least_squares_operator(A, b)


def test_least_squares_operator_values_constants_and_counter():
    A, b, op = small_problem()
    n, d = A.shape
    u = np.random.default_rng(1).standard_normal(d)
    full = op.full(u)
    np.testing.assert_allclose(full, A.T @ (A @ u - b) / n, atol=1e-12)
    np.testing.assert_allclose(op.exact(u), full, atol=1e-12)
    assert op.calls == n  # exact() is not charged
    idx = np.array([3, 3, 7])
    np.testing.assert_allclose(op.batch(u, idx), (2 * A[3] * (A[3] @ u - b[3])
                                                 + A[7] * (A[7] @ u - b[7])) / 3, atol=1e-12)
    assert op.calls == n + 3
    v = u + 1.0
    diff = op.batch_difference(u, v, idx)
    np.testing.assert_allclose(diff, op.batch(u, idx) - op.batch(v, idx), atol=1e-12)
    assert op.calls == n + 3 + 6 + 6  # a difference costs two calls per component
    op.reset()
    assert op.calls == 0
    # L is the cocoercivity constant: <F(u)-F(v), u-v> >= ||F(u)-F(v)||^2 / L, and it is tight.
    H = A.T @ A / n
    assert op.lipschitz == pytest.approx(np.linalg.eigvalsh(H)[-1])
    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y = rng.standard_normal(d), rng.standard_normal(d)
        g = op.exact(x) - op.exact(y)
        assert g @ (x - y) >= g @ g / op.lipschitz - 1e-12
        sq = np.mean(np.sum((op._components(x, np.arange(n))
                             - op._components(y, np.arange(n))) ** 2, axis=1))
        assert sq <= op.mean_square_lipschitz**2 * np.sum((x - y) ** 2) * (1 + 1e-10)


def test_generic_operator_matches_linear_fast_path():
    rng = np.random.default_rng(0)
    n, d = 30, 4
    M = rng.standard_normal((n, d, d))
    q = rng.standard_normal((n, d))
    op = linear_operator(M, q)
    generic = FiniteSumOperator(lambda u, idx: M[idx] @ u - q[idx], n, d)
    u = rng.standard_normal(d)
    np.testing.assert_allclose(op.full(u), generic.full(u), atol=1e-12)
    np.testing.assert_allclose(op.exact(u), generic.exact(u), atol=1e-12)
    assert op.calls == generic.calls == n
    # L bounds the mean operator's Lipschitz constant, L_Q the mean-square one.
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    assert np.linalg.norm(op.exact(x) - op.exact(y)) <= op.lipschitz * np.linalg.norm(x - y) + 1e-12


def test_halpern_finds_the_fixed_point_of_a_rotation_nearest_the_anchor():
    # A rotation by 90 degrees about c is nonexpansive with the single fixed point c: Picard
    # iteration circles forever, Halpern converges with ||u - T u|| <= 2 ||u0 - c|| / (k + 1).
    c = np.array([1.0, -2.0])
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    T = lambda u: c + R @ (u - c)  # noqa: E731
    u0 = np.array([3.0, 4.0])
    for k in (1, 10, 100, 1000):
        u = halpern(T, u0, k)
        assert np.linalg.norm(u - T(u)) <= 2 * np.linalg.norm(u0 - c) / (k + 1) + 1e-12
    assert np.linalg.norm(halpern(T, u0, 5000) - c) < 1e-2
    assert anchor_weight(0) == 0.5 and anchor_weight(8) == 0.1


def test_deterministic_halpern_last_iterate_rate_and_call_count():
    A, b, op = small_problem(3)
    u0 = np.zeros(A.shape[1])
    u_star = np.linalg.lstsq(A, b, rcond=None)[0]
    trace = halpern_deterministic(op, u0, tol=1e-3)
    assert trace.converged
    k = np.arange(len(trace.residuals))
    bound = op.lipschitz * np.linalg.norm(u0 - u_star) / (k + 1)
    assert np.all(np.asarray(trace.residuals) <= bound * (1 + 1e-9))
    assert trace.calls == [op.n * i for i in k]
    # the iterates approach the solution: Halpern's limit is the fixed point nearest u0
    assert np.linalg.norm(trace.u - u_star) < 0.2 * np.linalg.norm(u0 - u_star)


@pytest.mark.parametrize("seed", range(3))
def test_vr_halpern_converges_and_charges_at_most_a_fraction_of_full_passes(seed):
    A, b, op = small_problem(seed, n=400)
    u0 = np.zeros(A.shape[1])
    trace = vr_halpern(op, u0, rng=np.random.default_rng(seed), tol=1e-3)
    assert trace.converged
    assert trace.relative[-1] <= 1e-3
    # about 3 sqrt(n) = 60 calls a step on average, far less than n = 400
    assert trace.calls[-1] / trace.iterations < 0.3 * op.n
    det = halpern_deterministic(op, u0, tol=1e-3)
    assert trace.calls_to(1e-3) < det.calls_to(1e-3)


def test_vr_halpern_with_p_one_is_deterministic_halpern():
    A, b, op = small_problem(1)
    u0 = np.zeros(A.shape[1])
    step = 1.0 / op.lipschitz
    vr = vr_halpern(op, u0, rng=np.random.default_rng(0), p=1.0, step=step, tol=1e-3)
    det = halpern_deterministic(op, u0, step=step, tol=1e-3)
    np.testing.assert_allclose(vr.residuals, det.residuals, rtol=1e-10)
    assert vr.calls[-1] == det.calls[-1] + op.n  # the estimator refreshes once more at the end


def test_extragradient_and_forward_backward_residual_with_a_box():
    A, b, op = small_problem(2)
    d = A.shape[1]
    lo, hi = -0.2, 0.2
    prox = lambda v, step: np.clip(v, lo, hi)  # noqa: E731  (normal cone of a box)
    eg = extragradient(op, np.zeros(d), tol=1e-6, prox=prox)
    hp = halpern_deterministic(op, np.zeros(d), tol=1e-2, prox=prox)
    assert eg.converged and hp.converged
    r0 = forward_backward_residual(op, np.zeros(d), 1.0, prox)
    assert forward_backward_residual(op, eg.u, 1.0, prox) < 1e-5 * r0
    np.testing.assert_allclose(hp.u, eg.u, atol=0.05)
    assert np.all((eg.u >= lo) & (eg.u <= hi)) and np.all((hp.u >= lo) & (hp.u <= hi))


def test_diverging_step_is_reported_not_raised():
    A, b, op = small_problem(0)
    trace = vr_halpern(op, np.zeros(A.shape[1]), rng=np.random.default_rng(0),
                       step=5.0 / op.lipschitz, tol=1e-3, max_calls=1e6)
    assert not trace.converged
    assert math.isinf(trace.calls_to(1e-3))


def test_bilinear_game_is_monotone_skew_and_solved_by_a_linear_system():
    op = bilinear_game(50, 4, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(8), rng.standard_normal(8)
    assert np.dot(op.exact(u) - op.exact(v), u - v) == pytest.approx(0.0, abs=1e-10)
    M = np.array([op.exact(e) - op.exact(np.zeros(8)) for e in np.eye(8)]).T
    u_star = np.linalg.solve(M, -op.exact(np.zeros(8)))
    assert np.linalg.norm(op.exact(u_star)) < 1e-10
    assert op.lipschitz == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("seed", range(2))
def test_vr_forb_resolvent_matches_the_closed_form(seed):
    op = bilinear_game(100, 4, np.random.default_rng(seed))
    d = op.dim
    F0 = op.exact(np.zeros(d))
    M = np.array([op.exact(e) - F0 for e in np.eye(d)]).T
    u = np.random.default_rng(seed + 5).standard_normal(d)
    eta = 3.0
    exact = np.linalg.solve(np.eye(d) + eta * M, u - eta * F0)  # (I + eta F)^{-1}(u)
    approx = vr_forb_resolvent(op, u, np.zeros(d), eta, rng=np.random.default_rng(seed),
                               iterations=3000, step=0.1 / (eta * op.lipschitz + 1), p=0.1,
                               batch=10)
    assert np.linalg.norm(approx - exact) < 1e-6 * np.linalg.norm(exact)


@pytest.mark.parametrize("seed", range(2))
def test_inexact_halpern_beats_eag_on_a_game_and_charges_every_call(seed):
    op = bilinear_game(400, 5, np.random.default_rng(seed), smallest_singular=0.3)
    u0 = np.zeros(op.dim)
    eag = extra_anchored_gradient(op, u0, tol=1e-2)
    alg2 = inexact_halpern(op, u0, rng=np.random.default_rng(seed), tol=1e-2)
    assert eag.converged and alg2.converged
    assert alg2.calls[-1] < 0.6 * eag.calls[-1]
    assert np.linalg.norm(op.exact(alg2.u)) <= 1e-2 * np.linalg.norm(op.exact(u0)) + 1e-12
    # an anchored deterministic method: calls are exactly 2 n per step
    assert eag.calls[-1] == 2 * op.n * eag.iterations


def test_oracle_counter_agrees_with_a_brute_force_count():
    A, b = random_least_squares(60, 5, np.random.default_rng(3), smallest_scale=0.3)
    evaluated = []

    def components(u, idx):
        evaluated.append(len(idx))
        rows = A[idx]
        return rows * (rows @ u - b[idx])[:, None]

    op = FiniteSumOperator(components, 60, 5, lipschitz=np.linalg.eigvalsh(A.T @ A / 60)[-1])
    trace = vr_halpern(op, np.zeros(5), rng=np.random.default_rng(0), tol=1e-2, max_iter=200)
    # every residual measurement evaluates all n components, uncharged
    assert sum(evaluated) - 60 * len(trace.residuals) == trace.calls[-1]


def test_bad_inputs_raise_clear_errors():
    A, b, op = small_problem()
    u0 = np.zeros(A.shape[1])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n >= 1"):
        FiniteSumOperator(lambda u, i: u, 0, 3)
    with pytest.raises(ValueError, match="lipschitz must be positive"):
        FiniteSumOperator(lambda u, i: u, 3, 3, lipschitz=-1.0)
    with pytest.raises(ValueError, match="shape"):
        op.full(np.zeros(3))
    with pytest.raises(ValueError, match="indices"):
        op.batch(u0, np.array([op.n]))
    with pytest.raises(ValueError, match="indices"):
        op.batch(u0, np.array([], dtype=int))
    with pytest.raises(ValueError, match="b must have shape"):
        least_squares_operator(A, b[:-1])
    with pytest.raises(ValueError, match="dim, dim"):
        linear_operator(np.zeros((3, 2, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="p must be in"):
        vr_halpern(op, u0, rng=rng, p=0.0)
    with pytest.raises(ValueError, match="batch size"):
        vr_halpern(op, u0, rng=rng, batch=0)
    with pytest.raises(ValueError, match="step size"):
        halpern_deterministic(op, u0, step=-1.0)
    with pytest.raises(ValueError, match="u0 must have shape"):
        extragradient(op, np.zeros(2))
    with pytest.raises(ValueError, match="max_iter"):
        halpern_deterministic(op, u0, max_iter=0)
    with pytest.raises(ValueError, match="record_every"):
        extragradient(op, u0, record_every=0)
    with pytest.raises(ValueError, match="iterations"):
        halpern(lambda u: u, u0, -1)
    with pytest.raises(ValueError, match="smallest_scale"):
        random_least_squares(10, 3, rng, smallest_scale=0.0)
    game = bilinear_game(10, 2, rng)
    z = np.zeros(game.dim)
    with pytest.raises(ValueError, match="iterations"):
        vr_forb_resolvent(game, z, z, 1.0, rng=rng, iterations=-1, step=0.1, p=0.5, batch=2)
    with pytest.raises(ValueError, match="positive"):
        vr_forb_resolvent(game, z, z, 0.0, rng=rng, iterations=1, step=0.1, p=0.5, batch=2)
    with pytest.raises(ValueError, match="snapshot probability"):
        vr_forb_resolvent(game, z, z, 1.0, rng=rng, iterations=1, step=0.1, p=0.0, batch=2)
    with pytest.raises(ValueError, match="batch size"):
        inexact_halpern(game, z, rng=rng, batch=0)
    with pytest.raises(ValueError, match="step_factor"):
        inexact_halpern(game, z, rng=rng, step_factor=0.0)
    with pytest.raises(ValueError, match="smallest_singular"):
        bilinear_game(10, 2, rng, smallest_singular=0.0)
    no_constant = FiniteSumOperator(lambda u, idx: np.tile(u, (idx.size, 1)), 4, 2)
    with pytest.raises(ValueError, match="L_Q"):
        inexact_halpern(no_constant, np.zeros(2), rng=rng)
    with pytest.raises(ValueError, match="needs a step size"):
        halpern_deterministic(no_constant, np.zeros(2))
