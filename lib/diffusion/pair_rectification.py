"""Rectification on a model's own noise-sample pairs, in diffusion form and in flow form.

Rectified Diffusion (Wang et al., ICLR 2025, arXiv:2410.07303) keeps a pretrained diffusion
model's own form (variance-preserving schedule, epsilon prediction) and retrains it on the
deterministic pairs ``(eps, x0_hat(eps))`` its probability-flow ODE (DDIM, eta = 0) makes:

* :class:`VPSchedule`: the discrete VP schedule ``alpha_t = sqrt(abar_t)``, ``sigma_t =
  sqrt(1 - abar_t)`` (Stable Diffusion's ``scaled_linear`` betas by default, or DDPM's linear).
* :class:`TimeMLP`: a small denoiser ``f(x, s)`` for 2-D data, ``s`` the time in [0, 1].
* :func:`predict`: the model output read as epsilon, x0 or v (Salimans and Ho's
  ``v = alpha eps - sigma x0``), returned as the pair ``(eps_hat, x0_hat)``.
* :func:`ddim_sample`: DDIM with eta = 0 on diffusers' "trailing" grid (paper eq. 2 / the
  first-order update of eq. 5), with the whole trajectory.
* :func:`train_vp`: the denoising loss with fresh noise (the teacher) or with the paired noise
  (Rectified Diffusion, the paper's eq. 7:
  ``E || eps - eps_theta(alpha_t x0_hat + sigma_t eps, t) ||^2``).
* :func:`train_flow` and :func:`euler_flow_sample`: the flow-matching form of 2-rectified flow
  (Liu et al., 2023): ``x_s = (1 - s) x0 + s eps``, velocity target ``eps - x0``, Euler steps.
* :func:`make_pairs`, :func:`coupling_mse`, :func:`path_curvature`, :func:`epsilon_drift`:
  the pairs and the measurements the chapter reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lib.nn.mlp import mlp

PARAMETERISATIONS = ("eps", "x0", "v")


# -- schedule ------------------------------------------------------------------------------------


@dataclass
class VPSchedule:
    """Discrete variance-preserving schedule over ``T`` training timesteps.

    ``kind="scaled_linear"`` is Stable Diffusion's (betas linear in sqrt between ``beta_start``
    and ``beta_end``, 0.00085 and 0.012), ``kind="linear"`` DDPM's (0.0001 to 0.02). The
    noised sample at timestep ``t`` is ``x_t = alpha_t x0 + sigma_t eps`` with
    ``alpha_t^2 = abar_t = prod_{i <= t} (1 - beta_i)`` and ``sigma_t^2 = 1 - abar_t``.
    """

    kind: str = "scaled_linear"
    T: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.T < 2:
            raise ValueError(f"T must be at least 2, got {self.T}")
        defaults = {"scaled_linear": (0.00085, 0.012), "linear": (0.0001, 0.02)}
        if self.kind not in defaults:
            raise ValueError(f"kind must be one of {sorted(defaults)}, got {self.kind!r}")
        lo, hi = defaults[self.kind]
        lo = lo if self.beta_start is None else self.beta_start
        hi = hi if self.beta_end is None else self.beta_end
        if not 0 < lo <= hi < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {lo}, {hi}")
        self.beta_start, self.beta_end = lo, hi
        if self.kind == "scaled_linear":
            betas = torch.linspace(lo**0.5, hi**0.5, self.T, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(lo, hi, self.T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    def alpha_sigma(self, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` in float32 for integer timesteps ``t`` (``t = -1`` is the clean
        end, ``alpha = 1``, ``sigma = 0``, as in DDIM's final step with ``set_alpha_to_one``)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if (t < -1).any() or (t >= self.T).any():
            raise ValueError(f"timesteps must lie in [-1, {self.T - 1}]")
        one = torch.ones((), dtype=torch.float64)
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], one)
        return abar.sqrt().float(), (1 - abar).sqrt().float()

    def trailing_timesteps(self, steps: int) -> list[int]:
        """diffusers' ``timestep_spacing="trailing"`` grid: ``round(arange(T, 0, -T/steps)) - 1``,
        so that one step starts at the last timestep ``T - 1``."""
        if steps < 1 or steps > self.T:
            raise ValueError(f"steps must lie in [1, {self.T}], got {steps}")
        return [int(t) for t in np.round(np.arange(self.T, 0, -self.T / steps)).astype(int) - 1]


# -- model ---------------------------------------------------------------------------------------


class TimeMLP(nn.Module):
    """Denoiser ``f(x, s)`` for low-dimensional data: ``x`` concatenated with the Fourier
    features ``(s, sin(k pi s), cos(k pi s))_{k = 1..frequencies}`` of the time ``s`` in [0, 1],
    through a SiLU MLP (:func:`lib.nn.mlp.mlp`). The same network serves as an epsilon, x0 or v
    predictor (VP form, ``s = t / T``) or as a velocity field (flow form, ``s`` the flow time)."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, frequencies: int = 8):
        super().__init__()
        if dim < 1 or width < 1 or depth < 1 or frequencies < 0:
            raise ValueError(f"dim, width, depth must be positive and frequencies >= 0, got "
                             f"{dim}, {width}, {depth}, {frequencies}")  # fmt: skip
        self.dim, self.frequencies = dim, frequencies
        self.register_buffer("k", torch.arange(1, frequencies + 1, dtype=torch.float32) * math.pi)
        self.net = mlp([dim + 1 + 2 * frequencies, *([width] * depth), dim], "silu")

    def forward(self, x: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        features = torch.cat([x, s, torch.sin(s * self.k), torch.cos(s * self.k)], dim=1)
        return self.net(features)


def predict(model: nn.Module, schedule: VPSchedule, x: torch.Tensor, t: int,
            param: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(eps_hat, x0_hat)`` at ``x = x_t`` from a VP model whose output is read as ``param``:

    * ``eps``: ``x0 = (x - sigma eps) / alpha``;  ``x0``: ``eps = (x - alpha x0) / sigma``;
    * ``v`` (``v = alpha eps - sigma x0``): ``x0 = alpha x - sigma v``, ``eps = sigma x + alpha v``.
    """
    if param not in PARAMETERISATIONS:
        raise ValueError(f"param must be one of {PARAMETERISATIONS}, got {param!r}")
    if not 0 <= t < schedule.T:
        raise ValueError(f"timestep must lie in [0, {schedule.T - 1}], got {t}")
    alpha, sigma = schedule.alpha_sigma(t)
    out = model(x, t / schedule.T)
    if param == "eps":
        return out, (x - sigma * out) / alpha
    if param == "x0":
        return (x - alpha * out) / sigma, out
    return sigma * x + alpha * out, alpha * x - sigma * out


@torch.no_grad()
def ddim_sample(model: nn.Module, schedule: VPSchedule, noise: torch.Tensor, steps: int,
                param: str = "eps", return_trajectory: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, list[int]]:  # fmt: skip
    """Deterministic DDIM (eta = 0) from ``x_{T-1} = noise`` on the trailing grid.

    Each step is the paper's first-order update (its eq. 5, DDIM's eq. 12):
    ``x_{t'} = alpha_{t'} x0_hat(x_t, t) + sigma_{t'} eps_hat(x_t, t)``, with ``t' = -1``
    (``alpha = 1``, ``sigma = 0``) after the last step. With ``return_trajectory`` it returns
    ``(x0, trajectory (steps + 1, n, d), timesteps)``, the trajectory starting at ``noise``.
    """
    if noise.ndim != 2:
        raise ValueError(f"noise must be (n, d), got shape {tuple(noise.shape)}")
    grid = schedule.trailing_timesteps(steps)
    x, path = noise, [noise]
    for i, t in enumerate(grid):
        eps, x0 = predict(model, schedule, x, t, param)
        alpha_next, sigma_next = schedule.alpha_sigma(grid[i + 1] if i + 1 < steps else -1)
        x = alpha_next * x0 + sigma_next * eps
        path.append(x)
    return (x, torch.stack(path), grid) if return_trajectory else x


@torch.no_grad()
def euler_flow_sample(model: nn.Module, noise: torch.Tensor, steps: int,
                      return_trajectory: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Euler steps of a flow-form model from ``s = 1`` (noise) to ``s = 0`` on a uniform grid:
    ``x <- x + (s' - s) v(x, s)``, ``v`` the predicted ``eps - x0``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if noise.ndim != 2:
        raise ValueError(f"noise must be (n, d), got shape {tuple(noise.shape)}")
    grid = torch.linspace(1.0, 0.0, steps + 1)
    x, path = noise, [noise]
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = x + (s_next - s) * model(x, float(s))
        path.append(x)
    return (x, torch.stack(path)) if return_trajectory else x


# -- training ------------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """Loss every ``log_every`` steps and the wall time of the run."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def step_ms(self) -> float:
        return 1e3 * self.seconds / max(1, self.steps[-1] if self.steps else 1)


def _check_training(steps: int, batch: int, lr: float) -> None:
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be positive, got {steps}, {batch}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")


def _fit(model: nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], steps: int,
         lr: float, seed: int, log_every: int,
         log: Callable[[str], None] | None) -> TrainLog:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
    record, start, running = TrainLog(), time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            count = log_every if step % log_every == 0 else step % log_every
            record.steps.append(step)
            record.losses.append(running / count)
            running = 0.0
            if log is not None:
                elapsed = time.perf_counter() - start
                log(f"step {step:5d}/{steps}: loss {record.losses[-1]:.4f} "
                    f"({1e3 * elapsed / step:.2f} ms/step)")  # fmt: skip
    record.seconds = time.perf_counter() - start
    return record


def vp_target(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              param: str) -> torch.Tensor:  # fmt: skip
    """The regression target of a VP model in parameterisation ``param`` (eps, x0 or v)."""
    if param not in PARAMETERISATIONS:
        raise ValueError(f"param must be one of {PARAMETERISATIONS}, got {param!r}")
    return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[param]


def train_vp(model: nn.Module, schedule: VPSchedule, x0: torch.Tensor,
             noise: torch.Tensor | None = None, *, param: str = "eps", steps: int = 4000,
             batch: int = 512, lr: float = 1e-3, seed: int = 0, log_every: int = 500,
             log: Callable[[str], None] | None = None) -> TrainLog:  # fmt: skip
    """Train a VP model in place on ``x_t = alpha_t x0 + sigma_t eps``, ``t ~ U{0..T-1}``.

    ``noise=None`` draws fresh ``eps ~ N(0, I)`` for every example: the ordinary denoising
    loss (DDPM, the teacher). Given ``noise`` (same shape as ``x0``), example ``i`` always
    uses its own ``noise[i]``: Rectified Diffusion's loss on the teacher's pairs (paper eq. 7),
    ``|| target(x0_hat_i, eps_i) - f(alpha_t x0_hat_i + sigma_t eps_i, t) ||^2``.
    """
    _check_training(steps, batch, lr)
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (n, d), got shape {tuple(x0.shape)}")
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match x0 {tuple(x0.shape)}")
    vp_target(x0[:1], x0[:1], torch.ones(1), torch.ones(1), param)  # validates param
    n = x0.shape[0]

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, n, (batch,), generator=gen)
        t = torch.randint(0, schedule.T, (batch,), generator=gen)
        eps = torch.randn((batch, x0.shape[1]), generator=gen) if noise is None else noise[idx]
        alpha, sigma = (a[:, None] for a in schedule.alpha_sigma(t))
        xt = alpha * x0[idx] + sigma * eps
        out = model(xt, t.float() / schedule.T)
        return ((out - vp_target(x0[idx], eps, alpha, sigma, param)) ** 2).sum(1).mean()

    return _fit(model, loss_fn, steps, lr, seed, log_every, log)


