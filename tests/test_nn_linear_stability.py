"""Linear stability of (S)GD on diagonal linear networks (lib.nn.linear_stability)."""

import itertools

import numpy as np
import pytest
import torch

from lib.nn.hessian import exact_hessian
from lib.nn.linear_stability import (
    critical_learning_rate,
    dln_beta,
    dln_jacobian,
    dln_trace_closed_form,
    gauss_newton_frobenius,
    gauss_newton_top_eig,
    gauss_newton_trace,
    report_minima,
    sgd_mean_square_growth,
    sgd_second_moment_map,
    sparse_regression,
    train_dln,
    weighted_l1,
)


def brute_force_growth(J, eta, B):
    """Spectral radius of E[A kron A] over every batch of B distinct samples (tiny n only)."""
    n = J.shape[0]
    K = J @ J.T
    T = np.zeros((n * n, n * n))
    batches = list(itertools.combinations(range(n), B))
    for b in batches:
        S = np.zeros((n, n))
        S[list(b), list(b)] = 1
        A = np.eye(n) - eta / B * K @ S
        T += np.kron(A, A)
    return np.max(np.abs(np.linalg.eigvals(T / len(batches))))


@pytest.mark.parametrize("seed", range(3))
def test_jacobian_matches_finite_differences_and_hessian_is_gauss_newton(seed):
    rng = np.random.default_rng(seed)
    n, d = 5, 4
    X = rng.normal(size=(n, d))
    u, v = rng.normal(size=d), rng.normal(size=d)
    J = dln_jacobian(u, v, X)
    theta = np.concatenate([u, v])
    f = lambda t: X @ dln_beta(t[:d], t[d:])  # noqa: E731
    h = 1e-6
    numeric = np.stack([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(2 * d)], 1)
    np.testing.assert_allclose(J, numeric, atol=1e-8)
    # at an interpolating minimum (labels = predictions) the Hessian is J^T J / n exactly
    y = torch.tensor(X @ dln_beta(u, v))
    Xt = torch.tensor(X)
    ut, vt = torch.tensor(u, requires_grad=True), torch.tensor(v, requires_grad=True)
    loss = lambda: 0.5 * ((Xt @ (ut * ut - vt * vt) - y) ** 2).mean()  # noqa: E731
    H = exact_hessian(loss, [ut, vt]).numpy()
    np.testing.assert_allclose(H, J.T @ J / n, atol=1e-10)
    assert gauss_newton_trace(J) == pytest.approx(np.trace(H))
    assert gauss_newton_trace(J) == pytest.approx(dln_trace_closed_form(u, v, X))
    assert gauss_newton_top_eig(J) == pytest.approx(np.linalg.eigvalsh(H)[-1])
    assert gauss_newton_frobenius(J) == pytest.approx(np.linalg.norm(H))
    # the trace bounds the weighted l1 norm of the predictor: tr(H) >= 4 sum_j |beta_j| m_j
    assert gauss_newton_trace(J) >= 4 * weighted_l1(dln_beta(u, v), X) - 1e-12


@pytest.mark.parametrize(("n", "p", "B"), [(4, 6, 1), (4, 6, 2), (5, 8, 3), (4, 6, 4), (6, 9, 1)])
def test_growth_factor_matches_brute_force_over_all_batches(n, p, B):
    rng = np.random.default_rng(n * 10 + B)
    J = rng.normal(size=(n, p))
    for scale in (0.5, 1.5, 2.5):
        eta = scale / gauss_newton_trace(J)
        assert sgd_mean_square_growth(J, eta, B) == pytest.approx(brute_force_growth(J, eta, B),
                                                                  rel=1e-8)


def test_second_moment_map_is_the_average_over_batches():
    rng = np.random.default_rng(3)
    n, B, eta = 5, 2, 0.3
    J = rng.normal(size=(n, 7))
    K = J @ J.T
    S0 = np.cov(rng.normal(size=(n, 20)))
    expected = np.zeros((n, n))
    batches = list(itertools.combinations(range(n), B))
    for b in batches:
        D = np.zeros((n, n))
        D[list(b), list(b)] = 1 / B
        A = np.eye(n) - eta * K @ D
        expected += A @ S0 @ A.T / len(batches)
    np.testing.assert_allclose(sgd_second_moment_map(K, eta, B)(S0.copy()), expected)


