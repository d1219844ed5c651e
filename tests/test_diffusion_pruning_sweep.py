"""Unit tests for lib.diffusion.pruning_sweep (sweeps, knee, cliff, overall sparsity)."""

import pytest
import torch
from torch import nn

from lib.diffusion import pruning_sweep as ps
from lib.nn import pruning


class FakePipe:
    """Two linear 'parts'; sampling maps a fixed input through both."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.text_encoder = nn.Sequential(nn.Linear(4, 4))
        self.denoiser = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        self.x = torch.randn(3, 4)

    def encode_prompts(self, prompts):
        return self.text_encoder(self.x[: len(prompts)])

    def sample_latents(self, prompts, steps=20, guidance=3.0, seed=0):
        return self.denoiser(self.encode_prompts(prompts))

    def sample(self, prompts, steps=20, guidance=3.0, seed=0):
        return self.sample_latents(prompts, steps=steps, seed=seed)


def test_sweep_restores_weights_and_prunes_the_requested_part():
    pipe = FakePipe()
    before = [p.detach().clone() for p in pipe.denoiser.parameters()]
    te_before = pipe.text_encoder[0].weight.detach().clone()
    pts = ps.sweep_sparsity(pipe, "unet", "magnitude", [0.0, 0.5, 1.0], ["a", "b"],
                            lambda im: {"norm": float(im.detach().abs().sum())},
                            extra={"text_encoder": 0.25})
    assert [p.measured_sparsity for p in pts] == [0.0, 0.5, 1.0]
    assert pts[-1].scores["norm"] == pytest.approx(2 * 2 * 0 + float(
        pipe.denoiser[1].bias.abs().sum()) * 2, rel=1e-5)
    for p, b in zip(pipe.denoiser.parameters(), before):
        assert torch.equal(p, b)
    assert torch.equal(pipe.text_encoder[0].weight, te_before)


def test_calibrate_reaches_every_layer_of_each_part():
    pipe = FakePipe()
    te = ps.calibrate(pipe, "text_encoder", ["a", "b", "c"])
    un = ps.calibrate(pipe, "unet", ["a", "b"])
    assert set(te.squares) == {"0"} and te.rows["0"] == 3
    assert set(un.squares) == {"0", "1"} and un.rows["1"] == 2
    pts = ps.sweep_sparsity(pipe, "unet", "wanda", [0.5], ["a"], lambda im: {}, norms=un)
    assert pts[0].measured_sparsity == 0.5


def test_knee_and_steepest_drop():
    s = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    a = [0.9, 0.9, 0.85, 0.6, 0.1, 0.0]
    assert ps.knee(s, a, 0.9) == pytest.approx(0.2)
    assert ps.knee(s, [0.9, 0.5, 0.9, 0.9, 0.9, 0.9], 0.9) == pytest.approx(0.0)
    assert ps.knee(s, [0.9] * 6, 0.9) == pytest.approx(0.5)
    drop, lo, hi = ps.steepest_drop(s, a, 0.1)
    assert drop == pytest.approx(0.5) and (lo, hi) == (0.3, 0.4)
    drop, lo, hi = ps.steepest_drop(s, a, 0.2)
    assert drop == pytest.approx(0.75) and (lo, hi) == (0.2, 0.4)


def test_overall_sparsity_is_weighted_by_counts():
    # the paper's split: TE 47.5 %, UNet 35 % -> 38.5 % needs TE/UNet sizes of about 1 : 3
    assert ps.overall_sparsity({"te": 1, "unet": 3}, {"te": 0.5, "unet": 0.1}) == 0.2


def test_bad_inputs():
    pipe = FakePipe()
    with pytest.raises(ValueError, match="part"):
        ps.part_module(pipe, "vae")
    with pytest.raises(ValueError, match="grid"):
        ps.sweep_sparsity(pipe, "unet", "magnitude", [], ["a"], lambda im: {})
    with pytest.raises(ValueError, match="norms"):
        ps.sweep_sparsity(pipe, "unet", "wanda", [0.5], ["a"], lambda im: {})
    with pytest.raises(ValueError, match="extra names"):
        ps.sweep_sparsity(pipe, "unet", "magnitude", [0.5], ["a"], lambda im: {},
                          extra={"unet": 0.1})
    with pytest.raises(ValueError, match="prompt"):
        ps.calibrate(pipe, "unet", [])
    with pytest.raises(ValueError, match="increase"):
        ps.knee([0.2, 0.1], [1, 1], 1.0)
    with pytest.raises(ValueError, match="keep"):
        ps.knee([0.1, 0.2], [1, 1], 1.0, keep=0.0)
    with pytest.raises(ValueError, match="width"):
        ps.steepest_drop([0.1, 0.2], [1, 0], 0.0)
    with pytest.raises(ValueError, match="within width"):
        ps.steepest_drop([0.1, 0.5], [1, 0], 0.1)
    with pytest.raises(ValueError, match="differ"):
        ps.overall_sparsity({"a": 1}, {"b": 0.1})
    assert pruning.CRITERIA == ("magnitude", "wanda", "random")
