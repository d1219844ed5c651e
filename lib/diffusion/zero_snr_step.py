"""One extra sampling step from signal-to-noise ratio zero (One More Step, Hu et al., CVPR 2024).

Stable Diffusion's training schedule ends at ``alpha_bar_T > 0``: the most-noised training
input ``sqrt(alpha_bar_T) x_0 + sqrt(1 - alpha_bar_T) eps`` still carries the image's low
frequencies (its mean brightness above all), and the denoiser learns to read them. Sampling
starts from pure noise, which carries none, so generations regress to average brightness.
One More Step leaves the denoiser alone and puts a separate small network ``psi`` in front
of it (paper Sec. 4, Fig. 3; official ``OMSPipeline``):

1. ``x'_T ~ N(0, I)`` (SNR exactly 0);
2. ``psi(x'_T, c)`` predicts ``v``; at ``alpha_bar = 0`` the v-parametrisation gives the clean
   estimate ``x0_hat = sqrt(alpha_bar) x'_T - sqrt(1 - alpha_bar) v = -v``
   (:func:`oms_clean_estimate`, with its own classifier-free guidance);
3. one DDPM posterior step from ``alpha_bar = 0`` to the sampler's first timestep ``t_1``:
   ``x_{t_1} = sqrt(alpha_bar_{t_1}) x0_hat + sqrt(1 - alpha_bar_{t_1}) z`` (:func:`oms_step`;
   with ``alpha_bar_T = 0`` the posterior mean's ``x'_T`` coefficient vanishes);
4. the unchanged sampler continues from ``x_{t_1}`` (:func:`sample_unet_with_oms`).

``psi`` is trained with the plain v-prediction loss at SNR 0, ``|| psi(eps, c) + x_0 ||^2``
(:func:`oms_loss`): its optimum is the prompt's conditional mean ``E[x_0 | c]``. The module is a
``UNet2DConditionModel`` driven at one fixed timestep (0): the official module is a variant of
that class with the timestep input removed, and a constant timestep embedding is the same thing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lib.diffusion.sampling import guided, sample_unet

NOISE_STD = ("posterior", "official")
"""How :func:`oms_step` scales its fresh noise: ``"posterior"`` is the DDPM posterior's
``sqrt(1 - alpha_bar_{t_1})``; ``"official"`` is what the official ``oms_step`` multiplies the
noise by, the variance ``1 - alpha_bar_{t_1}`` itself (its comment says unit variance "seems"
not to matter; for SD's ``alpha_bar`` of 0.005 the two differ by 0.2 %)."""


def _check_alpha_bar(alpha_bar: float) -> float:
    alpha_bar = float(alpha_bar)
    if not 0.0 <= alpha_bar < 1.0:
        raise ValueError(f"alpha_bar must lie in [0, 1), got {alpha_bar}")
    return alpha_bar


def oms_loss(module: nn.Module, z: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The OMS training loss: v-prediction at SNR 0, ``|| psi(eps, c) - v ||^2`` with
    ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) z = -z`` at ``alpha_bar = 0``.

    ``z`` are clean (scaled) latents ``(n, C, H, W)``, ``states`` the captions' text states.
    """
    if z.ndim != 4 or states.shape[0] != z.shape[0]:
        raise ValueError(f"z must be (n, C, H, W) with one text state per row, got {tuple(z.shape)}"
                         f" and {tuple(states.shape)}")  # fmt: skip
    noise = torch.randn_like(z)
    t = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    return F.mse_loss(module(noise, t, encoder_hidden_states=states).sample, -z)


@torch.no_grad()
def oms_clean_estimate(module: nn.Module, noise: torch.Tensor, states: torch.Tensor,
                       empty_states: torch.Tensor | None = None,
                       guidance: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``x0_hat = -v`` with ``v = psi(x'_T, c)`` (guided when ``guidance != 1``: ``v_uncond +
    w (v_cond - v_uncond)``, the OMS module's own classifier-free guidance)."""
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if noise.shape[0] != states.shape[0]:
        raise ValueError(f"{noise.shape[0]} noise rows for {states.shape[0]} text states")
    n = noise.shape[0]
    if guidance == 1.0 or empty_states is None:
        if guidance != 1.0:
            raise ValueError("guidance != 1 needs empty_states")
        t = torch.zeros(n, dtype=torch.long, device=noise.device)
        return -module(noise, t, encoder_hidden_states=states).sample
    t = torch.zeros(2 * n, dtype=torch.long, device=noise.device)
    context = torch.cat([empty_states.expand(n, -1, -1), states])
    v = module(torch.cat([noise, noise]), t, encoder_hidden_states=context).sample
    return -guided(v, guidance)


def oms_step(x0_hat: torch.Tensor, alpha_bar_next: float, *,
             generator: torch.Generator | None = None, noise_std: str = "posterior",
             noise: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The DDPM posterior step from ``alpha_bar = 0`` to ``alpha_bar_next`` (paper Eq. 8):
    ``x = sqrt(alpha_bar_next) x0_hat + std z`` (``std`` from :data:`NOISE_STD`)."""
    a = _check_alpha_bar(alpha_bar_next)
    if noise_std not in NOISE_STD:
        raise ValueError(f"noise_std must be one of {NOISE_STD}, got {noise_std!r}")
    if noise is None:
        noise = torch.randn(x0_hat.shape, generator=generator).to(x0_hat.device)
    std = (1 - a) ** 0.5 if noise_std == "posterior" else 1 - a
    return a**0.5 * x0_hat + std * noise


def first_alpha_bar(scheduler: Any, steps: int) -> float:
    """``alpha_bar`` at the sampler's first timestep for ``steps`` steps (the official pipeline
    steps to ``alphas_cumprod[timesteps[0]]``)."""
    scheduler.set_timesteps(steps)
    return float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])


@torch.no_grad()
def sample_unet_with_oms(
    unet: nn.Module, scheduler: Any, text_states: torch.Tensor, empty_states: torch.Tensor,
    oms_module: nn.Module | None, oms_states: torch.Tensor | None = None, *,
    steps: int = 20, guidance: float = 3.0, oms_guidance: float = 1.0,
    noise: torch.Tensor | None = None, step_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None, noise_std: str = "posterior",
) -> torch.Tensor:
    """Guided DDIM sampling (:func:`lib.diffusion.sampling.sample_unet`) preceded by one OMS
    step; ``oms_module=None`` samples without it from the same ``noise``.

    ``oms_states`` (default ``text_states``) are the OMS prompt's states: the OMS prompt may
    differ from the main prompt (low-frequency control). ``noise`` is ``x'_T`` (without OMS: the
    sampler's start), ``step_noise`` the fresh ``z`` of the OMS step; both are drawn from
    ``generator`` when absent. The UNet's weights are never touched.
    """
    n = text_states.shape[0]
    cfg = unet.config
    shape = (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if noise is None:
        noise = torch.randn(shape, generator=generator)
    noise = noise.to(text_states.device)
    if oms_module is None:
        return sample_unet(unet, scheduler, text_states, empty_states, steps=steps,
                           guidance=guidance, latents=noise)  # fmt: skip
    states = text_states if oms_states is None else oms_states
    x0_hat = oms_clean_estimate(oms_module, noise, states, empty_states, oms_guidance)
    if step_noise is None:
        step_noise = torch.randn(shape, generator=generator)
    start = oms_step(x0_hat, first_alpha_bar(scheduler, steps), noise=step_noise.to(noise.device),
                     noise_std=noise_std)  # fmt: skip
    return sample_unet(unet, scheduler, text_states, empty_states, steps=steps,
                       guidance=guidance, latents=start / scheduler.init_noise_sigma)  # fmt: skip
