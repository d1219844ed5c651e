"""Orthogonal convolutions: existence conditions, L_orth, singular values, the optimiser."""

import itertools

import numpy as np
import pytest
import torch

from lib.nn.orthogonal_conv import (
    BOUNDARIES,
    conv_matrix,
    l_orth,
    l_orth_value_and_grad,
    minimize_orthogonality,
    orthogonal_conv_exists,
    orthogonal_kernel_example,
    orthogonality_errors,
    orthogonality_kind,
    paper_spectral_bound,
    singular_values_dense,
    singular_values_fft,
    size_assumption_holds,
    spectral_bound,
    tiling_witness,
)


def test_conv_matrix_matches_torch_circular_and_zero_padding():
    rng = np.random.default_rng(0)
    K = rng.normal(size=(3, 2, 3, 3))
    X = rng.normal(size=(2, 8, 8))
    W = torch.tensor(K)
    x = torch.tensor(X)[None]
    circ = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 2, 0, 2), mode="circular"),
                                      W, stride=2)
    np.testing.assert_allclose(conv_matrix(K, 4, 2, "circular") @ X.ravel(), circ.numpy().ravel(),
                               atol=1e-12)
    zero = torch.nn.functional.conv2d(x, W, stride=2, padding=1)
    np.testing.assert_allclose(conv_matrix(K, 4, 2, "zeros") @ X.ravel(), zero.numpy().ravel(),
                               atol=1e-12)
    valid = torch.nn.functional.conv2d(x, W, stride=2)
    np.testing.assert_allclose(conv_matrix(K, 4, 2, "valid") @ X.ravel(),
                               valid.numpy().ravel(), atol=1e-12)


@pytest.mark.parametrize("shape,S,N", [((4, 3, 3, 3), 1, 5), ((4, 3, 3, 3), 2, 4),
                                       ((5, 2, 5, 5), 3, 3), ((2, 3, 2, 2), 2, 2),
                                       ((3, 2, 5, 5), 1, 3)])
def test_fft_singular_values_equal_dense_svd(shape, S, N):
    K = np.random.default_rng(1).normal(size=shape)
    np.testing.assert_allclose(singular_values_fft(K, N, S), singular_values_dense(K, N, S),
                               atol=1e-10)


