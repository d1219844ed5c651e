"""Tied-features neural-collapse model: metrics, closed forms, solver, flow, perturbation."""

import numpy as np
import pytest

from lib.dynamics.neural_collapse import (
    balanced_by_class,
    central_path_flow,
    central_path_velocity,
    class_covariances,
    collapsed_minimizer,
    first_order_minimizer,
    hessian_blocks,
    layerwise_features,
    nc1,
    nc1_tilde,
    nc2,
    objective,
    objective_gradients,
    one_hot_targets,
    operator_block_spectra,
    optimal_classifier,
    optimal_features,
    perturbation_operator,
    predicted_block_singular_values,
    random_relu_features,
    tied_features_solve,
    train_layerwise_mlp,
)

LAM = dict(lam_W=0.5, lam_H=0.3, beta=2.0)


def small_problem(seed, d=6, K=3, n=4):
    rng = np.random.default_rng(seed)
    means = 2 * rng.standard_normal((d, K))
    H0 = np.kron(means, np.ones((1, n))) + rng.standard_normal((d, K * n))
    W = rng.standard_normal((K, d))
    H = rng.standard_normal((d, K * n))
    return rng, H0, W, H, K


def fd_vec(fun, X, h=1e-6):
    """Central finite differences of fun (a matrix-valued or scalar map) w.r.t. vec(X)."""
    cols = []
    for i in range(X.size):
        e = np.zeros(X.size)
        e[i] = h
        E = e.reshape(X.shape, order="F")
        diff = np.asarray(fun(X + E)) - np.asarray(fun(X - E))
        cols.append(diff.reshape(-1, order="F") / (2 * h))
    return np.array(cols).T


