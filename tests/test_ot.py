"""Entropic OT: derivatives of the Lyapunov potential, Sinkhorn, SNS, and input checks."""

import numpy as np
import ot
import pytest

from lib.ot import (
    lyapunov,
    lyapunov_gradient,
    lyapunov_hessian,
    marginal_error,
    newton_ot,
    random_assignment_problem,
    sinkhorn,
    sinkhorn_newton_sparse,
    sparsify_plan,
    transport_cost,
    transport_plan,
)
from lib.ot.sparse_newton import _backtrack, _conjugate_gradient, _newton_matvec


def random_problem(seed: int, n: int = 6, m: int = 5):
    rng = np.random.default_rng(seed)
    X, Y = rng.random((n, 2)), rng.random((m, 2))
    C = ((X[:, None] - Y[None]) ** 2).sum(-1)
    r = rng.random(n) + 0.1
    c = rng.random(m) + 0.1
    return C, r / r.sum(), c / c.sum()


@pytest.mark.parametrize("seed", range(3))
def test_gradient_matches_finite_differences(seed):
    C, r, c = random_problem(seed)
    eta = 3.0
    rng = np.random.default_rng(seed + 10)
    x, y = rng.normal(size=C.shape[0]) * 0.1, rng.normal(size=C.shape[1]) * 0.1
    z = np.concatenate([x, y])
    n = C.shape[0]
    f = lambda z: lyapunov(C, r, c, eta, z[:n], z[n:])
    h = 1e-6
    numeric = np.array([(f(z + h * e) - f(z - h * e)) / (2 * h) for e in np.eye(z.size)])
    analytic = lyapunov_gradient(transport_plan(C, eta, x, y), r, c)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_hessian_matches_finite_differences_and_has_null_direction(seed):
    C, r, c = random_problem(seed)
    eta = 3.0
    rng = np.random.default_rng(seed + 20)
    x, y = rng.normal(size=C.shape[0]) * 0.1, rng.normal(size=C.shape[1]) * 0.1
    n = C.shape[0]
    z = np.concatenate([x, y])
    grad = lambda z: lyapunov_gradient(transport_plan(C, eta, z[:n], z[n:]), r, c)
    h = 1e-6
    numeric = np.array([(grad(z + h * e) - grad(z - h * e)) / (2 * h) for e in np.eye(z.size)])
    H = lyapunov_hessian(transport_plan(C, eta, x, y), eta)
    np.testing.assert_allclose(H, numeric.T, rtol=1e-5, atol=1e-8)
    null = np.concatenate([np.ones(n), -np.ones(C.shape[1])])
    np.testing.assert_allclose(H @ null, 0, atol=1e-12)
    assert np.linalg.eigvalsh(H).max() < 1e-10  # concave


@pytest.mark.parametrize("method", ["scaling", "log"])
def test_sinkhorn_marginals_and_agreement_with_pot(method):
    for seed in range(3):
        C, r, c = random_problem(seed, n=30, m=25)
        eta = 50.0
        trace = sinkhorn(C, r, c, eta, tol=1e-12, method=method)
        assert trace.converged
        assert marginal_error(trace.plan, r, c) <= 1e-11
        # POT solves min <P, C> + reg sum P (log P - 1): the same problem with reg = 1 / eta.
        P_pot = ot.sinkhorn(r, c, C, 1 / eta, method="sinkhorn_log", stopThr=1e-13,
                            numItermax=100_000)
        assert transport_cost(trace.plan, C) == pytest.approx(transport_cost(P_pot, C), rel=1e-8)
        np.testing.assert_allclose(trace.plan, P_pot, atol=1e-10)


def test_scaling_and_log_sinkhorn_follow_the_same_iterates():
    C, r, c = random_problem(4, n=40, m=40)
    a = sinkhorn(C, r, c, 80.0, tol=0, max_iter=15, method="scaling")
    b = sinkhorn(C, r, c, 80.0, tol=0, max_iter=15, method="log")
    np.testing.assert_allclose(a.errors, b.errors, rtol=1e-6)
    np.testing.assert_allclose(a.plan, b.plan, atol=1e-14)


@pytest.mark.parametrize("rho", [None, 1.0, 0.3])
def test_newton_variants_converge_to_the_sinkhorn_solution(rho):
    C, r, c = random_problem(5, n=60, m=50)
    eta = 100.0
    ref = sinkhorn(C, r, c, eta, tol=1e-13)
    trace = newton_ot(C, r, c, eta, rho=rho, tol=1e-11)
    assert trace.converged and trace.errors[-1] <= 1e-11
    assert trace.n_sinkhorn == 20 and trace.n_newton >= 1
    assert transport_cost(trace.plan, C) == pytest.approx(transport_cost(ref.plan, C), rel=1e-9)
    assert len(trace.cg_iterations) == trace.n_newton == len(trace.step_sizes)


def test_sns_needs_far_fewer_iterations_than_sinkhorn():
    rng = np.random.default_rng(0)
    n = 200
    X, Y = rng.random((n, 2)), rng.random((n, 2))
    C = ((X[:, None] - Y[None]) ** 2).sum(-1)
    r = c = np.full(n, 1 / n)
    sk = sinkhorn(C, r, c, 200.0, tol=1e-9)
    sns = sinkhorn_newton_sparse(C, r, c, 200.0, rho=0.2, tol=1e-9)
    assert sns.converged and sk.converged
    assert sns.iterations <= 0.1 * sk.iterations