def train_flow(model: nn.Module, x0: torch.Tensor, noise: torch.Tensor, *, steps: int = 4000,
               batch: int = 512, lr: float = 1e-3, seed: int = 0, log_every: int = 500,
               log: Callable[[str], None] | None = None) -> TrainLog:  # fmt: skip
    """Rectified flow's reflow step on pairs (Liu et al., 2023, eq. 1): ``s ~ U(0, 1)``,
    ``x_s = (1 - s) x0 + s eps``, loss ``|| (eps - x0) - v(x_s, s) ||^2``."""
    _check_training(steps, batch, lr)
    if x0.ndim != 2 or noise.shape != x0.shape:
        raise ValueError(f"x0 and noise must both be (n, d), got {tuple(x0.shape)}, "
                         f"{tuple(noise.shape)}")  # fmt: skip
    n = x0.shape[0]

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, n, (batch,), generator=gen)
        s = torch.rand((batch, 1), generator=gen)
        xs = (1 - s) * x0[idx] + s * noise[idx]
        return ((model(xs, s) - (noise[idx] - x0[idx])) ** 2).sum(1).mean()

    return _fit(model, loss_fn, steps, lr, seed, log_every, log)


# -- pairs and measurements ----------------------------------------------------------------------


@torch.no_grad()
def make_pairs(teacher: nn.Module, schedule: VPSchedule, noise: torch.Tensor,
               ode_steps: int = 100,
               param: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The teacher's deterministic coupling: ``(noise, x0_hat)`` with ``x0_hat`` its
    ``ode_steps``-step DDIM (eta = 0) solution from ``noise`` (the paper's Algorithm 1, step 1).
    Stochastic samplers would break the pairing; this one never draws noise."""
    if ode_steps < 1:
        raise ValueError(f"ode_steps must be at least 1, got {ode_steps}")
    return noise, ddim_sample(teacher, schedule, noise, ode_steps, param)


def coupling_mse(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of ``||x_i - reference_i||^2``: how far a sampler's map is from the
    reference map on the same noises (not a distribution distance)."""
    if x.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    return float(((x - reference) ** 2).sum(-1).mean())


def path_curvature(trajectory: torch.Tensor) -> float:
    """Mean over samples of path length / chord length for ``trajectory`` ``(K + 1, n, d)``:
    1 for straight paths, above 1 for curved ones."""
    if trajectory.ndim != 3 or trajectory.shape[0] < 2:
        raise ValueError("trajectory must be (K + 1, n, d) with K >= 1, got "
                         f"{tuple(trajectory.shape)}")
    length = (trajectory[1:] - trajectory[:-1]).norm(dim=-1).sum(0)
    chord = (trajectory[-1] - trajectory[0]).norm(dim=-1)
    return float((length / chord.clamp(min=1e-12)).mean())


@torch.no_grad()
def epsilon_drift_profile(model: nn.Module, schedule: VPSchedule, trajectory: torch.Tensor,
                          timesteps: list[int], param: str = "eps") -> torch.Tensor:  # fmt: skip
    """Relative change of the predicted noise along DDIM trajectories, one value per step:
    ``mean_i || eps_hat(x_{t_k}, t_k) - eps_hat(x_{t_0}, t_0) || / || eps_hat(x_{t_0}, t_0) ||``
    for the states ``trajectory[k]`` at ``timesteps[k]``, k = 1 .. len(timesteps) - 1 (the last
    state, at t = -1, is left out). Zero means the path is first order (the paper's Sec. 3):
    the noise prediction is constant, so one DDIM step lands where many do."""
    if len(timesteps) < 2 or trajectory.shape[0] < len(timesteps):
        raise ValueError("need at least two timesteps and a state for each")
    eps0 = predict(model, schedule, trajectory[0], timesteps[0], param)[0]
    scale = eps0.norm(dim=-1).clamp(min=1e-12)
    return torch.stack([((predict(model, schedule, trajectory[k], t, param)[0] - eps0)
                         .norm(dim=-1) / scale).mean()
                        for k, t in enumerate(timesteps[1:], 1)])  # fmt: skip


def epsilon_drift(model: nn.Module, schedule: VPSchedule, trajectory: torch.Tensor,
                  timesteps: list[int], param: str = "eps") -> float:  # fmt: skip
    """Mean of :func:`epsilon_drift_profile` over the steps of the trajectory."""
    return float(epsilon_drift_profile(model, schedule, trajectory, timesteps, param).mean())


class GaussianEpsilon(nn.Module):
    """The exact noise prediction for data ``N(mean, std^2 I)`` under a VP schedule:
    ``E[eps | x_t] = sigma_t (x_t - alpha_t mean) / (alpha_t^2 std^2 + sigma_t^2)``
    (a closed form for checking samplers; called with ``s = t / T`` like :class:`TimeMLP`)."""

    def __init__(self, schedule: VPSchedule, mean: torch.Tensor, std: float):
        super().__init__()
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.schedule, self.std = schedule, std
        self.mean = torch.as_tensor(mean, dtype=torch.float32)

    def forward(self, x: torch.Tensor, s: float) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(round(float(s) * self.schedule.T))
        return sigma * (x - alpha * self.mean) / (alpha**2 * self.std**2 + sigma**2)

    def flow_map(self, noise: torch.Tensor) -> torch.Tensor:
        """Where the probability-flow ODE from ``x_{T-1} = noise`` ends: the ODE is affine for
        Gaussian data,
        ``x0 = mean + std (noise - alpha_T mean) / sqrt(alpha_T^2 std^2 + sigma_T^2)``
        (our derivation, standard: the marginal's standardised coordinate is conserved)."""
        alpha, sigma = self.schedule.alpha_sigma(self.schedule.T - 1)
        return self.mean + self.std * (noise - alpha * self.mean) / torch.sqrt(
            alpha**2 * self.std**2 + sigma**2)