def test_targets_and_covariances_match_definitions():
    Y = one_hot_targets(3, 2)
    np.testing.assert_array_equal(Y, [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    rng, H0, *_ = small_problem(0)
    K, n = 3, 4
    sw, sb = class_covariances(H0, K)
    labels = np.repeat(np.arange(K), n)
    mu = np.array([H0[:, labels == k].mean(1) for k in range(K)]).T
    sw_ref = sum(np.outer(h - mu[:, c], h - mu[:, c]) for h, c in zip(H0.T, labels)) / (K * n)
    g = mu.mean(1)
    sb_ref = sum(np.outer(m - g, m - g) for m in mu.T) / K
    np.testing.assert_allclose(sw, sw_ref, atol=1e-12)
    np.testing.assert_allclose(sb, sb_ref, atol=1e-12)
    assert nc1_tilde(H0, K) == pytest.approx(np.trace(sw_ref) / np.trace(sb_ref))
    assert nc1(H0, K) == pytest.approx(np.trace(sw_ref @ np.linalg.pinv(sb_ref)) / K, rel=1e-8)


def test_metrics_vanish_on_collapse_and_are_scale_invariant():
    rng = np.random.default_rng(1)
    W, H = collapsed_minimizer(8, 4, 5, 0.5, 0.5, rng)
    assert nc1(H, 4) < 1e-20 and nc1_tilde(H, 4) < 1e-20
    # orthogonal collapse: centred means form a simplex ETF
    assert nc2(H, 4) < 1e-12
    _, H0, *_ = small_problem(2)
    assert nc1_tilde(3 * H0, 3) == pytest.approx(nc1_tilde(H0, 3))
    assert nc1(3 * H0, 3) == pytest.approx(nc1(H0, 3))


@pytest.mark.parametrize("seed", range(2))
def test_gradients_match_finite_differences(seed):
    _, H0, W, H, K = small_problem(seed)
    gW, gH = objective_gradients(W, H, H0, K, **LAM)
    np.testing.assert_allclose(
        gW.reshape(-1, order="F"),
        fd_vec(lambda V: objective(V, H, H0, K, **LAM), W).ravel(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        gH.reshape(-1, order="F"),
        fd_vec(lambda V: objective(W, V, H0, K, **LAM), H).ravel(), rtol=1e-6, atol=1e-8)


def test_closed_forms_are_block_minimisers():
    _, H0, W, H, K = small_problem(3)
    W_star = optimal_classifier(H, K, LAM["lam_W"])
    assert np.abs(objective_gradients(W_star, H, H0, K, **LAM)[0]).max() < 1e-12
    H_star = optimal_features(W, H0, K, LAM["lam_H"], LAM["beta"])
    assert np.abs(objective_gradients(W, H_star, H0, K, **LAM)[1]).max() < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_solver_reaches_a_stationary_point_no_worse_than_joint_descent(seed):
    from scipy.optimize import minimize

    _, H0, _, _, K = small_problem(seed)
    sol = tied_features_solve(H0, K, **LAM)
    assert sol.converged
    gW, gH = objective_gradients(sol.W, sol.H, H0, K, **LAM)
    assert max(np.abs(gW).max(), np.abs(gH).max()) < 1e-10
    # joint minimisation over (W, H) from the same start finds no lower value
    d, Kn = H0.shape
    W0 = optimal_classifier(H0, K, LAM["lam_W"])

    def joint(z):
        W, H = z[: K * d].reshape(K, d), z[K * d:].reshape(d, Kn)
        gW, gH = objective_gradients(W, H, H0, K, **LAM)
        return objective(W, H, H0, K, **LAM), np.concatenate([gW.ravel(), gH.ravel()])

    ref = minimize(joint, np.concatenate([W0.ravel(), H0.ravel()]), jac=True, method="L-BFGS-B",
                   options=dict(gtol=1e-12, ftol=1e-15, maxiter=5000))
    assert sol.objectives[-1] <= ref.fun + 1e-10
    assert sol.objectives[-1] <= sol.objectives[0]


def test_collapsed_input_is_a_fixed_point():
    """The paper's Corollary: for H0 = a collapsed UFM minimiser, (W*, H*) solves the model."""
    rng = np.random.default_rng(4)
    lam_W, lam_H = 0.8, 0.4
    W_star, H_star = collapsed_minimizer(7, 3, 5, lam_W, lam_H, rng)
    sol = tied_features_solve(H_star, 3, lam_W, lam_H, beta=5.0)
    np.testing.assert_allclose(sol.H, H_star, atol=1e-10)
    np.testing.assert_allclose(sol.W, W_star, atol=1e-10)


def test_central_path_velocity_is_minus_Kn_grad_of_reduced_loss():
    _, H0, _, H, K = small_problem(5)
    lam_W, lam_H = 0.5, 0.2
    Kn = H.shape[1]

    def reduced(Hm):
        return objective(optimal_classifier(Hm, K, lam_W), Hm, Hm, K, lam_W, lam_H, 0.0)

    grad = fd_vec(reduced, H).reshape(H.shape, order="F")
    np.testing.assert_allclose(central_path_velocity(H, K, lam_W, lam_H), -Kn * grad,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lam_H", [0.0, 0.1])
def test_flow_decreases_nc1_tilde_and_separates_traces(lam_H):
    _, H0, *_ = small_problem(6, d=8, K=4, n=6)
    trace = central_path_flow(H0, 4, 0.1, lam_H, dt=1e-3, steps=2000, log_every=10)
    assert np.all(np.diff(trace.nc1_tilde) < 0)
    scale = np.exp(2 * lam_H * trace.times)
    assert np.all(np.diff(scale * trace.trace_within) <= 1e-12)
    assert np.all(np.diff(scale * trace.trace_between) > 0)


def test_implicit_step_matches_flow_for_large_beta():
    """H_{1/beta} is a backward-Euler step of length 1/beta along the central-path flow."""
    _, H0, *_ = small_problem(7)
    lam_W, lam_H, beta = 0.5, 0.2, 200.0
    step = tied_features_solve(H0, 3, lam_W, lam_H, beta).H - H0
    velocity = central_path_velocity(H0, 3, lam_W, lam_H)
    assert np.linalg.norm(beta * step - velocity) < 0.02 * np.linalg.norm(velocity)
    assert nc1_tilde(H0 + step, 3) < nc1_tilde(H0, 3)


def test_layerwise_features_reduce_nc1():
    _, H0, *_ = small_problem(8, d=8, K=4, n=6)
    layers = layerwise_features(H0, 4, 0.1, 0.01, 1.0, depth=3)
    values = [nc1_tilde(h, 4) for h in layers]
    assert len(layers) == 4 and all(b < a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("seed", range(2))
def test_hessian_blocks_match_finite_differences(seed):
    _, H0, W, H, K = small_problem(seed)
    D_HH, D_HW, D_WW = hessian_blocks(W, H, K, **LAM)
    gH = lambda V: objective_gradients(W, V, H0, K, **LAM)[1]  # noqa: E731
    gH_of_W = lambda V: objective_gradients(V, H, H0, K, **LAM)[1]  # noqa: E731
    gW_of_W = lambda V: objective_gradients(V, H, H0, K, **LAM)[0]  # noqa: E731
    np.testing.assert_allclose(D_HH, fd_vec(gH, H), atol=1e-7)
    np.testing.assert_allclose(D_HW, fd_vec(gH_of_W, W), atol=1e-7)
    np.testing.assert_allclose(D_WW, fd_vec(gW_of_W, W), atol=1e-7)


def test_first_order_formula_error_is_second_order():
    rng = np.random.default_rng(9)
    d, K, n, lam_W, lam_H, beta = 6, 3, 4, 0.7, 0.5, 10.0
    W_star, H_star = collapsed_minimizer(d, K, n, lam_W, lam_H, rng)
    E = rng.standard_normal(H_star.shape)
    errors = []
    for delta in (1e-2, 1e-3):
        exact = tied_features_solve(H_star + delta * E, K, lam_W, lam_H, beta).H
        pred = first_order_minimizer(W_star, H_star, delta * E, K, lam_W, lam_H, beta)
        errors.append(np.linalg.norm(pred - exact))
        assert np.linalg.norm(exact - H_star) > 1e3 * errors[-1]
    assert errors[0] / errors[1] == pytest.approx(100, rel=0.1)  # error ~ delta^2


def test_large_beta_block_spectrum_matches_the_paper():
    rng = np.random.default_rng(10)
    d, K, n, lam_W, lam_H, beta = 7, 3, 4, np.sqrt(2), 0.4, 100.0
    W_star, H_star = collapsed_minimizer(d, K, n, lam_W, lam_H, rng)
    F = perturbation_operator(W_star, H_star, K, lam_W, lam_H, beta, large_beta=True)
    spectra = operator_block_spectra(F, d, K, n)
    want = predicted_block_singular_values(lam_W, lam_H, beta)
    np.testing.assert_allclose(spectra["intra"][:, 0], want["intra_max"], rtol=1e-10)
    np.testing.assert_allclose(spectra["intra"][:, -1], want["intra_min"], rtol=1e-10)
    np.testing.assert_allclose(spectra["inter"][:, 0], want["inter_max"], rtol=1e-8)
    assert spectra["inter"][:, 1].max() < 1e-12  # inter-class blocks are rank one
    # the exact operator agrees with its expansion up to O(beta^-2)
    F_exact = perturbation_operator(W_star, H_star, K, lam_W, lam_H, beta)
    assert np.abs(F_exact - F).max() < 10 / beta**2


def test_data_helpers():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((50, 5))
    y = np.repeat([2, 0, 1], [20, 15, 15])
    Xo, yo = balanced_by_class(X, y, 10, rng)
    np.testing.assert_array_equal(yo, np.repeat([0, 1, 2], 10))
    F = random_relu_features(Xo, 16, rng)
    assert F.shape == (16, 30) and np.mean(np.sum(F**2, 0)) == pytest.approx(1)


def test_layerwise_mlp_runs():
    rng = np.random.default_rng(12)
    X = np.repeat(rng.standard_normal((3, 6)), 8, axis=0) + 0.3 * rng.standard_normal((24, 6))
    feats = train_layerwise_mlp(X, 3, 2, width=8, epochs=20)
    assert len(feats) == 2 and feats[0].shape == (8, 24)


def test_bad_inputs_raise():
    _, H0, W, H, K = small_problem(0)
    with pytest.raises(ValueError, match="multiple of K"):
        nc1(H0[:, :-1], K)
    with pytest.raises(ValueError, match="K must be"):
        nc1(H0, 1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        tied_features_solve(H0, K, 0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="lam_W must be > 0"):
        optimal_classifier(H0, K, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        tied_features_solve(H0, K, -1.0, 0.1, 1.0)
    with pytest.raises(ValueError, match=">= 1"):
        collapsed_minimizer(4, 3, 2, 2.0, 2.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="d >= K"):
        collapsed_minimizer(2, 3, 2, 0.1, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="dt > 0"):
        central_path_flow(H0, K, 0.1, 0.1, dt=0.0)
    with pytest.raises(ValueError, match="NaN"):
        nc1(np.full_like(H0, np.nan), K)
    with pytest.raises(ValueError, match="coincide"):
        nc1_tilde(np.ones_like(H0), K)
    with pytest.raises(ValueError, match="fewer than n"):
        balanced_by_class(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="W must be"):
        hessian_blocks(W.T, H, K, **LAM)
