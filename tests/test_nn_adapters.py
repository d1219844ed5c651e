"""Low-bit adapters: the error-minimising normal codebook, fake quantisation with a
straight-through gradient, exact storage accounting, weight-noise curves, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from lib.nn.adapters import (
    Adapter,
    ResidualMLP,
    dequantize,
    fake_quantize,
    fit,
    insert_adapters,
    noise_robustness,
    normal_codebook,
    pack_codes,
    quantization_codes,
    quantize_adapters_,
    shifted_digits,
    storage_report,
)


def test_one_bit_levels_closed_form():
    lv1, bd1 = normal_codebook(1, "l1")
    lv2, bd2 = normal_codebook(1, "l2")
    np.testing.assert_allclose(lv1, [-norm.ppf(0.75), norm.ppf(0.75)], atol=1e-12)
    np.testing.assert_allclose(lv2, [-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)], atol=1e-12)
    np.testing.assert_allclose(np.concatenate([bd1, bd2]), [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("error", ["l1", "l2"])
def test_codebook_satisfies_lloyd_conditions(bits, error):
    levels, bounds = normal_codebook(bits, error)
    assert len(levels) == 2**bits and np.all(np.diff(levels) > 0)
    np.testing.assert_allclose(levels, -levels[::-1], atol=1e-9)  # symmetric
    np.testing.assert_allclose(bounds, 0.5 * (levels[1:] + levels[:-1]))
    edges = np.concatenate([[-np.inf], bounds, [np.inf]])
    cdf, pdf = norm.cdf(edges), norm.pdf(edges)
    if error == "l1":  # each level is its cell's median
        np.testing.assert_allclose(norm.cdf(levels), 0.5 * (cdf[1:] + cdf[:-1]), atol=1e-9)
    else:  # each level is its cell's mean
        np.testing.assert_allclose(levels * (cdf[1:] - cdf[:-1]), pdf[:-1] - pdf[1:], atol=1e-9)


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("error", ["l1", "l2"])
def test_quantiser_scale_minimises_the_error_among_scales(bits, error):
    """Scaling the codebook by c != 1 never lowers the error it is built to minimise."""
    rng = np.random.default_rng(bits)
    w = torch.tensor(0.3 + 2.0 * rng.standard_normal(400_000), dtype=torch.float64)
    levels, bounds = normal_codebook(bits, error)
    z = ((w - w.mean()) / (w.std() + 1e-5)).numpy()  # the quantiser's own standardisation
    power = 1 if error == "l1" else 2
    grid = np.round(np.arange(0.80, 1.201, 0.02), 2)
    errs = []
    for c in grid:
        q = c * levels[np.searchsorted(c * bounds, z)]
        errs.append(np.mean(np.abs(q - z) ** power))
    assert grid[int(np.argmin(errs))] == 1.0
    # and fake_quantize realises exactly the c = 1 quantiser, rescaled
    wq = fake_quantize(w, bits, error)
    expected = w.mean() + (w.std() + 1e-5) * torch.from_numpy(levels[np.searchsorted(bounds, z)])
    torch.testing.assert_close(wq, expected)


def test_one_bit_output_takes_two_values_and_gradient_is_straight_through():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(16, 24, generator=g) * 0.3 + 0.1).requires_grad_(True)
    q = fake_quantize(w, 1)
    values = torch.unique(q.detach())
    assert values.numel() == 2
    mean, std = w.detach().mean(), w.detach().std() + 1e-5
    torch.testing.assert_close(values, mean + std * torch.tensor([-1.0, 1.0]) * norm.ppf(0.75))
    # sign pattern follows w - mean
    assert torch.equal(q.detach() > mean, w.detach() > mean)
    # the gradient with an upstream that is orthogonal to what the statistics see is identity
    up = torch.randn(16, 24, generator=g)
    (q * up).sum().backward()
    assert torch.isfinite(w.grad).all()
    # straight-through: the latent weight receives the upstream gradient plus statistic terms
    # that vanish when the upstream is constant (sum of (q - z) * dstd is zero-mean there)
    w2 = w.detach().clone().requires_grad_(True)
    fake_quantize(w2, 1).sum().backward()
    torch.testing.assert_close(w2.grad.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert torch.equal(fake_quantize(w, 32), w)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_codes_round_trip_and_pack_exactly(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(7, 13, generator=g)
    codes, mean, std = quantization_codes(w, bits)
    assert codes.min() >= 0 and codes.max() < 2**bits
    torch.testing.assert_close(dequantize(codes, mean, std, bits, shape=w.shape),
                               fake_quantize(w, bits).detach(), atol=1e-5, rtol=1e-5)
    packed = pack_codes(codes, bits)
    assert len(packed) == math.ceil(w.numel() * bits / 8)
    digits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: w.numel() * bits]
    rebuilt = digits.reshape(-1, bits) @ (2 ** np.arange(bits - 1, -1, -1))
    np.testing.assert_array_equal(rebuilt, codes)


def test_storage_accounting_is_exact():
    d, h, classes = 16, 8, 5
    one = [Adapter(d, h, bits=1) for _ in range(3)]
    fp = [Adapter(d, h, bits=32) for _ in range(3)]
    head = torch.nn.Linear(d, classes)
    r1, r32 = storage_report(one, head), storage_report(fp, head)
    n = 3 * 2 * d * h
    assert r1.n_adapter_weights == r32.n_adapter_weights == n
    assert r32.weight_bits == 32 * n and r32.stat_bits == 0
    assert r1.weight_bits == n and r1.weight_bits * 32 == r32.weight_bits
    assert r1.stat_bits == 6 * 2 * 32  # a float32 mean and std per matrix
    assert r1.head_bits == r32.head_bits == 32 * (d * classes + classes)
    assert r1.total_bits == r1.weight_bits + r1.stat_bits + r1.head_bits
    two = storage_report([Adapter(5, 3, bits=2)])  # 15 entries * 2 bits -> 4 bytes per matrix
    assert two.weight_bits == 2 * 8 * 4


def test_post_training_quantisation_matches_fake_quantize():
    torch.manual_seed(0)
    a = Adapter(12, 6, bits=32)
    torch.nn.init.normal_(a.up.weight)
    before = [fake_quantize(p.detach(), 1) for p in (a.down.weight, a.up.weight)]
    quantize_adapters_([a], 1)
    for p, q in zip((a.down.weight, a.up.weight), before):
        torch.testing.assert_close(p.detach(), q)
        assert torch.unique(p.detach()).numel() == 2


def test_adapters_freeze_backbone_and_start_as_backbone():
    torch.manual_seed(0)
    model = ResidualMLP(64, 32, 2, 5)
    x = torch.randn(10, 64)
    feats = model.features(x).detach()
    adapters = insert_adapters(model, 4, 32, 3, embedding=True)
    assert len(adapters) == 3
    torch.testing.assert_close(model.features(x), feats)  # zero up-projections
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter" in n or n.startswith("head") for n in trainable)
    assert model.head.out_features == 3


def test_noise_robustness_restores_weights_and_grows_with_sigma():
    torch.manual_seed(0)
    model = ResidualMLP(64, 32, 1, 3)
    X, y = torch.randn(60, 64), torch.randint(0, 3, (60,))
    for p in model.parameters():
        p.requires_grad_(True)
    fit(model, X, y, steps=60, lr=1e-2)
    params = [model.embed.weight, model.blocks[0].fc1.weight]
    saved = [p.detach().clone() for p in params]
    curve = noise_robustness(model, params, X, y, [0.0, 0.3, 3.0], draws=4)
    for p, s in zip(params, saved):
        assert torch.equal(p.detach(), s)
    assert curve.loss[0] == pytest.approx(curve.clean_loss, abs=1e-6)
    assert curve.loss_increase[2] > curve.loss_increase[1] >= -1e-6
    curve_set = noise_robustness(model, params, X, y, [0.0, 0.3], draws=2, per="set")
    assert curve_set.loss[0] == pytest.approx(curve.clean_loss, abs=1e-6)


def test_shifted_digits_split():
    pre, down = shifted_digits(seed=1, per_class=10, rotate=20)
    assert pre.X_train.shape[1] == 64 and set(pre.y_train.tolist()) == set(range(5))
    assert down.X_train.shape == (50, 64) and set(down.y_test.tolist()) == set(range(5))
    assert torch.bincount(down.y_train).tolist() == [10] * 5


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        normal_codebook(0)
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(torch.randn(4), 12)
    with pytest.raises(ValueError, match="bits"):
        Adapter(4, 2, bits=2.5)
    with pytest.raises(ValueError, match="no codebook"):
        normal_codebook(32)
    with pytest.raises(ValueError, match="error"):
        normal_codebook(2, "linf")
    with pytest.raises(ValueError, match="at least 2 entries"):
        fake_quantize(torch.randn(1), 1)
    with pytest.raises(ValueError, match="NaN"):
        fake_quantize(torch.tensor([0.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="codes"):
        pack_codes(np.array([0, 4]), 2)
    with pytest.raises(ValueError, match="hidden"):
        Adapter(4, 0)
    with pytest.raises(ValueError, match="at least one adapter"):
        storage_report([])
    with pytest.raises(ValueError, match="sigmas"):
        noise_robustness(torch.nn.Linear(2, 2), [torch.nn.Linear(2, 2).weight],
                         torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [-0.1])
    with pytest.raises(ValueError, match="per"):
        noise_robustness(torch.nn.Linear(2, 2), [torch.nn.Linear(2, 2).weight],
                         torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [0.1], per="x")
    with pytest.raises(ValueError, match="per_class"):
        shifted_digits(per_class=500)
    with pytest.raises(ValueError, match="steps"):
        fit(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0, 0.1)
    with pytest.raises(ValueError, match="2 classes"):
        insert_adapters(ResidualMLP(8, 4, 1, 2), 2, 1, n_classes=1)
