"""Sign binarisation with STE / ReSTE / EDE / zero gradients, the indicators, the digits loop."""

import math

import numpy as np
import pytest
import torch

from lib.nn.binary import (
    BinaryLinear,
    binarize,
    binary_mlp,
    ede_derivative,
    equilibrium_indicators,
    estimating_error,
    gradient_instability,
    indicator_logger,
    o_schedule,
    power_forward,
    reste_derivative,
    set_estimator,
    ste_derivative,
    summarize_indicators,
    surrogate_derivative,
    training_indicators,
)
from lib.nn.digits import accuracy, load_digits_split, train_classifier


def grad_through(x: torch.Tensor, estimator: str, **params) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    upstream = torch.linspace(-2.0, 3.0, x.numel()).reshape(x.shape)
    (binarize(x, estimator, **params) * upstream).sum().backward()
    return x.grad


@pytest.mark.parametrize("seed", range(3))
def test_reste_with_o_one_is_exactly_ste(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, generator=g) * 1.5
    x[:6] = torch.tensor([0.0, 0.1, -0.1, 1.0, -1.0, 0.05])  # region boundaries
    for clip in (1.0, 1.5):
        a = grad_through(x, "reste", o=1.0, t=clip)
        b = grad_through(x, "ste", clip=clip)
        assert torch.equal(a, b)  # max abs diff exactly 0
        assert torch.equal(reste_derivative(x, 1.0, t=clip), ste_derivative(x, clip))


@pytest.mark.parametrize("o", [1.5, 2.0, 3.0, 7.0])
def test_reste_derivative_is_the_power_function_derivative(o):
    x = torch.cat([torch.linspace(0.12, 1.45, 50), -torch.linspace(0.12, 1.45, 50)]).double()
    h = 1e-6
    numeric = (power_forward(x + h, o) - power_forward(x - h, o)) / (2 * h)
    torch.testing.assert_close(reste_derivative(x, o), numeric, rtol=1e-6, atol=1e-8)


def test_reste_secant_region_and_clipping():
    o, t, interval = 3.0, 1.5, 0.1
    inside = torch.tensor([0.0, 0.03, -0.07, 0.1, -0.1])
    slope = power_forward(torch.tensor(interval), o).item() / interval
    torch.testing.assert_close(reste_derivative(inside, o, t, interval), torch.full((5,), slope))
    outside = torch.tensor([1.51, -2.0, 10.0])
    assert torch.equal(reste_derivative(outside, o, t, interval), torch.zeros(3))
    # the derivative is even in x and shrinks with |x| beyond the secant region
    x = torch.linspace(0.11, 1.5, 30)
    d = reste_derivative(x, o)
    assert torch.equal(d, reste_derivative(-x, o))
    assert torch.all(d[1:] < d[:-1])


def test_forward_is_sign_and_zero_estimator_blocks_gradients():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 5.0])
    for est, params in [("ste", {}), ("reste", {"o": 2.0}), ("ede", {"progress": 0.5}),
                        ("zero", {})]:
        assert torch.equal(binarize(x, est, **params), torch.sign(x))
    assert torch.equal(grad_through(x, "zero"), torch.zeros(5))


def test_power_forward_interpolates_between_identity_and_sign():
    x = torch.linspace(-2, 2, 41)
    torch.testing.assert_close(power_forward(x, 1.0), x)
    far = power_forward(x, 1e6)
    torch.testing.assert_close(far, torch.sign(x), atol=2e-5, rtol=0)


def test_ede_derivative_matches_its_tanh_function():
    for progress in (0.0, 0.5, 1.0):
        t = 0.1 * 10 ** (2 * progress)
        k = max(1 / t, 1.0)
        x = torch.linspace(-1.5, 1.5, 31).double()
        h = 1e-6
        numeric = (k * torch.tanh(t * (x + h)) - k * torch.tanh(t * (x - h))) / (2 * h)
        torch.testing.assert_close(ede_derivative(x, progress), numeric, rtol=1e-6, atol=1e-8)


