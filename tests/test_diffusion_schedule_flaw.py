"""Part A of One More Step: the terminal-SNR leak in closed form and through diffusers' DDIM."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from lib.diffusion import schedule_flaw as sf


def _sd() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)  # fmt: skip


def test_sd_terminal_values_and_card_ratios():
    sd = _sd()
    a = float(sd.alphas_cumprod[-1])
    assert a == pytest.approx(0.00466, abs=2e-5)
    assert sf.scaled_linear_alpha_bar_T(0.012) == pytest.approx(a, rel=1e-5)
    assert sf.terminal_snr(sd) == pytest.approx(a / (1 - a))
    assert sf.leak_ratio(a, 16384, 1 / 3) == pytest.approx(0.19, abs=0.01)
    assert sf.leak_ratio(a, 256, 1 / 3) == pytest.approx(0.85, abs=0.01)
    assert sf.leak_ratio(0.09, 256, 1 / 3) == pytest.approx(0.34, abs=0.01)


def test_beta_end_hits_the_terminal_signal():
    b = sf.scaled_linear_beta_end(0.3)
    assert sf.scaled_linear_alpha_bar_T(b) ** 0.5 == pytest.approx(0.3, abs=1e-9)
    assert sf.scaled_linear_beta_end(0.0683) == pytest.approx(0.012, rel=0.01)


def test_exact_x0_is_the_gaussian_posterior_mean():
    # brute force: E[x0 | xt] = sqrt(a) S (a S + (1 - a) I)^-1 xt with S the toy covariance
    d, var_mu, s2, a = 6, 0.5, 0.2, 0.3
    cov = var_mu * torch.ones(d, d, dtype=torch.float64) + s2 * torch.eye(d, dtype=torch.float64)
    x = torch.randn(5, d, dtype=torch.float64)
    ref = x @ (a**0.5 * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(d,
                                                                          dtype=torch.float64))).T
    assert torch.allclose(sf.exact_x0(x, a, var_mu, s2), ref, atol=1e-12)
    proj = x.sum(1, keepdim=True) / d**0.5
    assert torch.allclose(sf.exact_x0(proj, a, var_mu, s2, dim=d),
                          (ref.sum(1, keepdim=True) / d**0.5), atol=1e-12)  # fmt: skip


def test_monte_carlo_matches_closed_form_gain():
    sd = _sd()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=gen, dtype=torch.float64)
    b = sf.ddim_brightness(sd, x, 20, 1 / 3, 0.01, dim=16384)
    gain = sf.ddim_gain(sd, 20, 16384, 1 / 3, 0.01)
    assert float(b.std()) * 16384**0.5 == pytest.approx(gain, rel=0.05)


def test_exact_oms_restores_spread():
    sd = _sd()
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(3000, generator=gen, dtype=torch.float64) / 3**0.5
    sd.set_timesteps(20)
    a1 = float(sd.alphas_cumprod[int(sd.timesteps[0])])
    b = sf.ddim_brightness(sd, sf.exact_oms_start(mu, a1, 16384, gen), 20, 1 / 3, 0.01, dim=16384)
    assert float(b.std()) * 3**0.5 == pytest.approx(1.0, abs=0.06)


def test_bad_input():
    with pytest.raises(ValueError, match="alpha_bar"):
        sf.leak_ratio(1.0, 10, 0.1)
    with pytest.raises(ValueError, match="dim"):
        sf.leak_ratio(0.1, 0, 0.1)
    with pytest.raises(ValueError, match="terminal_signal"):
        sf.scaled_linear_beta_end(0.99)
    with pytest.raises(ValueError, match="beta_start"):
        sf.scaled_linear_alpha_bar_T(0.001, beta_start=0.01)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        sf.exact_x0(torch.zeros(3), 0.1, 0.1, 0.1)
    with pytest.raises(ValueError, match="coordinates along u"):
        sf.exact_x0(torch.zeros(3, 2), 0.1, 0.1, 0.1, dim=8)
    with pytest.raises(ValueError, match="alpha_bar"):
        sf.exact_oms_start(torch.zeros(3), 1.5, 8)