@pytest.mark.parametrize("seed", range(4))
def test_stability_conditions_gd_exact_and_sgd_trace_bound(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    J = rng.normal(size=(n, n + 3)) * rng.exponential(size=(n, 1))
    lam, tr = gauss_newton_top_eig(J), gauss_newton_trace(J)
    # GD: stable exactly when eta * lambda_max <= 2
    assert sgd_mean_square_growth(J, 1.99 / lam, n) <= 1
    assert sgd_mean_square_growth(J, 2.01 / lam, n) > 1
    assert critical_learning_rate(J, n) == pytest.approx(2 / lam)
    # single-sample SGD: a stable minimum has eta * tr(H) <= 2 (Wu & Su 2023, Section 3)
    eta_c = critical_learning_rate(J, 1)
    assert eta_c * tr <= 2 + 1e-5
    assert eta_c <= 2 / lam + 1e-12
    # larger batches are never less stable
    assert critical_learning_rate(J, 2) >= eta_c * (1 - 1e-5)


def test_rank_one_gradients_make_the_trace_bound_tight():
    h = np.array([1.0, -2.0, 0.5])
    J = np.outer([1.0, 1.0, 1.0, 1.0], h)  # every sample has the same gradient
    eta_c = critical_learning_rate(J, 1)
    assert eta_c * gauss_newton_trace(J) == pytest.approx(2, rel=1e-5)


def test_training_reaches_interpolation_and_sgd_minimum_is_sgd_stable():
    rng = np.random.default_rng(0)
    prob = sparse_regression(20, 30, 2, rng)
    for B in (1, 20):
        runs = train_dln(prob.X, prob.y, eta=0.05, batch_size=B, alpha=0.3, steps=20_000,
                         rng=rng, loss_tol=1e-12)
        rep = report_minima(runs, prob.X, prob.y, prob.beta_star)
        assert not runs.diverged[0] and rep.train_loss[0] < 1e-12
        assert runs.trace[0, -1] == pytest.approx(rep.trace[0])
        if B == 1:
            assert rep.sgd_growth[0] <= 1 + 1e-9
            assert 0.05 * rep.trace[0] <= 2


def test_divergence_is_detected_and_clipping_recorded():
    rng = np.random.default_rng(1)
    prob = sparse_regression(10, 20, 2, rng)
    runs = train_dln(prob.X, prob.y, eta=5.0, batch_size=10, alpha=1.0, steps=500, rng=rng)
    assert runs.diverged[0] and np.isnan(runs.u).all()
    rep = report_minima(runs, prob.X, prob.y, prob.beta_star)
    assert np.isnan(rep.trace[0])
    runs = train_dln(prob.X, prob.y, eta=0.05, batch_size=1, alpha=0.5, steps=2000, rng=rng,
                     clip=0.5)
    assert runs.extra["n_clipped"][0] > 0


def test_bad_inputs_raise_value_errors():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(4, 6))
    with pytest.raises(ValueError, match="eta"):
        sgd_mean_square_growth(J, 0.0)
    with pytest.raises(ValueError, match="batch_size"):
        sgd_mean_square_growth(J, 0.1, 5)
    with pytest.raises(ValueError, match="matrix"):
        gauss_newton_trace(np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        gauss_newton_top_eig(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="square"):
        sgd_second_moment_map(np.ones((2, 3)), 0.1, 1)
    with pytest.raises(ValueError, match="sparsity"):
        sparse_regression(5, 3, 4, rng)
    with pytest.raises(ValueError, match="shapes"):
        dln_jacobian(np.ones(3), np.ones(2), np.ones((4, 3)))
    X, y = rng.normal(size=(5, 3)), np.zeros(5)
    with pytest.raises(ValueError, match="alpha"):
        train_dln(X, y, eta=0.1, batch_size=1, alpha=0.0, steps=10, rng=rng)
    with pytest.raises(ValueError, match="clip"):
        train_dln(X, y, eta=0.1, batch_size=1, alpha=0.1, steps=10, rng=rng, clip=-1.0)
    with pytest.raises(ValueError, match=r"\(R, n, d\)"):
        train_dln(X, np.zeros(4), eta=0.1, batch_size=1, alpha=0.1, steps=10, rng=rng)
    with pytest.raises(ValueError, match="H = 0"):
        critical_learning_rate(np.zeros((3, 2)))
