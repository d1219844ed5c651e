"""Hessian estimators (lib.nn.hessian) against exact Hessians of tiny torch models."""

import numpy as np
import pytest
import torch

from lib.nn.hessian import (
    HessianOperator,
    exact_hessian,
    hessian_vector_product,
    hutchinson_trace,
    lanczos_top_eigenvalues,
    power_iteration,
)


def tiny_mlp(seed: int):
    """A 3-4-1 tanh network on 6 points, float64, with its loss closure."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    W1 = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    w2 = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    params = [W1, w2]

    def loss():
        return 0.5 * ((torch.tanh(X @ W1.T) @ w2 - y) ** 2).mean()

    return loss, params


def quadratic(seed: int, dim: int = 7):
    """f(x) = x^T A x / 2 with a known symmetric A (its Hessian)."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(dim, dim))
    A = torch.tensor(M @ M.T / dim + np.diag(rng.uniform(0, 3, dim)))
    x = torch.tensor(rng.normal(size=dim), requires_grad=True)
    return (lambda: 0.5 * x @ A @ x), [x], A


@pytest.mark.parametrize("seed", range(3))
def test_exact_hessian_matches_known_quadratic_and_autograd(seed):
    loss, params, A = quadratic(seed)
    torch.testing.assert_close(exact_hessian(loss, params), A)
    loss, params = tiny_mlp(seed)
    H = exact_hessian(loss, params)
    W1, w2 = params

    def flat_loss(theta):
        a, b = theta[:12].reshape(4, 3), theta[12:]
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(6, 3, generator=g, dtype=torch.float64)
        y = torch.randn(6, generator=g, dtype=torch.float64)
        return 0.5 * ((torch.tanh(X @ a.T) @ b - y) ** 2).mean()

    theta = torch.cat([W1.detach().reshape(-1), w2.detach()])
    reference = torch.autograd.functional.hessian(flat_loss, theta)
    torch.testing.assert_close(H, reference)


def test_hessian_vector_product_matches_finite_differences_of_the_gradient():
    loss, params = tiny_mlp(5)
    v = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = hessian_vector_product(loss, params, v)
    theta = [p.detach().clone() for p in params]

    def grad_at(shift):
        ps = []
        offset = 0
        for p in theta:
            q = (p + shift * v[offset : offset + p.numel()].reshape(p.shape)).requires_grad_()
            ps.append(q)
            offset += p.numel()
        for p, q in zip(params, ps):
            p.data.copy_(q.data)
        g = torch.autograd.grad(loss(), params)
        return torch.cat([x.reshape(-1) for x in g])

    h = 1e-5
    numeric = (grad_at(h) - grad_at(-h)) / (2 * h)
    for p, q in zip(params, theta):
        p.data.copy_(q)
    torch.testing.assert_close(hv, numeric, rtol=1e-6, atol=1e-8)


def test_hutchinson_is_unbiased_and_rademacher_exact_on_diagonal():
    seed = 0
    loss, params = tiny_mlp(seed)
    H = exact_hessian(loss, params)
    g = torch.Generator().manual_seed(seed)
    est = hutchinson_trace(loss, params, n_samples=500, generator=g)
    assert abs(est.value - float(torch.trace(H))) < 4 * est.stderr + 1e-12
    gauss = hutchinson_trace(loss, params, n_samples=500, distribution="gaussian", generator=g)
    assert abs(gauss.value - float(torch.trace(H))) < 4 * gauss.stderr + 1e-12
    # For a diagonal Hessian every Rademacher probe gives the trace exactly
    d = torch.tensor([1.0, 2.0, 3.5], dtype=torch.float64)
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    exact = hutchinson_trace(lambda: 0.5 * (d * x * x).sum(), [x], n_samples=5, generator=g)
    np.testing.assert_allclose(exact.samples, 6.5)


@pytest.mark.parametrize("seed", range(3))
def test_power_iteration_and_lanczos_find_the_top_eigenvalues(seed):
    loss, params, A = quadratic(seed, dim=9)
    eig = np.linalg.eigvalsh(A.numpy())[::-1]
    g = torch.Generator().manual_seed(seed)
    top = power_iteration(loss, params, max_iter=5000, tol=1e-12, generator=g)
    assert top.converged
    assert top.value == pytest.approx(eig[0], rel=1e-6)
    torch.testing.assert_close(A @ top.vector, top.value * top.vector, rtol=0, atol=1e-4)
    np.testing.assert_allclose(lanczos_top_eigenvalues(loss, params, k=3), eig[:3], rtol=1e-8)
    loss, params = tiny_mlp(seed)
    H = exact_hessian(loss, params).numpy()
    np.testing.assert_allclose(
        lanczos_top_eigenvalues(loss, params, k=2), np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-7
    )


def test_operator_counts_products_and_handles_unused_and_linear_parameters():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)
    op = HessianOperator(lambda: (x * x).sum(), [x, unused])
    out = op.matvec(torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([2, 2, 2, 0, 0], dtype=torch.float64))
    assert op.n_products == 1
    linear = HessianOperator(lambda: (2 * x).sum(), [x])
    torch.testing.assert_close(linear.matvec(torch.ones(3, dtype=torch.float64)),
                               torch.zeros(3, dtype=torch.float64))


def test_bad_inputs_raise_value_errors():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    loss = lambda: (x * x).sum()  # noqa: E731
    with pytest.raises(ValueError, match="at least one"):
        HessianOperator(loss, [])
    with pytest.raises(ValueError, match="requires_grad"):
        HessianOperator(loss, [torch.ones(3)])
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(lambda: x * x, [x])
    with pytest.raises(ValueError, match="entries"):
        hessian_vector_product(loss, [x], torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_samples"):
        hutchinson_trace(loss, [x], n_samples=0)
    with pytest.raises(ValueError, match="distribution"):
        hutchinson_trace(loss, [x], distribution="uniform")
    with pytest.raises(ValueError, match="max_iter"):
        power_iteration(loss, [x], max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        power_iteration(loss, [x], tol=0)
    with pytest.raises(ValueError, match="k must"):
        lanczos_top_eigenvalues(loss, [x], k=3)
