"""Text-to-image sampling loops shared by the diffusion chapters (testbed or real SD parts).

The loops are the textbook ones, written out so that chapters can change one piece (the
denoiser's weights, which tokens it sees, the scheduler) and see the effect:

* :func:`encode_prompts`: tokenizer + text encoder -> the per-token states the denoiser
  cross-attends to (SD conditions on ``last_hidden_state``).
* :func:`sample_unet`: epsilon-prediction denoiser with classifier-free guidance
  ``eps = eps_uncond + w (eps_cond - eps_uncond)`` (Ho and Salimans, 2022), any diffusers
  scheduler (DDIM by default).
* :func:`sample_flow`: rectified-flow denoiser (velocity prediction) with the same guidance and
  the Euler steps ``x <- x + (sigma_next - sigma) v`` of SD3's scheduler.
* :func:`decode`: latents -> images in [0, 1] through the autoencoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

EMPTY_PROMPT = ""


def _prompt_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    return prompts


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module,
                   prompts: str | Sequence[str]) -> torch.Tensor:  # fmt: skip
    """Per-token text states ``(n, L, d)`` of ``prompts`` (padded to the tokenizer's length)."""
    prompts = _prompt_list(prompts)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids  # fmt: skip
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


def _check_guidance(steps: int, guidance: float) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = no guidance), got {guidance}")


def _noise(n: int, shape: Sequence[int], generator: torch.Generator | None,
           device: torch.device | str) -> torch.Tensor:  # fmt: skip
    return torch.randn((n, *shape), generator=generator).to(device)


def guided(model_output: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on a batch stacked as ``[unconditional; conditional]``."""
    uncond, cond = model_output.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample_unet(
    unet: torch.nn.Module,
    scheduler: Any,
    text_states: torch.Tensor,
    empty_states: torch.Tensor,
    *,
    steps: int = 20,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latents from an epsilon-prediction UNet with classifier-free guidance.

    ``text_states`` ``(n, L, d)`` are the prompts' states, ``empty_states`` ``(1, L, d)`` the
    empty prompt's. Starts from ``latents`` or seeded Gaussian noise of the UNet's shape, scaled
    by the scheduler's ``init_noise_sigma``.
    """
    _check_guidance(steps, guidance)
    n = text_states.shape[0]
    cfg = unet.config
    device = text_states.device
    if latents is None:
        latents = _noise(n, (cfg.in_channels, cfg.sample_size, cfg.sample_size), generator,
                         device)  # fmt: skip
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    context = torch.cat([empty_states.expand(n, -1, -1), text_states])
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = guided(unet(x, t, encoder_hidden_states=context).sample, guidance)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


@torch.no_grad()
def sample_flow(
    model: torch.nn.Module,
    scheduler: Any,
    text_states: torch.Tensor,
    empty_states: torch.Tensor,
    *,
    steps: int = 20,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    shape: Sequence[int] = (4, 8, 8),
) -> torch.Tensor:
    """Latents from a rectified-flow (velocity) model with classifier-free guidance.

    ``model(latents, sigma, states)`` returns the velocity ``noise - x0``; the scheduler is a
    ``FlowMatchEulerDiscreteScheduler`` (its ``sigmas`` give the Euler grid, ``sigma = t/1000``).
    """
    _check_guidance(steps, guidance)
    n = text_states.shape[0]
    device = text_states.device
    if latents is None:
        latents = _noise(n, shape, generator, device)
    scheduler.set_timesteps(steps)
    context = torch.cat([empty_states.expand(n, -1, -1), text_states])
    for t in scheduler.timesteps:
        sigma = t / scheduler.config.num_train_timesteps
        v = guided(model(torch.cat([latents, latents]), sigma, context), guidance)
        latents = scheduler.step(v, t, latents).prev_sample
    return latents


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Images in [0, 1] from (scaled) latents: ``vae.decode(latents / scaling_factor)``."""
    scale = vae.config.scaling_factor
    parts = [vae.decode(latents[i : i + batch] / scale).sample
             for i in range(0, latents.shape[0], batch)]  # fmt: skip
    return ((torch.cat(parts) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode(vae: torch.nn.Module, images: torch.Tensor, sample: bool = False,
           generator: torch.Generator | None = None, batch: int = 256) -> torch.Tensor:  # fmt: skip
    """Scaled latents of images in [0, 1] (posterior mean, or a sample with ``sample=True``)."""
    if images.min() < -1e-6 or images.max() > 1 + 1e-6:
        raise ValueError("images must lie in [0, 1]")
    out = []
    for i in range(0, images.shape[0], batch):
        dist = vae.encode(2 * images[i : i + batch] - 1).latent_dist
        out.append(dist.sample(generator) if sample else dist.mean)
    return torch.cat(out) * vae.config.scaling_factor
