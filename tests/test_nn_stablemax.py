"""StableMax, Softmax Collapse, the perpendicular gradient, and the modular-addition setup."""

import math

import pytest
import torch

from lib.nn.modular import bias_free_mlp, modular_addition_data, train_modular
from lib.nn.stablemax import (
    PerpAdamW,
    absorbed_mass,
    collapse_threshold,
    float_dtype,
    nlm_cosine,
    project_out_parallel_,
    runner_up_term,
    softmax_collapse_fraction,
    softmax_collapse_mask,
    softmax_cross_entropy,
    stablemax,
    stablemax_cross_entropy,
    stablemax_s,
    zero_loss_fraction,
)


def test_s_is_positive_increasing_and_c1_at_zero():
    x = torch.linspace(-50, 50, 2001, dtype=torch.float64)
    s = stablemax_s(x)
    assert (s > 0).all() and (s.diff() > 0).all()
    h = 1e-7
    zero = torch.tensor([-h, 0.0, h], dtype=torch.float64)
    left, mid, right = stablemax_s(zero)
    assert mid == 1 and abs(left - 1) < 2 * h and abs(right - 1) < 2 * h
    slope_left, slope_right = (mid - left) / h, (right - mid) / h
    assert abs(slope_left - 1) < 1e-6 and abs(slope_right - 1) < 1e-6
    assert stablemax_s(torch.tensor(3.0)) == 4.0
    assert stablemax_s(torch.tensor(-3.0)) == 0.25


@pytest.mark.parametrize("seed", range(3))
def test_stablemax_is_a_probability_map_preserving_order(seed):
    g = torch.Generator().manual_seed(seed)
    z = 10 * torch.randn(16, 7, generator=g, dtype=torch.float64)
    q = stablemax(z)
    assert (q > 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16, dtype=torch.float64))
    assert torch.equal(q.argsort(dim=1), z.argsort(dim=1))


@pytest.mark.parametrize("seed", range(3))
def test_stablemax_cross_entropy_value_and_finite_difference_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 6, (5,), generator=g)
    loss = stablemax_cross_entropy(z, y)
    by_hand = -torch.log(stablemax(z.detach())[torch.arange(5), y]).mean()
    torch.testing.assert_close(loss.detach(), by_hand)
    (grad,) = torch.autograd.grad(loss, z)
    h = 1e-6
    numeric = torch.zeros_like(z)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            e = torch.zeros_like(z)
            e[i, j] = h
            numeric[i, j] = (stablemax_cross_entropy(z.detach() + e, y)
                             - stablemax_cross_entropy(z.detach() - e, y)) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda t: stablemax_cross_entropy(t, y), (z,))


def test_softmax_cross_entropy_matches_torch_in_float64():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    torch.testing.assert_close(softmax_cross_entropy(z, y, bits=64),
                               torch.nn.functional.cross_entropy(z, y))
    assert softmax_cross_entropy(z, y, bits=16).dtype == torch.float16


def test_collapse_detection_on_constructed_logits():
    # gaps 5, 10, 20, 40 between the top logit and the rest (four other classes)
    z = torch.tensor([[0.0] + [-gap] * 4 for gap in (5.0, 10.0, 20.0, 40.0)])
    y = torch.zeros(4, dtype=torch.long)
    # 4 e^-gap against the unit roundoff 2^-11 (fp16), 2^-24 (fp32), 2^-53 (fp64)
    assert softmax_collapse_mask(z, 16).tolist() == [False, True, True, True]
    assert softmax_collapse_mask(z, 32).tolist() == [False, False, True, True]
    assert softmax_collapse_mask(z, 64).tolist() == [False, False, False, True]
    assert softmax_collapse_fraction(z, 32) == 0.5
    for bits in (16, 32, 64):  # clear-cut margins: every variant agrees
        assert torch.equal(softmax_collapse_mask(z, bits, labels=y), softmax_collapse_mask(z, bits))
        assert torch.equal(softmax_collapse_mask(z, bits, method="denominator"),
                           softmax_collapse_mask(z, bits))
    # a misclassified sample keeps a positive loss even when its softmax is one-hot
    assert not softmax_collapse_mask(z[3:], 32, labels=torch.tensor([1])).any()
    # collapse of a correctly classified sample: its loss is exactly zero, and so is the
    # gradient on its correct logit (softmax_y - 1 with softmax_y rounded to 1); only the tiny
    # push e^-gap on the other logits is left
    assert zero_loss_fraction(z, y, bits=32) == 0.5
    zg = z.clone().requires_grad_()
    softmax_cross_entropy(zg, y, bits=32, reduction="sum").backward()
    assert zg.grad[2:, 0].eq(0).all() and zg.grad[:2, 0].ne(0).all()
    assert zg.grad[2:, 1:].abs().max() < 3e-9
    # StableMax's polynomial tails keep every one of these losses positive
    assert zero_loss_fraction(z, y, loss="stablemax") == 0.0
    # the absorbed mass against the unit roundoff tells the same story
    mass = absorbed_mass(z)
    torch.testing.assert_close(mass, 4 * torch.exp(-torch.tensor([5.0, 10, 20, 40],
                                                                 dtype=torch.float64)))
    for bits in (16, 32, 64):
        assert ((mass <= collapse_threshold(bits)) == softmax_collapse_mask(z, bits)).all()
    assert collapse_threshold(32) == 2.0**-24 and collapse_threshold(64) == 2.0**-53


