"""How a non-zero terminal SNR biases generated brightness, in closed form and by Monte Carlo.

A diffusion schedule whose last training step keeps ``alpha_bar_T > 0`` trains the denoiser
on inputs ``x_T = sqrt(alpha_bar_T) x_0 + sqrt(1 - alpha_bar_T) eps`` that still carry the
data's low frequencies, while sampling starts from ``N(0, I)`` (Lin et al., 2024; Hu et al.,
One More Step, 2024, Sec. 3). This module makes that exact on a Gaussian toy where the optimal
denoiser is linear:

* data ``x_0 = mu 1 + s w`` in ``D`` dimensions: a per-image brightness ``mu ~ N(0, var_mu)``
  shared by every pixel plus white pixel noise ``w ~ N(0, I)`` of variance ``s^2``;
* along the unit all-ones direction ``u = 1 / sqrt(D)`` the data variance is
  ``v_0 = D var_mu + s^2``; orthogonal to it, ``s^2``;
* the training marginal at ``T`` has variance ``v_T = alpha_bar_T v_0 + 1 - alpha_bar_T`` along
  ``u``. The probability-flow ODE of the exact score maps ``N(0, v_T)`` to ``N(0, v_0)``, i.e.
  scales by ``sqrt(v_0 / v_T)``; started from ``N(0, 1)`` instead, the generated brightness std is
  the data's times :func:`leak_ratio` ``= 1 / sqrt(v_T)`` (our derivation, for this toy).

:func:`exact_x0` is the posterior mean ``E[x_0 | x_t]`` of the toy (linear, separable in
``u`` and its complement), :func:`ddim_brightness` runs any diffusers scheduler with it (the
epsilon it implies), and :func:`ddim_gain` is the same discrete DDIM map in closed form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq


def alphas_cumprod(scheduler: Any) -> np.ndarray:
    """``alpha_bar_t`` for ``t = 0..T-1`` of a diffusers DDPM/DDIM scheduler, as float64."""
    return scheduler.alphas_cumprod.double().numpy()


def terminal_snr(scheduler: Any) -> float:
    """SNR ``alpha_bar_T / (1 - alpha_bar_T)`` at the last training step (0 for a zero-terminal-
    SNR schedule)."""
    a = float(alphas_cumprod(scheduler)[-1])
    return a / (1 - a)


def scaled_linear_alpha_bar_T(beta_end: float, beta_start: float = 0.00085,
                              steps: int = 1000) -> float:  # fmt: skip
    """``alpha_bar_T`` of SD's ``scaled_linear`` betas (``linspace(sqrt(b0), sqrt(b1))^2``)."""
    if not 0 < beta_start <= beta_end < 1 or steps < 2:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1 and steps >= 2, got "
                         f"{beta_start}, {beta_end}, {steps}")  # fmt: skip
    betas = np.linspace(beta_start**0.5, beta_end**0.5, steps) ** 2
    return float(np.prod(1 - betas))


def scaled_linear_beta_end(terminal_signal: float, beta_start: float = 0.00085,
                           steps: int = 1000) -> float:  # fmt: skip
    """The ``beta_end`` of a ``scaled_linear`` schedule whose ``sqrt(alpha_bar_T)`` equals
    ``terminal_signal`` (found by Brent's method)."""
    top = scaled_linear_alpha_bar_T(beta_start, beta_start, steps) ** 0.5
    if not 0 < terminal_signal < top:
        raise ValueError(f"terminal_signal must lie in (0, {top:.4f}) for beta_start "
                         f"{beta_start} and {steps} steps, got {terminal_signal}")  # fmt: skip
    return float(brentq(lambda b: scaled_linear_alpha_bar_T(b, beta_start, steps) ** 0.5
                        - terminal_signal, beta_start, 0.999, xtol=1e-14))  # fmt: skip


def _check_toy(alpha_bar: float, dim: int, var_mu: float, pixel_var: float) -> None:
    if not 0.0 <= alpha_bar < 1.0:
        raise ValueError(f"alpha_bar must lie in [0, 1), got {alpha_bar}")
    if dim < 1 or var_mu < 0 or pixel_var <= 0:
        raise ValueError(f"need dim >= 1, var_mu >= 0, pixel_var > 0; got {dim}, {var_mu}, "
                         f"{pixel_var}")  # fmt: skip


def leak_ratio(alpha_bar_T: float, dim: int, var_mu: float, pixel_var: float = 0.0) -> float:
    """Generated-over-data brightness std ``1 / sqrt(v_T)`` when sampling starts from
    ``N(0, I)``: ``v_T = alpha_bar_T (D var_mu + s^2) + 1 - alpha_bar_T``."""
    _check_toy(alpha_bar_T, dim, var_mu, max(pixel_var, 1e-300))
    v0 = dim * var_mu + pixel_var
    return float(1 / np.sqrt(alpha_bar_T * v0 + 1 - alpha_bar_T))