@pytest.mark.parametrize("per_row", [1, 4, 16])
def test_sparsify_at_o_of_n_entries_matches_a_full_sort(per_row):
    # The subsample-bounded selection must pick exactly the entries a full sort picks.
    rng = np.random.default_rng(per_row)
    n = 400
    P = rng.random((n, n)) ** 6
    kept = sparsify_plan(P, per_row / n)
    assert kept.nnz == per_row * n
    threshold = np.sort(P, axis=None)[-per_row * n]
    np.testing.assert_array_equal(kept.toarray(), np.where(P >= threshold, P, 0.0))
    ties = np.round(rng.random((n, n)), 2)  # many ties at the threshold: all of them kept
    threshold = np.sort(ties, axis=None)[-per_row * n]
    np.testing.assert_array_equal(sparsify_plan(ties, per_row / n).toarray(),
                                  np.where(ties >= threshold, ties, 0.0))


def test_line_search_increase_is_the_change_of_f_and_passes_armijo():
    C, r, c = random_problem(2, n=12, m=9)
    eta = 20.0
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12) * 0.01, rng.normal(size=9) * 0.01
    P = transport_plan(C, eta, x, y)
    g = lyapunov_gradient(P, r, c)
    dz = g / eta  # an ascent direction (slope g.dz > 0)
    dx, dy = dz[:12], dz[12:]
    slope = float(g @ dz)
    alpha, P_new, gain = _backtrack(P, r, c, eta, dx, dy, slope, 1e-4, 40)
    assert alpha > 0 and P_new is not None
    direct = lyapunov(C, r, c, eta, x + alpha * dx, y + alpha * dy) - lyapunov(C, r, c, eta, x, y)
    assert gain == pytest.approx(direct, rel=1e-8)
    assert gain >= 1e-4 * alpha * slope
    np.testing.assert_allclose(P_new, transport_plan(C, eta, x + alpha * dx, y + alpha * dy),
                               rtol=1e-12)
    # A descent direction never passes the test: the search reports failure.
    assert _backtrack(P, r, c, eta, -dx, -dy, -slope, 1e-4, 40)[1] is None


def test_conjugate_gradient_solves_the_singular_consistent_newton_system():
    C, r, c = random_problem(1, n=15, m=12)
    P = transport_plan(C, 10.0, np.zeros(15), np.zeros(12))
    M = -lyapunov_hessian(P, 10.0) / 10.0
    null = np.concatenate([np.ones(15), -np.ones(12)])
    b = np.random.default_rng(0).normal(size=27)
    b -= (b @ null) / (null @ null) * null
    for kept in (None, sparsify_plan(P, 1.0)):
        x, iterations = _conjugate_gradient(_newton_matvec(P, kept), b, 1e-12, 500)
        assert 0 < iterations < 500
        np.testing.assert_allclose(M @ x, b, atol=1e-10)
        assert abs(x @ null) < 1e-8  # the minimum-norm solution: nothing along the null space


def test_sns_with_o_of_n_entries_differs_from_dense_newton_but_converges():
    C, r, c = random_assignment_problem(200, np.random.default_rng(0))
    eta = 600.0
    dense = newton_ot(C, r, c, eta, rho=None, tol=1e-10)
    sparse = sinkhorn_newton_sparse(C, r, c, eta, rho=4 / 200, tol=1e-10)
    assert dense.converged and sparse.converged
    assert sparse.kept_fraction == pytest.approx(4 / 200)
    assert sparse.n_newton > dense.n_newton
    np.testing.assert_allclose(sparse.plan, dense.plan, atol=1e-11)


def test_sparsify_keeps_the_largest_entries():
    rng = np.random.default_rng(1)
    P = rng.random((20, 30))
    kept = sparsify_plan(P, 0.1)
    assert kept.nnz == 60
    dense = kept.toarray()
    assert dense[dense > 0].min() >= np.sort(P, axis=None)[-60]
    np.testing.assert_array_equal(dense[dense > 0], P[dense > 0])
    assert sparsify_plan(P, 1.0).nnz == P.size
    with pytest.raises(ValueError, match="rho"):
        sparsify_plan(P, 0.0)
    with pytest.raises(ValueError, match="rho"):
        sparsify_plan(P, 1.5)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda C, r, c: (C, -r, c), "strictly positive"),
        (lambda C, r, c: (C, r * 2, c), "sum to 1"),
        (lambda C, r, c: (C[:, :-1], r, c), "shape"),
        (lambda C, r, c: (np.where(C > 0.5, np.inf, C), r, c), "non-finite"),
        (lambda C, r, c: (C, r[:, None], c), "1-D"),
        (lambda C, r, c: (C, np.where(r == r.max(), np.nan, r), c), "non-finite"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(mutate, message):
    C, r, c = random_problem(0)
    C, r, c = mutate(C, r, c)
    for solver in (sinkhorn, sinkhorn_newton_sparse):
        with pytest.raises(ValueError, match=message):
            solver(C, r, c, 10.0)


def test_bad_settings_are_rejected():
    C, r, c = random_problem(0)
    with pytest.raises(ValueError, match="eta"):
        sinkhorn(C, r, c, 0.0)
    with pytest.raises(ValueError, match="method"):
        sinkhorn(C, r, c, 1.0, method="fast")
    with pytest.raises(ValueError, match="rho"):
        sinkhorn_newton_sparse(C, r, c, 1.0, rho=0.0)
    with pytest.raises(ValueError, match="max_halvings"):
        sinkhorn_newton_sparse(C, r, c, 1.0, max_halvings=-1)
    with pytest.raises(ValueError, match="n >= 1"):
        random_assignment_problem(0, np.random.default_rng(0))
