"""The One More Step module, its step and its loss (lib.diffusion.zero_snr_step)."""

from __future__ import annotations

import pytest
import torch

from lib.diffusion import zero_snr_step as oms
from lib.diffusion.testbed import models
from lib.diffusion.testbed.train_flawed_schedule import flawed_scheduler, oms_unet


def _states(n: int) -> torch.Tensor:
    return torch.randn(n, 16, models.TEXT_WIDTH)


def test_step_is_the_ddpm_posterior_from_snr_zero():
    x0, z = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    out = oms.oms_step(x0, 0.09, noise=z)
    assert torch.allclose(out, 0.3 * x0 + 0.91**0.5 * z)
    assert torch.allclose(oms.oms_step(x0, 0.09, noise=z, noise_std="official"),
                          0.3 * x0 + 0.91 * z)  # fmt: skip


def test_clean_estimate_is_minus_v_and_guidance_interpolates():
    torch.manual_seed(0)
    net = oms_unet().eval()
    x, s, e = torch.randn(2, 4, 8, 8), _states(2), _states(1)
    v = net(x, torch.zeros(2, dtype=torch.long), encoder_hidden_states=s).sample
    assert torch.allclose(oms.oms_clean_estimate(net, x, s), -v, atol=1e-6)
    g1 = oms.oms_clean_estimate(net, x, s, e, guidance=1.0)
    g0 = oms.oms_clean_estimate(net, x, s, e, guidance=0.0)  # unconditional
    vu = net(x, torch.zeros(2, dtype=torch.long), encoder_hidden_states=e.expand(2, -1, -1)).sample
    assert torch.allclose(g1, -v, atol=1e-6) and torch.allclose(g0, -vu, atol=1e-5)


def test_loss_optimum_is_the_conditional_mean():
    # a module that outputs -c (its text state's first 4 values broadcast) is optimal when
    # the latents' mean given c is c; the loss then equals the latents' variance
    class Const(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            assert (t == 0).all()
            m = encoder_hidden_states[:, 0, :4, None, None].expand_as(x)
            return type("O", (), {"sample": -m})()

    s = _states(4096)
    z = s[:, 0, :4, None, None] + 0.5 * torch.randn(4096, 4, 8, 8)
    assert oms.oms_loss(Const(), z, s).item() == pytest.approx(0.25, rel=0.03)


def test_sampling_with_and_without_module_leaves_unet_alone():
    torch.manual_seed(0)
    unet = models.unet().eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    s, e = _states(2), _states(1)
    noise = torch.randn(2, 4, 8, 8)
    plain = oms.sample_unet_with_oms(unet, flawed_scheduler(), s, e, None, steps=2, noise=noise)
    with_oms = oms.sample_unet_with_oms(unet, flawed_scheduler(), s, e, oms_unet().eval(),
                                        steps=2, noise=noise,
                                        step_noise=torch.randn(2, 4, 8, 8))  # fmt: skip
    assert plain.shape == with_oms.shape == (2, 4, 8, 8)
    assert not torch.allclose(plain, with_oms)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    sched = flawed_scheduler()
    assert oms.first_alpha_bar(sched, 20) == pytest.approx(float(sched.alphas_cumprod[951]))


def test_bad_input():
    x0 = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="alpha_bar"):
        oms.oms_step(x0, 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        oms.oms_step(x0, 0.1, noise_std="unit")
    net = oms_unet()
    with pytest.raises(ValueError, match="empty_states"):
        oms.oms_clean_estimate(net, x0, _states(1), guidance=2.0)
    with pytest.raises(ValueError, match="noise rows"):
        oms.oms_clean_estimate(net, x0, _states(2))
    with pytest.raises(ValueError, match="guidance"):
        oms.oms_clean_estimate(net, x0, _states(1), _states(1), guidance=-1.0)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        oms.oms_loss(net, torch.zeros(4, 8, 8), _states(4))
    with pytest.raises(ValueError, match="kind"):
        flawed_scheduler("euler")
