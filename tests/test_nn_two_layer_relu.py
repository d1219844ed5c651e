"""Sharpness and norms of two-layer ReLU networks (lib.nn.two_layer_relu)."""

import numpy as np
import pytest
import torch

from lib.nn.linear_stability import gauss_newton_trace
from lib.nn.two_layer_relu import (
    data_path_norm,
    mean_relu_on_sphere,
    neuron_data_weights,
    path_norm,
    relu_net_jacobian,
    relu_net_predict,
    relu_trace_closed_form,
    sphere_data,
    train_relu_net,
)


def random_net(seed=0, n=12, d=4, m=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(m), rng.standard_normal((m, d)), rng.standard_normal((n, d))


def test_jacobian_matches_torch_autograd():
    a, W, X = random_net()
    a_t = torch.tensor(a, requires_grad=True)
    W_t = torch.tensor(W, requires_grad=True)
    rows = []
    for x in torch.tensor(X):
        f = torch.relu(W_t @ x) @ a_t
        ga, gW = torch.autograd.grad(f, (a_t, W_t))
        rows.append(torch.cat([ga, gW.reshape(-1)]).numpy())
    np.testing.assert_allclose(relu_net_jacobian(a, W, X), np.array(rows), atol=1e-12)
    np.testing.assert_allclose(relu_net_predict(a, W, X),
                               np.maximum(X @ W.T, 0) @ a, atol=1e-12)


def test_trace_closed_form_equals_gauss_newton_and_full_hessian_trace():
    a, W, X = random_net(1)
    y = relu_net_predict(a, W, X)  # interpolating: H is the Gauss-Newton matrix
    J = relu_net_jacobian(a, W, X)
    tr = relu_trace_closed_form(a, W, X)
    assert tr == pytest.approx(gauss_newton_trace(J), rel=1e-12)
    X_t, y_t = torch.tensor(X), torch.tensor(y)

    def loss(a_, W_):
        return 0.5 * ((torch.relu(X_t @ W_.T) @ a_ - y_t) ** 2).mean()

    H = torch.autograd.functional.hessian(loss, (torch.tensor(a), torch.tensor(W)))
    full_trace = torch.trace(H[0][0]) + torch.trace(H[1][1].reshape(W.size, W.size))
    assert tr == pytest.approx(float(full_trace), rel=1e-10)


def test_trace_bounds_twice_the_data_path_norm_and_path_norm():
    for seed in range(5):
        a, W, X = random_net(seed, n=30, d=3, m=10)
        ps = data_path_norm(a, W, X)
        assert relu_trace_closed_form(a, W, X) >= 2 * ps - 1e-12
        c = neuron_data_weights(W, X)
        assert ps >= c.min() * path_norm(a, W) - 1e-12
        assert ps == pytest.approx(np.sum(np.abs(a) * np.linalg.norm(W, axis=1) * c))


def test_am_gm_is_tight_for_a_balanced_single_neuron():
    # one neuron, one sample, relu(w.x) = |a| ||x||: the two terms are equal
    X = np.array([[0.6, 0.8]])
    W = np.array([[1.5, 2.0]])  # w.x = 2.5
    a = np.array([2.5])
    assert relu_trace_closed_form(a, W, X) == pytest.approx(2 * data_path_norm(a, W, X))


def test_path_norm_and_neuron_weights_known_values():
    a = np.array([2.0, -1.0, 0.5])
    W = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert path_norm(a, W) == pytest.approx(2 * 5 + 0 + 0.5)
    X = np.array([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(neuron_data_weights(W, X), [0.3, 0.0, 0.5])


def test_mean_relu_on_sphere_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for d in (2, 5, 20):
        x = sphere_data(200_000, d, rng)
        assert mean_relu_on_sphere(d) == pytest.approx(np.maximum(x[:, 0], 0).mean(), abs=3e-3)
    assert mean_relu_on_sphere(1) == pytest.approx(0.5)
    assert mean_relu_on_sphere(400) == pytest.approx(1 / np.sqrt(2 * np.pi * 400), rel=1e-2)


def test_sgd_training_interpolates_and_respects_the_trace_bound():
    rng = np.random.default_rng(0)
    X = sphere_data(10, 3, rng)
    y = relu_net_predict(np.array([1.0, -1.0]), sphere_data(2, 3, rng), X)
    a0 = rng.standard_normal((3, 20)) / np.sqrt(20)
    W0 = rng.standard_normal((3, 20, 3))
    run = train_relu_net(X, y, a0, W0, eta=0.3, batch_size=1, steps=20_000,
                         rng=np.random.default_rng(1), clip=2.0, loss_tol=1e-6)
    assert not run.diverged.any()
    assert np.all(run.train_loss < 1e-5)
    for r in range(3):
        assert 0.3 * relu_trace_closed_form(run.a[r], run.W[r], X) <= 2.0
    gd = train_relu_net(X, y, a0, W0, eta=np.array([0.1, 0.2, 0.3]), batch_size=10, steps=50,
                        rng=np.random.default_rng(1))
    assert gd.steps.max() == 50 and gd.eta.tolist() == [0.1, 0.2, 0.3]


def test_training_marks_divergence():
    rng = np.random.default_rng(0)
    X = sphere_data(10, 3, rng)
    y = np.ones(10)
    run = train_relu_net(X, y, rng.standard_normal((1, 5)) * 3, rng.standard_normal((1, 5, 3)) * 3,
                         eta=50.0, batch_size=10, steps=1000, rng=rng)
    assert run.diverged.all() and np.isnan(run.a).all()


def test_bad_inputs_raise():
    a, W, X = random_net()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shape"):
        relu_net_jacobian(a[:-1], W, X)
    with pytest.raises(ValueError, match="X must be"):
        relu_trace_closed_form(a, W, X[:, :-1])
    with pytest.raises(ValueError, match="non-finite"):
        path_norm(np.full_like(a, np.nan), W)
    with pytest.raises(ValueError, match="same d"):
        neuron_data_weights(W, X[:, :-1])
    with pytest.raises(ValueError, match="n >= 1"):
        sphere_data(0, 3, rng)
    with pytest.raises(ValueError, match="at least 1"):
        mean_relu_on_sphere(0)
    y = np.zeros(X.shape[0])
    a0, W0 = a[None], W[None]
    with pytest.raises(ValueError, match="positive"):
        train_relu_net(X, y, a0, W0, eta=0.0, batch_size=1, steps=10, rng=rng)
    with pytest.raises(ValueError, match="batch_size"):
        train_relu_net(X, y, a0, W0, eta=0.1, batch_size=X.shape[0] + 1, steps=10, rng=rng)
    with pytest.raises(ValueError, match="a0 must be"):
        train_relu_net(X, y, a, W, eta=0.1, batch_size=1, steps=10, rng=rng)
    with pytest.raises(ValueError, match="clip"):
        train_relu_net(X, y, a0, W0, eta=0.1, batch_size=1, steps=10, rng=rng, clip=-1.0)
    with pytest.raises(ValueError, match="y"):
        train_relu_net(X, y[:-1], a0, W0, eta=0.1, batch_size=1, steps=10, rng=rng)
