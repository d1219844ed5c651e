"""Unit tests for lib.nn.pruning (magnitude / Wanda / random unstructured pruning)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from lib.nn import pruning


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.LayerNorm(6), nn.Linear(6, 2))


def test_prunable_layers_skip_norms_and_respect_exclude():
    model = small_model()
    assert list(pruning.prunable_layers(model)) == ["0", "3", "5"]
    assert list(pruning.prunable_layers(model, exclude=("5",))) == ["0", "3"]
    with pytest.raises(ValueError, match="no nn.Linear"):
        pruning.prunable_layers(nn.LayerNorm(3))


def test_magnitude_masks_match_torch_l1_unstructured():
    model = small_model()
    layers = pruning.prunable_layers(model)
    keep = pruning.masks(pruning.scores(layers, "magnitude"), 0.37)
    for name, m in layers.items():
        ref = nn.Linear(1, 1) if isinstance(m, nn.Linear) else nn.Conv2d(1, 1, 1)
        ref.weight = nn.Parameter(m.weight.detach().clone())
        n_prune = int(0.37 * m.weight.numel())
        torch_prune.l1_unstructured(ref, "weight", amount=n_prune)
        assert torch.equal(ref.weight_mask.bool(), keep[name])


def test_row_group_prunes_the_same_count_in_every_row():
    model = small_model()
    layers = pruning.prunable_layers(model)
    keep = pruning.masks(pruning.scores(layers, "magnitude"), 0.5, group="row")
    for k in keep.values():
        per_row = (~k).reshape(k.shape[0], -1).sum(1)
        assert torch.all(per_row == int(0.5 * k[0].numel()))


def brute_force_conv_norms(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """sum over batch and output positions of x_pad[c, i*s + u, j*s + v]^2, by slicing."""
    p, s = conv.padding[0], conv.stride[0]
    kh, kw = conv.kernel_size
    xp = F.pad(x, (p, p, p, p)).double()
    oh = (xp.shape[2] - kh) // s + 1
    ow = (xp.shape[3] - kw) // s + 1
    out = torch.zeros(conv.in_channels, kh, kw, dtype=torch.float64)
    for u in range(kh):
        for v in range(kw):
            window = xp[:, :, u : u + s * oh : s, v : v + s * ow : s]
            out[:, u, v] = (window**2).sum((0, 2, 3))
    return out.reshape(-1)


def test_wanda_norms_and_scores_against_brute_force():
    model = small_model()
    layers = pruning.prunable_layers(model)
    x = torch.randn(7, 3, 5, 5)
    norms = pruning.input_norms(layers, lambda: model(x))
    assert torch.allclose(norms.squares["0"], brute_force_conv_norms(model[0], x))
    h = model[2](model[1](model[0](x)))
    assert torch.allclose(norms.squares["3"], (h.double() ** 2).sum(0))
    assert norms.rows["0"] == 7 * 25 and norms.rows["3"] == 7
    score = pruning.scores(layers, "wanda", norms)
    w = model[3].weight.detach()
    assert torch.allclose(score["3"], w.abs() * (h**2).sum(0).sqrt()[None, :], rtol=1e-5)


def test_pruned_weights_zero_then_restore_exactly():
    model = small_model()
    layers = pruning.prunable_layers(model)
    dense = {k: m.weight.detach().clone() for k, m in layers.items()}
    bias = model[3].bias.detach().clone()
    with pruning.prune(layers, 0.6, "random", generator=torch.Generator().manual_seed(1)):
        assert pruning.sparsity_of(layers) == pytest.approx(0.6, abs=0.01)
        assert torch.equal(model[3].bias, bias)
    for k, m in layers.items():
        assert torch.equal(m.weight, dense[k])
    assert pruning.sparsity_of(layers) == 0.0


def test_sparsity_extremes():
    layers = pruning.prunable_layers(small_model())
    s = pruning.scores(layers, "magnitude")
    assert all(k.all() for k in pruning.masks(s, 0.0).values())
    assert not any(k.any() for k in pruning.masks(s, 1.0).values())


def test_bad_inputs():
    model = small_model()
    layers = pruning.prunable_layers(model)
    s = pruning.scores(layers, "magnitude")
    with pytest.raises(ValueError, match="sparsity"):
        pruning.masks(s, 1.5)
    with pytest.raises(ValueError, match="group"):
        pruning.masks(s, 0.5, group="column")
    with pytest.raises(ValueError, match="criterion"):
        pruning.scores(layers, "sparsegpt")
    with pytest.raises(ValueError, match="norms"):
        pruning.scores(layers, "wanda")
    with pytest.raises(ValueError, match="never reached"):
        pruning.input_norms(layers, lambda: None)
    bad = {"3": torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ValueError, match="shape"):
        pruning.PrunedWeights(layers, bad)
    with pytest.raises(ValueError, match="unknown"):
        pruning.PrunedWeights(layers, {"nope": torch.ones(1, dtype=torch.bool)})
    grouped = {"g": nn.Conv2d(4, 4, 3, groups=2)}
    with pytest.raises(ValueError, match="grouped"):
        pruning.input_norms(grouped, lambda: grouped["g"](torch.randn(1, 4, 5, 5)))