@pytest.mark.parametrize("method", ["loss", "denominator"])
@pytest.mark.parametrize("bits", [16, 32, 64])
def test_collapse_is_bracketed_by_absorbed_mass_and_runner_up_term(bits, method):
    g = torch.Generator().manual_seed(bits)
    # margins spread around the collapse threshold of every format
    z = torch.zeros(400, 30, dtype=torch.float64)
    z[:, 1:] = -torch.rand(400, 29, generator=g, dtype=torch.float64) * 60 - 2
    mask = softmax_collapse_mask(z, bits, method=method)
    u = collapse_threshold(bits)
    assert (mask >= (absorbed_mass(z) <= u)).all()  # sufficient
    assert (mask <= (runner_up_term(z) <= u)).all()  # necessary
    assert torch.equal(runner_up_term(z), z[:, 1:].exp().amax(dim=1))


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_collapse_mask_is_exactly_a_zero_cross_entropy(bits):
    # logits at the edge of collapse, shifted by large offsets: the default mask must say
    # "loss exactly 0" sample by sample, as torch's own cross-entropy in that format does
    g = torch.Generator().manual_seed(10 + bits)
    n, k = 3000, 47
    margin = -math.log(collapse_threshold(bits))  # runner-up term e^-margin = u
    z = torch.zeros(n, k, dtype=torch.float64)
    offset = 6 * torch.rand(n, 1, generator=g, dtype=torch.float64)  # per row, around the edge
    z[:, 1:] = -(margin + offset + 3 * torch.rand(n, k - 1, generator=g, dtype=torch.float64))
    z += 40 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.long)
    zb = z.to(float_dtype(bits))
    zero = torch.nn.functional.cross_entropy(zb, y, reduction="none") == 0
    assert 0.05 < zero.float().mean() < 0.95  # the sample straddles the edge
    assert torch.equal(softmax_collapse_mask(z, bits, labels=y), zero)
    assert torch.equal(softmax_collapse_mask(z, bits), zero)


def test_projection_removes_the_parallel_component_exactly():
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(7, 5, generator=g, dtype=torch.float64))
    grad = torch.randn(7, 5, generator=g, dtype=torch.float64)
    w.grad = grad.clone()
    project_out_parallel_([w], rescale=False)
    theta = w.detach()
    assert abs(float((w.grad * theta).sum())) < 1e-12 * float(theta.norm() * grad.norm())
    coeff = (grad * w.detach()).sum() / (w.detach() ** 2).sum()
    torch.testing.assert_close(w.grad + coeff * w.detach(), grad)  # the two parts add back up
    once = w.grad.clone()
    project_out_parallel_([w], rescale=False)
    torch.testing.assert_close(w.grad, once)  # idempotent
    zero = torch.nn.Parameter(torch.zeros(3))
    zero.grad = torch.ones(3)
    project_out_parallel_([zero, torch.nn.Parameter(torch.ones(2))])  # no grad: skipped
    assert torch.equal(zero.grad, torch.ones(3))


def test_rescaled_projection_keeps_the_gradient_norm():
    g = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
    grad = torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.7 * w.detach()
    w.grad = grad.clone()
    project_out_parallel_([w])  # default: the official OrthoGrad, rescaled
    theta = w.detach()
    assert abs(float((w.grad * theta).sum())) < 1e-12 * float(theta.norm() * grad.norm())
    torch.testing.assert_close(w.grad.norm(), grad.norm())
    plain = grad - (grad * theta).sum() / (theta * theta).sum() * theta
    torch.testing.assert_close(w.grad, plain * grad.norm() / plain.norm())
    # a pure scaling gradient has no perpendicular part: zero, not rescaled rounding noise
    w.grad = 3.0 * theta.clone()
    project_out_parallel_([w])
    assert w.grad.abs().max() == 0


