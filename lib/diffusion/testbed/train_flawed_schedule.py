"""Stages ``flawed_unet``, ``oms`` and ``flawed_style_lora`` of ``make testbed``.

    python -m lib.diffusion.testbed.train --only flawed_unet oms flawed_style_lora --threads 1

* ``flawed_unet``: the testbed UNet (same architecture) on a schedule whose terminal signal
  ``sqrt(alpha_bar_T)`` is 0.3 instead of SD's 0.068 (:func:`flawed_scheduler`: SD's
  ``scaled_linear`` betas with ``beta_end`` lowered until the terminal signal is 0.3). At an 8x8x4
  latent, SD's own schedule leaks too little of the image mean to show the brightness flaw that
  One More Step fixes (see the chapter's Part A); this schedule leaks as much as SD's does at
  64x64x4. To stay cheap it is *fine-tuned from the shipped UNet* (the DDPM simple loss on the
  new schedule, 600 steps before the first check), not trained from scratch, and stored in
  float16 (2.2 MB). Criterion:
  caption accuracy (colour and shape) of 20-step guided DDIM samples >= 0.9, as the ``unet``
  stage. The folder also holds the DDIM sampler's ``scheduler_config.json``.
* ``oms``: the One More Step module (:mod:`lib.diffusion.zero_snr_step`), a small
  ``UNet2DConditionModel`` (channels 16, 32; 0.28 M parameters) trained from scratch as the
  paper trains it: v-prediction at SNR 0 on the testbed's training latents and captions (10 %
  empty, for its own guidance), on the frozen testbed text encoder. It never sees either
  denoiser. Criterion (checked every 300 steps): the decoded clean estimate of 64 "dark" and 64
  "bright" validation prompts has mean background brightness below 0.25 / above 0.75 and the
  validation loss has stopped falling (less than 2 % better than at the previous check).
* ``flawed_style_lora``: the shared style LoRA (:mod:`lib.diffusion.testbed.train_lora`,
  ``train_style_lora``) on the flawed UNet under the flawed schedule: the "second model of the
  same latent domain" of the plug-and-play check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from lib.diffusion.sampling import decode, encode_prompts, sample_unet
from lib.diffusion.schedule_flaw import scaled_linear_beta_end
from lib.diffusion.testbed import models
from lib.diffusion.testbed.brightness import background_brightness
from lib.diffusion.testbed.data import MiniTokenizer, generate
from lib.diffusion.testbed.train import LatentPool, _loop, _train_denoiser, unet_loss
from lib.diffusion.zero_snr_step import oms_clean_estimate, oms_loss

TERMINAL_SIGNAL = 0.3
"""``sqrt(alpha_bar_T)`` of the flawed schedule (SD 1.x: 0.068)."""
BETA_START = 0.00085
SCHEDULER_FILE = "scheduler_config.json"


def flawed_scheduler(kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """SD's ``scaled_linear`` schedule (1000 steps, epsilon prediction) with ``beta_end`` chosen
    so that ``sqrt(alpha_bar_999) = TERMINAL_SIGNAL``; DDPM for training, DDIM for sampling (SD's
    sampler settings: ``steps_offset`` 1, ``set_alpha_to_one`` False)."""
    beta_end = scaled_linear_beta_end(TERMINAL_SIGNAL, beta_start=BETA_START, steps=1000)
    config = dict(num_train_timesteps=1000, beta_start=BETA_START, beta_end=beta_end,
                  beta_schedule="scaled_linear", prediction_type="epsilon",
                  clip_sample=False)  # fmt: skip
    if kind == "ddpm":
        return DDPMScheduler(**config)
    if kind == "ddim":
        return DDIMScheduler(**config, set_alpha_to_one=False, steps_offset=1)
    raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")


def oms_unet() -> UNet2DConditionModel:
    """A fresh OMS module: ``UNet2DConditionModel`` on 8x8x4 latents, channels (16, 32),
    cross-attention at both levels (0.28 M parameters; driven at timestep 0 only)."""
    return UNet2DConditionModel(
        sample_size=models.LATENT_SIZE, in_channels=models.LATENT_CHANNELS,
        out_channels=models.LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=models.TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip


def train_flawed_unet(out: Path, seed: int, text: nn.Module, vae: nn.Module, unet: nn.Module, *,
                      max_steps: int = 1800, eval_every: int = 600, lr: float = 5e-4,
                      target: float = 0.9, batch_size: int = 64, pool_size: int = 8192,
                      n_prompts: int = 128) -> tuple[nn.Module, dict]:  # fmt: skip
    """Fine-tune a copy of the shipped ``unet`` on :func:`flawed_scheduler` (DDPM simple loss,
    10 % empty captions, EMA, the ``unet`` stage's loop and criterion)."""
    torch.manual_seed(seed)
    model = type(unet).from_config(unet.config)
    model.load_state_dict(unet.state_dict())
    model.train().requires_grad_(True)

    def sample_fn(m: nn.Module, states: torch.Tensor, empty: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        return sample_unet(m, flawed_scheduler("ddim"), states, empty, steps=20, guidance=3.0,
                           generator=gen)  # fmt: skip

    model, record = _train_denoiser("flawed_unet", out, seed, model,
                                    unet_loss(flawed_scheduler("ddpm")), sample_fn, text, vae,
                                    lr=lr, max_steps=max_steps, eval_every=eval_every,
                                    batch_size=batch_size, target=target, pool_size=pool_size,
                                    n_prompts=n_prompts)  # fmt: skip
    sched = flawed_scheduler("ddim")
    record.update(fine_tuned_from="unet", beta_end=sched.config.beta_end,
                  terminal_signal=float(sched.alphas_cumprod[-1] ** 0.5),
                  stored="float16")  # fmt: skip
    return model.to(torch.float16), record  # 2.2 MB instead of 4.3; loaded as float32


def save_flawed_scheduler(folder: Path) -> None:
    """Write the flawed DDIM sampler's config beside the flawed UNet's weights."""
    flawed_scheduler("ddim").save_config(folder)


def train_oms(out: Path, seed: int, text: nn.Module, vae: nn.Module, *, max_steps: int = 2400,
              eval_every: int = 300, lr: float = 1e-3, batch_size: int = 64,
              pool_size: int = 8192, n_val: int = 512,
              n_prompts: int = 64) -> tuple[nn.Module, dict]:  # fmt: skip
    """Train the OMS module with :func:`lib.diffusion.zero_snr_step.oms_loss` (Adam, 100-step
    warm-up, gradient clipping 1, no EMA)."""
    torch.manual_seed(seed)
    model = oms_unet().train()
    tok = MiniTokenizer()
    pool = LatentPool(vae, pool_size, seed + 7)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    val = generate(n_val, seed=(seed, 70), split="train")
    with torch.no_grad():
        val_z = (vae.encode(val.images_tensor() * 2 - 1).latent_dist.mean
                 * vae.config.scaling_factor)  # fmt: skip
        val_states = encode_prompts(tok, text, val.captions)
        dark = encode_prompts(tok, text, ["a circle on a dark background"] * n_prompts)
        bright = encode_prompts(tok, text, ["a circle on a bright background"] * n_prompts)
    last = {"val_loss": float("inf")}

    def step_fn(step: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 100)
        z, caps = pool.batch(batch_size)
        with torch.no_grad():
            states = text(tok.ids(caps))[0]
        loss = oms_loss(model, z, states)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        model.eval()
        gen = torch.Generator().manual_seed(seed)
        val_loss = float(torch.stack([oms_loss(model, val_z[i:i + 128], val_states[i:i + 128])
                                      for i in range(0, n_val, 128)]).mean())  # fmt: skip
        noise = torch.randn((n_prompts, models.LATENT_CHANNELS, models.LATENT_SIZE,
                             models.LATENT_SIZE), generator=gen)  # fmt: skip
        b_dark = background_brightness(decode(vae, oms_clean_estimate(model, noise, dark)))
        b_bright = background_brightness(decode(vae, oms_clean_estimate(model, noise, bright)))
        model.train()
        gain = 1 - val_loss / last["val_loss"]
        last["val_loss"] = val_loss
        return {"val_loss": val_loss, "relative_gain": float(min(gain, 1.0)),
                "dark_brightness": float(np.mean(b_dark)),
                "bright_brightness": float(np.mean(b_bright))}  # fmt: skip

    record = _loop("oms", out, {"model": model, "opt": opt}, step_fn, eval_fn,
                   lambda m: m["dark_brightness"] < 0.25 and m["bright_brightness"] > 0.75
                   and m["relative_gain"] < 0.02, eval_every, max_steps)  # fmt: skip
    record["trained_on"] = "testbed training latents (no denoiser involved), SNR 0, v-prediction"
    return model.eval().requires_grad_(False), record


def train_flawed_style_lora(out: Path, seed: int, text: nn.Module, vae: nn.Module,
                            flawed_unet: nn.Module) -> tuple[nn.Module, dict]:  # fmt: skip
    """The shared style LoRA (``train_lora.train_style_lora``) on the flawed UNet under the
    flawed schedule."""
    from lib.diffusion.testbed.train_lora import train_style_lora

    adapter, record = train_style_lora("flawed_style_lora", out, seed, flawed_unet,
                                       flawed_scheduler("ddpm"), text, vae)  # fmt: skip
    record["fine_tuned_from"] = "the flawed_unet stage's weights, frozen (LoRA only)"
    return adapter, record
