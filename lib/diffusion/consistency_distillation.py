"""Latent consistency distillation (LCD) of an epsilon-prediction UNet, and few-step sampling.

Luo et al. (2023a, "Latent Consistency Models", Algorithm 1; 2023b, LCM-LoRA) distil a
pretrained latent diffusion model into a *consistency function* ``f_theta(x_t, c, t)`` that maps
any point of the probability-flow ODE trajectory straight to its origin. The pieces, with the
equation each function computes:

* :func:`boundary_scalings` -- the skip parameterisation ``f = c_skip(t) x_t + c_out(t)
  x0_theta(x_t, t)`` with ``c_skip = s^2 / ((k t)^2 + s^2)`` and ``c_out = k t / sqrt((k t)^2
  + s^2)`` (``s = sigma_data = 0.5``, ``k = 10`` the timestep scaling of the official code), so
  ``f(x, 0) = x`` exactly (the boundary condition).
* :func:`predicted_x0` -- ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``;
  :func:`clean_and_noise` reads ``(x0, eps)`` off an epsilon- or an x0-prediction
  (``"sample"``) model's output.
* :func:`skipping_timesteps` -- the teacher's DDIM grid ``t_n = n k - 1`` (``k = 1000 / N``,
  ``N = 50`` DDIM steps), the *skipping-step* schedule: one solver step spans ``k = 20``
  training timesteps.
* :func:`lcd_loss` -- one LCD loss: noise ``z`` to ``x_{t_{n+k}}``, one guided DDIM step of the
  frozen teacher to ``x_hat_{t_n}`` (classifier-free guidance ``w``), and the distance between the
  online model's ``f_theta(x_{t_{n+k}})`` and the EMA target's ``f_theta^-(x_hat_{t_n})``.
* :func:`ema_update` -- ``theta^- <- mu theta^- + (1 - mu) theta`` (LCM uses ``mu = 0.95``).
* :func:`sample_lcm` -- multistep consistency sampling with diffusers' ``LCMScheduler``
  (guidance is distilled into the model, so there is one UNet pass per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_scalings(t: torch.Tensor, sigma_data: float = SIGMA_DATA,
                      timestep_scaling: float = TIMESTEP_SCALING
                      ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(c_skip(t), c_out(t))`` of the consistency parameterisation (LCM, eq. 6 and the
    official code's ``scalings_for_boundary_conditions``); ``c_skip(0) = 1``, ``c_out(0) = 0``."""
    if sigma_data <= 0 or timestep_scaling <= 0:
        raise ValueError("sigma_data and timestep_scaling must be positive")
    scaled = timestep_scaling * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def predicted_x0(eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Clean-latent estimate ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDIM, eq. 12)."""
    abar = _expand(alphas_cumprod[t], x_t)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


PREDICTIONS = ("epsilon", "sample")


def clean_and_noise(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(x0, eps)`` from a model output: epsilon prediction gives ``x0`` by
    :func:`predicted_x0`; x0 prediction (``"sample"``) gives ``eps = (x_t - sqrt(abar) x0) /
    sqrt(1 - abar)`` (DDIM, eq. 12 solved the other way)."""
    if prediction_type == "epsilon":
        return predicted_x0(output, x_t, t, alphas_cumprod), output
    if prediction_type == "sample":
        abar = _expand(alphas_cumprod[t], x_t)
        return output, (x_t - abar.sqrt() * output) / (1 - abar).sqrt()
    raise ValueError(f"prediction_type must be one of {PREDICTIONS}, got {prediction_type!r}")


def consistency_function(unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                         states: torch.Tensor, alphas_cumprod: torch.Tensor,
                         prediction_type: str = "epsilon") -> torch.Tensor:  # fmt: skip
    """``f(x_t, c, t) = c_skip(t) x_t + c_out(t) x0_theta(x_t, t, c)`` (LCM, eq. 6)."""
    out = unet(x_t, t, encoder_hidden_states=states).sample
    x0, _ = clean_and_noise(out, x_t, t, alphas_cumprod, prediction_type)
    c_skip, c_out = boundary_scalings(t)
    return _expand(c_skip, x_t) * x_t + _expand(c_out, x_t) * x0


def skipping_timesteps(num_train_timesteps: int = 1000, ddim_steps: int = 50) -> torch.Tensor:
    """The teacher solver's grid ``t_n = n k - 1``, ``n = 1..N``, ``k = T / N`` (LCM, sec. 4.3)."""
    if ddim_steps < 1 or num_train_timesteps % ddim_steps:
        raise ValueError(f"ddim_steps ({ddim_steps}) must divide num_train_timesteps "
                         f"({num_train_timesteps})")  # fmt: skip
    k = num_train_timesteps // ddim_steps
    return torch.arange(1, ddim_steps + 1) * k - 1