def exact_x0(x: torch.Tensor, alpha_bar: float, var_mu: float, pixel_var: float,
             dim: int | None = None) -> torch.Tensor:  # fmt: skip
    """Posterior mean ``E[x_0 | x_t = x]`` of the toy, for rows ``x`` of shape ``(n, d)``.

    With ``d == D`` (``dim=None``) the rows are full vectors: the all-ones component (the row
    mean times ``1``) is shrunk by ``sqrt(a) v_0 / (a v_0 + 1 - a)``, the rest by ``sqrt(a) s^2 /
    (a s^2 + 1 - a)``. With ``d == 1`` and ``dim=D`` the rows are coordinates along ``u`` only
    (the sampler is linear and keeps the two parts apart, so brightness needs nothing else).
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    full = dim is None
    dim = x.shape[1] if full else dim
    if not full and x.shape[1] != 1:
        raise ValueError("with dim given, x must hold coordinates along u: shape (n, 1)")
    _check_toy(alpha_bar, dim, var_mu, pixel_var)
    v0 = dim * var_mu + pixel_var
    a = alpha_bar
    gain_u = a**0.5 * v0 / (a * v0 + 1 - a)
    if not full:
        return gain_u * x
    gain_perp = a**0.5 * pixel_var / (a * pixel_var + 1 - a)
    mean_part = x.mean(dim=1, keepdim=True).expand_as(x)
    return gain_u * mean_part + gain_perp * (x - mean_part)


@torch.no_grad()
def ddim_brightness(scheduler: Any, x_start: torch.Tensor, steps: int, var_mu: float,
                    pixel_var: float, dim: int | None = None) -> torch.Tensor:  # fmt: skip
    """Run ``scheduler`` (diffusers DDIM) from ``x_start`` with the exact toy denoiser; return
    each sample's brightness (its pixel mean; ``x / sqrt(D)`` for coordinates along ``u``).

    ``x_start`` is the state at the sampler's first timestep (e.g. ``N(0, I)`` noise, or an
    exact OMS start :func:`exact_oms_start`). A ``v_prediction`` scheduler gets the velocity
    ``sqrt(a) eps - sqrt(1 - a) x_0`` (needed at SNR 0, where epsilon does not define ``x_0``).
    """
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    v_pred = scheduler.config.prediction_type == "v_prediction"
    x = x_start.double()
    for t in scheduler.timesteps:
        a = float(abar[int(t)])
        x0 = exact_x0(x, a, var_mu, pixel_var, dim)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        out = a**0.5 * eps - (1 - a) ** 0.5 * x0 if v_pred else eps  # v at SNR 0 is -x0
        x = scheduler.step(out, t, x).prev_sample
    return x.mean(dim=1) if dim is None else x[:, 0] / dim**0.5


def ddim_gain(scheduler: Any, steps: int, dim: int, var_mu: float, pixel_var: float) -> float:
    """The discrete DDIM map along ``u`` in closed form: the product over steps of
    ``sqrt(a') g + sqrt(1 - a') (1 - sqrt(a) g) / sqrt(1 - a)`` with ``g`` the shrinkage of
    :func:`exact_x0` at ``a`` and ``a'`` the next ``alpha_bar`` (DDIM with eta 0)."""
    _check_toy(0.0, dim, var_mu, pixel_var)
    scheduler.set_timesteps(steps)
    abar = alphas_cumprod(scheduler)
    ts = [int(t) for t in scheduler.timesteps]
    final = 1.0 if scheduler.config.get("set_alpha_to_one", True) else float(abar[0])
    v0 = dim * var_mu + pixel_var
    gain = 1.0
    for i, t in enumerate(ts):
        a = float(abar[t])
        a_next = float(abar[ts[i + 1]]) if i + 1 < len(ts) else final
        g = a**0.5 * v0 / (a * v0 + 1 - a)
        gain *= a_next**0.5 * g + (1 - a_next) ** 0.5 * (1 - a**0.5 * g) / (1 - a) ** 0.5
    return gain


def exact_oms_start(mu: torch.Tensor, alpha_bar: float, dim: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """The exact OMS step on the toy, as coordinates along ``u``: the clean estimate for a
    prompt that states the brightness ``mu`` is ``E[x_0 | mu] = mu 1`` (coordinate
    ``sqrt(D) mu``), then ``x = sqrt(a) x0_hat + sqrt(1 - a) z``."""
    if not 0.0 <= alpha_bar < 1.0:
        raise ValueError(f"alpha_bar must lie in [0, 1), got {alpha_bar}")
    z = torch.randn(mu.shape[0], 1, generator=generator, dtype=torch.float64)
    return alpha_bar**0.5 * dim**0.5 * mu.double().reshape(-1, 1) + (1 - alpha_bar) ** 0.5 * z