@pytest.mark.parametrize("rescale", [True, False])
def test_perp_adamw_ignores_a_pure_scaling_gradient(rescale):
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    before = w.detach().clone()
    opt = PerpAdamW([w], lr=0.1, eps=1e-25, weight_decay=0.0, rescale=rescale)
    assert opt.rescale is rescale
    w.grad = -5.0 * w.detach().clone()  # the naive-loss-minimisation gradient: grow the weights
    opt.step()
    torch.testing.assert_close(w.detach(), before)
    plain = torch.optim.AdamW([w], lr=0.1, eps=1e-25, weight_decay=0.0)
    w.grad = -5.0 * w.detach().clone()
    plain.step()
    assert w.detach().norm() > before.norm()  # plain AdamW does scale them up


def test_nlm_cosine_and_homogeneity_of_the_bias_free_mlp():
    model = bias_free_mlp(5, width=8, seed=0)
    assert all(m.bias is None for m in model if isinstance(m, torch.nn.Linear))
    x = torch.randn(4, 10)
    out = model(x)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    torch.testing.assert_close(model(x), 3.0 * out)  # logits scale with any one weight matrix
    for p in model.parameters():
        p.grad = -2.0 * p.detach()
    assert all(abs(c - 1.0) < 1e-12 for c in nlm_cosine(model))
    for p in model.parameters():
        p.grad = 2.0 * p.detach()
    assert all(abs(c + 1.0) < 1e-12 for c in nlm_cosine(model))


def test_modular_data_is_complete_correct_and_seeded():
    data = modular_addition_data(7, 0.4, seed=3)
    assert data.X_train.shape == (20, 14) and data.X_test.shape == (29, 14)
    X = torch.cat([data.X_train, data.X_test])
    y = torch.cat([data.y_train, data.y_test])
    a, b = X[:, :7].argmax(1), X[:, 7:].argmax(1)
    assert torch.equal(y, (a + b) % 7)
    assert len(set(zip(a.tolist(), b.tolist()))) == 49  # every pair exactly once
    again = modular_addition_data(7, 0.4, seed=3)
    assert torch.equal(again.y_train, data.y_train) and torch.equal(again.X_test, data.X_test)


def test_train_modular_logs_and_learns_a_tiny_problem():
    data = modular_addition_data(5, 0.6, seed=0)
    _, log = train_modular(data, steps=30, width=16, log_every=10, seed=0, keep_logits_every=15,
                           flush_denormal=False)
    assert log.step == [0, 10, 20, 30]
    assert log.train_accuracy[-1] > log.train_accuracy[0] and log.train_loss[-1] < log.train_loss[0]
    assert sorted(log.logits) == [0, 15, 30] and log.logits[30].shape == (15, 5)
    assert all(0 <= c <= 1 for c in log.collapse)
    assert math.isfinite(log.nlm_cosine[-1])
    _, perp = train_modular(data, steps=20, width=16, log_every=10, optimizer="perp_adamw",
                            loss="stablemax", seed=0, flush_denormal=False)
    assert len(perp.step) == 3 and perp.collapse == [0.0, 0.0, 0.0]


def test_bad_inputs_raise():
    z, y = torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="16, 32 or 64"):
        softmax_cross_entropy(z, y, bits=8)
    with pytest.raises(ValueError, match="2-D"):
        softmax_collapse_mask(torch.zeros(4))
    with pytest.raises(ValueError, match="method must be one of"):
        softmax_collapse_mask(z, method="sum")
    with pytest.raises(ValueError, match="one entry per sample"):
        softmax_collapse_fraction(z, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least two classes"):
        stablemax_cross_entropy(torch.zeros(3, 1), y)
    with pytest.raises(ValueError, match="one entry per sample"):
        stablemax_cross_entropy(z, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\]"):
        softmax_cross_entropy(z, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integer class"):
        softmax_cross_entropy(z, torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        stablemax_cross_entropy(z, y, reduction="max")
    with pytest.raises(ValueError, match="'softmax' or 'stablemax'"):
        zero_loss_fraction(z, y, loss="sparsemax")
    with pytest.raises(ValueError, match="at least one parameter"):
        nlm_cosine([])
    with pytest.raises(ValueError, match="modulus"):
        modular_addition_data(1)
    with pytest.raises(ValueError, match="strictly between"):
        modular_addition_data(7, 1.0)
    with pytest.raises(ValueError, match="p >= 2"):
        bias_free_mlp(7, width=0)
    data = modular_addition_data(5, 0.5)
    with pytest.raises(ValueError, match="optimizer"):
        train_modular(data, steps=1, optimizer="sgd")
    with pytest.raises(ValueError, match="steps"):
        train_modular(data, steps=0)
    with pytest.raises(ValueError, match="loss"):
        train_modular(data, steps=1, loss="mse")
    with pytest.raises(ValueError, match="weight_decay"):
        train_modular(data, steps=1, weight_decay=-1.0)
