"""Feature rolling, circular padding and tileable sampling (lib.diffusion.feature_rolling), on
the texture model's UNet (lib.diffusion.testbed.texture_model)."""

import pytest
import torch
from torch import nn

from lib.diffusion.feature_rolling import circular_padding, rolled_convolutions, sample_tileable
from lib.diffusion.testbed.texture_model import (
    TextureDenoiser,
    from_grid,
    texture_lcm_scheduler,
    to_grid,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TextureDenoiser().eval()
    with torch.no_grad():  # a fresh UNet zero-initialises its output conv: perturb everything
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _call(m, x, t=500):
    states = m.encode(["a red wavy texture"] * len(x))
    with torch.no_grad():
        return m.unet(x, torch.full((len(x),), t), encoder_hidden_states=states).sample


def test_grid_round_trip_and_shapes():
    maps = torch.rand(3, 4, 32, 32)
    grid = to_grid(maps)
    assert grid.shape == (3, 16, 16, 16) and grid.min() >= -1 and grid.max() <= 1
    assert torch.allclose(from_grid(grid), maps, atol=1e-6)
    # rolling the grid by one cell is rolling the maps by two pixels
    assert torch.allclose(from_grid(torch.roll(grid, 1, -1)), torch.roll(maps, 2, -1), atol=1e-6)
    with pytest.raises(ValueError, match="maps must be"):
        to_grid(torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="grid must be"):
        from_grid(torch.rand(3, 4, 32, 32))


def test_caption_ids_and_bad_captions():
    ids = TextureDenoiser.ids(["a red wavy texture", ""])
    assert ids.shape == (2, 4) and (ids[0] > 0).all() and (ids[1] == 0).all()
    for bad in ("a red plaid texture", "a teal wavy texture", "a red wavy", "red wavy texture a"):
        with pytest.raises(ValueError, match="is not"):
            TextureDenoiser.ids([bad])
    with pytest.raises(ValueError, match="width"):
        TextureDenoiser(width=12)


def test_rolled_convolutions_equal_torch_circular_padding(model):
    x = torch.randn(2, 16, 16, 16)
    with rolled_convolutions(model.unet, torch.Generator().manual_seed(1)):
        rolled = _call(model, x)
    with circular_padding(model.unet):
        circ = _call(model, x)
    plain = _call(model, x)
    assert torch.allclose(rolled, circ, atol=1e-5)
    assert (rolled - plain).abs().max() > 0.1  # the border matters without rolling
    # the hooks and the padding mode are gone after the blocks
    assert torch.equal(_call(model, x), plain)
    assert all(c.padding_mode == "zeros" for c in model.unet.modules() if isinstance(c, nn.Conv2d))


def test_feature_rolled_unet_is_shift_equivariant(model):
    """With circular padding the UNet commutes with shifts that are multiples of its total
    downsampling (4 grid cells); odd shifts change the stride-2 phases."""
    x = torch.randn(2, 16, 16, 16)
    with rolled_convolutions(model.unet):
        y = _call(model, x)
        shifted = _call(model, torch.roll(x, (4, 8), (-2, -1)))
        odd = _call(model, torch.roll(x, (1, 3), (-2, -1)))
    assert torch.allclose(shifted, torch.roll(y, (4, 8), (-2, -1)), atol=1e-5)
    assert not torch.allclose(odd, torch.roll(y, (1, 3), (-2, -1)), atol=1e-3)
    with rolled_convolutions(model.unet, circular=False):  # zero padding: no equivariance
        z = _call(model, x)
    assert (z - y).abs().max() > 0.1


def test_sample_tileable_modes_and_errors(model):
    states = model.encode(["a red wavy texture", "a blue dotted texture"])
    outs = {mode: sample_tileable(model.unet, texture_lcm_scheduler(), states, mode=mode, steps=2,
                                  generator=torch.Generator().manual_seed(0))
            for mode in ("plain", "noise", "feature")}  # fmt: skip
    again = sample_tileable(model.unet, texture_lcm_scheduler(), states, mode="feature", steps=2,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(outs["feature"], again)
    assert all(o.shape == (2, 16, 16, 16) and torch.isfinite(o).all() for o in outs.values())
    assert not torch.allclose(outs["plain"], outs["feature"])
    with pytest.raises(ValueError, match="mode"):
        sample_tileable(model.unet, texture_lcm_scheduler(), states, mode="spiral")
    with pytest.raises(ValueError, match="steps"):
        sample_tileable(model.unet, texture_lcm_scheduler(), states, steps=0)
    with pytest.raises(ValueError, match="empty_states"):
        sample_tileable(model.unet, texture_lcm_scheduler(), states, guidance=3.0)
    with pytest.raises(ValueError, match="rolling_from"):
        sample_tileable(model.unet, texture_lcm_scheduler(), states, rolling_from=1.0)
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="zero padding"):
        with rolled_convolutions(conv):
            pass
    strided = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="divisible"):
        with rolled_convolutions(strided):
            strided(torch.zeros(1, 1, 5, 6))


def test_plain_sampling_equals_lcm_sampler_and_x0_prediction_round_trip(model):
    from lib.diffusion.consistency_distillation import clean_and_noise, sample_lcm
    from lib.diffusion.testbed.texture_model import sample_maps, texture_scheduler

    caps = ["a red wavy texture", "a white checkered texture"]
    ours = sample_maps(model, caps, steps=3, seed=5)
    ref = sample_lcm(model.unet, texture_lcm_scheduler(), model.encode(caps).detach(), steps=3,
                     generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.allclose(ours, from_grid(ref), atol=1e-6)
    ddim = sample_maps(model, caps, steps=3, guidance=3.0, scheduler=texture_scheduler("ddim"))
    assert ddim.shape == (2, 4, 32, 32) and 0 <= ddim.min() and ddim.max() <= 1
    alphas = texture_scheduler("ddpm").alphas_cumprod
    x0, eps = torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16)
    t = torch.tensor([10, 900])
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    for kind, out in (("sample", x0), ("epsilon", eps)):
        got_x0, got_eps = clean_and_noise(out, x_t, t, alphas, kind)
        assert torch.allclose(got_x0, x0, atol=1e-3) and torch.allclose(got_eps, eps, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        clean_and_noise(x0, x_t, t, alphas, "v_prediction")
    with pytest.raises(ValueError, match="kind"):
        texture_scheduler("euler")