@pytest.mark.parametrize("M,C,k,S", [(4, 4, 3, 2), (3, 2, 5, 2), (6, 2, 3, 1), (2, 3, 3, 1)])
def test_frobenius_identity_and_spectral_bound(M, C, k, S):
    """||G - I||_F² = N² L_orth (RO) or N² (L_orth - (M - C S²)) (CO), for N large enough."""
    K = 0.3 * np.random.default_rng(2).normal(size=(M, C, k, k))
    L = l_orth(K, S)
    for N in (2 * ((k - 1) // S) + 1, 7):
        err = orthogonality_errors(K, N, S)
        assert err["frobenius"] == pytest.approx(N**2 * L, rel=1e-9)
        if M <= C * S**2:
            assert err["spectral"] <= spectral_bound(L, k, S) * (1 + 1e-12)


def test_l_orth_zero_on_orthogonal_kernels_and_positive_otherwise():
    rng = np.random.default_rng(3)
    for M, C, k, S in [(4, 4, 3, 2), (16, 2, 3, 2), (2, 2, 3, 1), (8, 1, 2, 2)]:
        K = orthogonal_kernel_example(M, C, k, S, rng=rng)
        assert abs(l_orth(K, S)) < 1e-12
        assert orthogonality_errors(K, 6, S)["spectral"] < 1e-12
        assert l_orth(K + 0.01 * rng.normal(size=K.shape), S) > 1e-6
    # identity 1x1 kernel (delta kernel) is orthogonal for stride 1
    K = np.zeros((3, 3, 3, 3))
    K[:, :, 1, 1] = np.eye(3)
    assert l_orth(K, 1) == 0.0


def test_l_orth_gradient_matches_autograd_and_finite_differences():
    rng = np.random.default_rng(4)
    Ks = rng.normal(size=(2, 3, 2, 3, 3))
    value, grad = l_orth_value_and_grad(Ks, 2)
    for r in range(2):
        W = torch.tensor(Ks[r], requires_grad=True)
        out = l_orth(W, 2, mode="RO")
        out.backward()
        assert value[r] == pytest.approx(out.item(), rel=1e-12)
        np.testing.assert_allclose(grad[r], W.grad.numpy(), rtol=1e-10, atol=1e-10)
    h, i = 1e-6, (0, 1, 1, 2, 0)
    E = np.zeros_like(Ks)
    E[i] = h
    numeric = (l_orth_value_and_grad(Ks + E, 2)[0] - l_orth_value_and_grad(Ks - E, 2)[0]) / (2 * h)
    assert numeric[0] == pytest.approx(grad[i], rel=1e-6)


def test_existence_conditions_on_known_cases():
    assert orthogonality_kind(4, 4, 2) == "RO" and orthogonality_kind(16, 2, 2) == "CO"
    assert orthogonality_kind(8, 2, 2) == "square"
    # circular (the paper's theorem): RO iff M <= C k², CO iff k >= S
    assert orthogonal_conv_exists(4, 4, 3, 2).exists
    assert not orthogonal_conv_exists(8, 1, 1, 2).exists  # CO with k < S
    assert not orthogonal_conv_exists(3, 1, 1, 2).exists  # RO with M > C k²
    assert orthogonal_conv_exists(2, 2, 1, 2).exists  # RO with k < S but M <= C k²
    # non-circular boundaries
    assert not orthogonal_conv_exists(6, 1, 3, 3, "zeros").exists
    assert orthogonal_conv_exists(6, 1, 3, 3, "valid").exists
    assert not orthogonal_conv_exists(16, 2, 3, 2, "valid").exists
    assert orthogonal_conv_exists(16, 2, 3, 2, "zeros").exists


def test_existence_examples_are_orthogonal_for_every_boundary():
    rng = np.random.default_rng(5)
    for M, C, k, S, boundary in itertools.product([1, 2, 4, 6, 9], [1, 2], [1, 2, 3, 5],
                                                  [1, 2, 3], BOUNDARIES):
        if orthogonal_conv_exists(M, C, k, S, boundary).exists:
            K = orthogonal_kernel_example(M, C, k, S, boundary, rng)
            for N in (max(3, k), 7):  # the window witness works at every size
                err = orthogonality_errors(K, N, S, boundary)
                assert err["spectral"] < 1e-10, (M, C, k, S, N, boundary)


@pytest.mark.parametrize("M,C,k,S,boundary", [(6, 1, 3, 3, "zeros"), (16, 2, 3, 2, "valid"),
                                              (8, 1, 1, 2, "circular")])
def test_non_existence_cases_stay_away_from_orthogonality(M, C, k, S, boundary):
    trace = minimize_orthogonality(M, C, k, S, steps=300, lr=2e-2, restarts=2,
                                   objective="dense", N=3, boundary=boundary)
    for K in trace.kernels:
        assert orthogonality_errors(K, 3, S, boundary)["spectral"] > 0.5


def test_minimizer_reaches_orthogonality_in_a_feasible_setting():
    trace = minimize_orthogonality(4, 4, 3, 2, steps=1500, lr=1e-2, restarts=2, n_snapshots=5)
    assert trace.losses.shape == (1500, 2) and len(trace.snapshots) == 5
    for K in trace.kernels:
        s = singular_values_fft(K, 8, 2)
        assert np.all(np.abs(s - 1) < 1e-3)


def test_tiling_search_agrees_with_large_image_conditions():
    """Where the image is large enough for the border argument, a tap tiling exists exactly
    when the conditions say an orthogonal layer does (the constructive half, by search)."""
    checked = 0
    for M, C, k, S, N, boundary in itertools.product([1, 2, 4, 5, 9], [1, 2], [1, 2, 3, 5],
                                                     [1, 2, 3], [2, 4, 5], BOUNDARIES):
        if S * N < k:
            continue
        K = tiling_witness(M, C, k, S, N, boundary)
        if K is not None:
            assert orthogonality_errors(K, N, S, boundary)["spectral"] < 1e-10
        if size_assumption_holds(M, C, k, S, N, boundary):
            assert (K is not None) == orthogonal_conv_exists(M, C, k, S, boundary).exists, (
                M, C, k, S, N, boundary)
            checked += 1
    assert checked > 500


def test_corner_taps_make_a_small_valid_layer_column_orthogonal():
    # (5, 1, 3, 1), "valid", N = 4: 4 x 4 input, 2 x 2 output, the four corner taps tile it
    assert not orthogonal_conv_exists(5, 1, 3, 1, "valid").exists
    assert not size_assumption_holds(5, 1, 3, 1, 4, "valid")
    K = tiling_witness(5, 1, 3, 1, 4, "valid")
    assert K is not None
    np.testing.assert_array_equal(np.abs(K[:, 0]).sum(axis=0) > 0,
                                  [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
    assert orthogonality_errors(K, 4, 1, "valid")["spectral"] < 1e-12
    info = orthogonal_conv_exists(5, 1, 3, 1, "valid", N=4)
    assert info.exists is True and "too small" in info.reason
    # one size up the border argument applies and the large-image verdict stands
    assert size_assumption_holds(5, 1, 3, 1, 5, "valid")
    assert orthogonal_conv_exists(5, 1, 3, 1, "valid", N=5).exists is False
    assert tiling_witness(5, 1, 3, 1, 5, "valid") is None
    trace = minimize_orthogonality(5, 1, 3, 1, steps=300, lr=2e-2, restarts=2,
                                   objective="dense", N=5, boundary="valid")
    for K in trace.kernels:
        assert orthogonality_errors(K, 5, 1, "valid")["spectral"] > 0.1


def test_circular_conditions_hold_at_every_size():
    for M, C, k, S, N in itertools.product([1, 3, 8], [1, 2], [1, 3], [1, 2], [1, 2, 3]):
        assert size_assumption_holds(M, C, k, S, N, "circular")


def test_paper_form_spectral_bound_holds_and_is_looser_for_ro():
    rng = np.random.default_rng(6)
    for M, C, k, S in [(4, 4, 3, 2), (16, 2, 3, 2), (6, 2, 3, 1), (8, 2, 3, 2)]:
        K = 0.2 * rng.normal(size=(M, C, k, k))
        L = max(l_orth(K, S), 0.0)
        for N in (5, 8):
            assert orthogonality_errors(K, N, S)["spectral"] <= paper_spectral_bound(
                L, M, C, k, S) * (1 + 1e-12)
    assert paper_spectral_bound(1.0, 4, 4, 3, 2) == pytest.approx(2 * spectral_bound(1.0, 3, 2))


def test_bad_input():
    K = np.zeros((2, 2, 3, 3))
    with pytest.raises(ValueError, match="positive integer"):
        orthogonal_conv_exists(0, 2, 3, 1)
    with pytest.raises(ValueError, match="boundary"):
        orthogonal_conv_exists(2, 2, 3, 1, "reflect")
    with pytest.raises(ValueError, match="shape"):
        l_orth(np.zeros((2, 2, 3, 2)), 1)
    with pytest.raises(ValueError, match="stride"):
        l_orth(K, 0)
    with pytest.raises(ValueError, match="mode"):
        l_orth(K, 1, mode="both")
    with pytest.raises(ValueError, match="output size"):
        singular_values_fft(K, 0, 1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv_matrix(np.zeros((1, 1, 5, 5)), 1, 2, "valid")
    with pytest.raises(ValueError, match="no orthogonal convolution"):
        orthogonal_kernel_example(8, 1, 1, 2)
    with pytest.raises(ValueError, match="needs an output size"):
        minimize_orthogonality(2, 2, 3, 1, objective="dense")
    with pytest.raises(ValueError, match="circular"):
        minimize_orthogonality(2, 2, 3, 1, boundary="zeros")
    with pytest.raises(ValueError, match="squared norm"):
        spectral_bound(-1.0, 3, 1)
    with pytest.raises(ValueError, match="squared norm"):
        paper_spectral_bound(-1.0, 2, 2, 3, 1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        tiling_witness(2, 1, 5, 1, 2, "valid")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        size_assumption_holds(2, 1, 5, 1, 2, "valid")
    with pytest.raises(ValueError, match="output size"):
        size_assumption_holds(2, 1, 3, 1, 0, "zeros")
    with pytest.raises(ValueError, match="boundary"):
        tiling_witness(2, 1, 3, 1, 4, "reflect")