def lcd_loss(
    student: nn.Module, target: nn.Module, teacher: nn.Module, z0: torch.Tensor,
    states: torch.Tensor, empty_states: torch.Tensor, alphas_cumprod: torch.Tensor, *,
    guidance: float = 3.0, grid: torch.Tensor | None = None, huber_c: float | None = None,
    generator: torch.Generator | None = None, prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The latent consistency distillation loss of one batch (LCM, Algorithm 1).

    ``z0`` ``(n, 4, h, w)`` scaled clean latents; ``states`` the captions' text states (empty
    captions included), ``empty_states`` ``(1, L, d)`` the empty prompt's for guidance. Draws
    ``n ~ U{1..N}``, ``x_{t_{n+k}} = sqrt(abar) z0 + sqrt(1 - abar) eps``; the teacher's guided
    epsilon ``eps_u + w (eps_c - eps_u)`` and its ``x0`` give the DDIM step to ``t_n``:
    ``x_hat = sqrt(abar_{t_n}) x0 + sqrt(1 - abar_{t_n}) eps``; the loss is
    ``d(f_student(x_{t_{n+k}}, t_{n+k}), f_target(x_hat, t_n))`` with ``d`` the squared error
    (or the pseudo-Huber ``sqrt(d^2 + c^2) - c`` when ``huber_c`` is given). Teacher and
    student share ``prediction_type`` (``"epsilon"`` or ``"sample"``; guidance combines the
    outputs linearly either way).
    """
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1, got {guidance}")
    if states.shape[0] != z0.shape[0]:
        raise ValueError(f"{states.shape[0]} text states for {z0.shape[0]} latents")
    grid = skipping_timesteps(alphas_cumprod.shape[0]) if grid is None else grid
    k = int(grid[1] - grid[0]) if grid.numel() > 1 else int(grid[0]) + 1
    n = z0.shape[0]
    idx = torch.randint(0, grid.numel(), (n,), generator=generator)
    t_start = grid[idx]
    t_end = (t_start - k).clamp(min=0)
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    abar = _expand(alphas_cumprod[t_start], z0)
    x_start = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    with torch.no_grad():
        context = torch.cat([empty_states.expand(n, -1, -1), states])
        out_u, out_c = teacher(torch.cat([x_start, x_start]), torch.cat([t_start, t_start]),
                               encoder_hidden_states=context).sample.chunk(2)  # fmt: skip
        x0, eps = clean_and_noise(out_u + guidance * (out_c - out_u), x_start, t_start,
                                  alphas_cumprod, prediction_type)  # fmt: skip
        abar_end = _expand(alphas_cumprod[t_end], z0)
        x_end = abar_end.sqrt() * x0 + (1 - abar_end).sqrt() * eps
        f_target = consistency_function(target, x_end, t_end, states, alphas_cumprod,
                                        prediction_type)  # fmt: skip
    f_student = consistency_function(student, x_start, t_start, states, alphas_cumprod,
                                     prediction_type)  # fmt: skip
    if huber_c is None:
        return F.mse_loss(f_student.float(), f_target.float())
    if huber_c <= 0:
        raise ValueError(f"huber_c must be positive, got {huber_c}")
    diff = (f_student.float() - f_target.float()) ** 2
    return (torch.sqrt(diff.flatten(1).sum(1) + huber_c**2) - huber_c).mean()


@torch.no_grad()
def ema_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor],
               decay: float) -> None:  # fmt: skip
    """``theta^- <- decay theta^- + (1 - decay) theta`` in place (LCM's target network)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    if len(target) != len(online):
        raise ValueError(f"{len(target)} target tensors for {len(online)} online tensors")
    for t, o in zip(target, online):
        t.mul_(decay).add_(o.detach(), alpha=1 - decay)


@torch.no_grad()
def sample_lcm(
    unet: nn.Module, scheduler: object, text_states: torch.Tensor, *, steps: int = 4,
    generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Few-step latents from a consistency-distilled UNet with ``LCMScheduler`` (LCM,
    Algorithm 3: evaluate ``f``, then re-noise to the next, smaller timestep)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    n = text_states.shape[0]
    cfg = unet.config
    if latents is None:
        latents = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                              generator=generator)  # fmt: skip
    latents = latents.to(text_states.device) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = unet(latents, t, encoder_hidden_states=text_states).sample
        latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    return latents