def test_estimating_error_closed_forms_and_monotone_in_o():
    w = torch.tensor([0.25, -0.04, 1.0, -1.0, 2.25])
    expected = math.sqrt(0.75**2 + 0.96**2 + 0 + 0 + 1.25**2)
    assert estimating_error(w, 1.0) == pytest.approx(expected, rel=1e-6)
    expected_o2 = math.sqrt(0.5**2 + 0.8**2 + 0.5**2)
    assert estimating_error(w, 2.0) == pytest.approx(expected_o2, rel=1e-6)
    errors = [estimating_error(w, o) for o in (1, 1.5, 2, 3, 5, 10)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert estimating_error(torch.tensor([1.0, -1.0]), 4.0) == 0.0


def test_gradient_instability_is_variance_of_absolute_gradient():
    g = torch.tensor([[0.5, -1.0], [2.0, -0.25]])
    assert gradient_instability(g) == pytest.approx(np.var([0.5, 1.0, 2.0, 0.25], ddof=1))


def test_o_schedule_endpoints_and_monotonicity():
    values = [o_schedule(e, 20, 3.0) for e in range(21)]
    assert values[0] == 1.0
    assert values[-1] == pytest.approx(3.0)
    assert all(b > a for a, b in zip(values, values[1:]))


def test_binary_linear_forward_and_weight_gradient():
    torch.manual_seed(0)
    layer = BinaryLinear(5, 3, "reste", o=2.0)
    a = torch.randn(4, 5)
    out = layer(a)
    alpha = layer.weight.abs().mean()
    torch.testing.assert_close(out, torch.sign(a) @ (alpha * torch.sign(layer.weight)).T)
    # gradient of sum(out * u) w.r.t. latent W: through sign(W) (ReSTE factor) and through alpha
    u = torch.randn(4, 3)
    (out * u).sum().backward()
    G = u.T @ torch.sign(a)  # dL/d(alpha * sign W)
    w = layer.weight.detach()
    manual = alpha.detach() * G * reste_derivative(w, 2.0) + (G * torch.sign(w)).sum() * (
        torch.sign(w) / w.numel()
    )
    torch.testing.assert_close(layer.weight.grad, manual)


def test_equilibrium_indicators_trade_off_and_restore_state():
    torch.manual_seed(1)
    model = binary_mlp(8, 3, hidden=16, n_binary=2, estimator="ste", clip=1.0)
    X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = [equilibrium_indicators(model, [(X, y)], o) for o in (1.0, 1.5, 2.0, 3.0, 5.0)]
    errors, instab = zip(*results)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert all(b > a for a, b in zip(instab, instab[1:]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    assert all(m.estimator == "ste" and m.params == {"clip": 1.0} for m in layers)
    assert all(p.grad is None for p in model.parameters())


def test_indicators_logged_during_training_as_the_official_code():
    data = load_digits_split(0)
    torch.manual_seed(0)
    model = binary_mlp(64, 10, hidden=16, n_binary=2, estimator="reste", o=1.0, t=1.5)
    seen = []

    def end(epoch, net):  # the hook sees the epoch's last step: weights after it, its gradient
        layers = [m for m in net.modules() if isinstance(m, BinaryLinear)]
        seen.append((sum(estimating_error(m.weight, 3.0) for m in layers),
                     sum(float(m.weight.grad.abs().var()) for m in layers)))
        return indicator_logger(3.0)(epoch, net)

    log = train_classifier(model, data, epochs=2, batch_size=512, seed=0, on_epoch_end=end)
    assert len(log.extra["estimating_error"]) == 2 and len(log.extra["instability"]) == 2
    np.testing.assert_allclose(log.extra["estimating_error"], [e for e, _ in seen], rtol=1e-6)
    np.testing.assert_allclose(log.extra["instability"], [v for _, v in seen], rtol=1e-6)
    mean_error, total = summarize_indicators(log.extra)
    assert math.isclose(mean_error, np.mean([e for e, _ in seen]), rel_tol=1e-6)
    assert math.isclose(total, sum(v for _, v in seen), rel_tol=1e-6)
    error_now, instability_now = training_indicators(model, 3.0)
    assert math.isclose(error_now, seen[-1][0], rel_tol=1e-6)
    assert math.isclose(instability_now, seen[-1][1], rel_tol=1e-6)
    with pytest.raises(ValueError, match="no gradient"):
        training_indicators(binary_mlp(4, 2, hidden=4), 2.0)
    with pytest.raises(ValueError, match="no logged indicators"):
        summarize_indicators({})
    with pytest.raises(ValueError, match="exponent o"):
        indicator_logger(0.5)


def test_bad_inputs_raise():
    x = torch.randn(5)
    with pytest.raises(ValueError, match="exponent o"):
        power_forward(x, 0.5)
    with pytest.raises(ValueError, match="exponent o"):
        reste_derivative(x, float("inf"))
    with pytest.raises(ValueError, match="threshold t"):
        reste_derivative(x, 2.0, t=0.0)
    with pytest.raises(ValueError, match="interval"):
        reste_derivative(x, 2.0, t=1.0, interval=1.5)
    with pytest.raises(ValueError, match="clip"):
        ste_derivative(x, clip=-1.0)
    with pytest.raises(ValueError, match="progress"):
        ede_derivative(x, 1.5)
    with pytest.raises(ValueError, match="unknown estimator"):
        binarize(x, "bnn+")
    with pytest.raises(ValueError, match="unknown estimator"):
        surrogate_derivative(x, "tanh")
    with pytest.raises(ValueError, match="unknown estimator"):
        BinaryLinear(3, 3, "sigmoid")
    with pytest.raises(ValueError, match="no BinaryLinear"):
        set_estimator(torch.nn.Linear(2, 2), o=2.0)
    with pytest.raises(ValueError, match="epochs"):
        o_schedule(5, 3)
    with pytest.raises(ValueError, match="two entries"):
        gradient_instability(torch.ones(1))
    with pytest.raises(ValueError, match="empty"):
        equilibrium_indicators(binary_mlp(4, 2, hidden=4), [], 2.0)
    with pytest.raises(ValueError, match="n_classes"):
        binary_mlp(4, 1)


def test_digits_split_is_seeded_and_standardised():
    a, b = load_digits_split(0), load_digits_split(0)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert a.X_train.shape == (1437, 64) and a.X_test.shape == (360, 64)
    assert a.n_classes == 10 and a.n_features == 64
    assert a.X_train.mean(0).abs().max() < 1e-5
    assert not torch.equal(load_digits_split(1).X_train, a.X_train)
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(0, test_size=1.0)
    with pytest.raises(ValueError, match="seed"):
        load_digits_split(-1)


def test_training_loop_learns_and_logs_hook_values():
    data = load_digits_split(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    start = accuracy(model, data.X_test, data.y_test)
    log = train_classifier(model, data, epochs=3, batch_size=256, lr=1e-2, seed=0,
                           on_epoch_start=lambda e, m: {"epoch": e})
    assert log.final_test_accuracy > max(start, 0.85)
    assert log.extra["epoch"] == [0.0, 1.0, 2.0] and len(log.loss) == 3
    full = train_classifier(torch.nn.Linear(64, 10), data, epochs=2, batch_size=None,
                            optimizer="sgd", lr=0.1)
    assert len(full.train_accuracy) == 2
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(model, data, epochs=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(model, data, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_classifier(model, data, epochs=1, batch_size=0)
