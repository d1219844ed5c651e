"""The ``lcm_lora`` stage of ``make testbed``: latent consistency distillation into a LoRA.

    python -m lib.diffusion.testbed.train --only lcm_lora --threads 1

LCM-LoRA (Luo et al., 2023b) trains only LoRA adapters of a frozen latent diffusion model with
the latent consistency distillation loss
(:func:`lib.diffusion.consistency_distillation.lcd_loss`): the teacher is the shipped UNet
itself (adapters off), sampled with one guided DDIM step (guidance 3, the testbed's usual
scale) over a skip of ``k = 100`` training timesteps on a 10-step grid (LCM's default is ``k =
20`` on 50 steps; consistency spreads from ``t = 0`` one grid step per target update, and a
50-step grid needed more steps than this stage's budget: after 200 steps at ``k = 20`` the
4-step accuracy had moved from 0.56 to 0.61 only); the target network is an exponential moving
average of the online LoRA (``mu = 0.95``, LCM's value; diffusers' LoRA script uses the online
weights, ``mu = 0``). The student starts as the teacher (LoRA ``B = 0``). Training data are
autoencoder latents of testbed images with 10 % empty captions, as the UNet was trained.

The stage stops when ``LCMScheduler`` samples (one UNet pass per step, no guidance at sampling:
it is distilled in) reach caption accuracy (colour and shape, 64 validation prompts) ``target``
= 0.75 at 4 steps and ``target_2`` = 0.6 at 2 steps (the shipped UNet sampled the same way,
before distillation, scores about 0.56 and 0.41; guided DDIM at 20 steps about 0.9). The
adapter (rank 8 on attention and convolution layers, float16) is about 0.35 MB.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import LCMScheduler
from torch import nn

from lib.diffusion.consistency_distillation import (
    ema_update,
    lcd_loss,
    sample_lcm,
    skipping_timesteps,
)
from lib.diffusion.lora_adapters import (
    ATTENTION_TARGETS,
    CONV_TARGETS,
    LoraAdapter,
    add_lora,
    lora_config,
)
from lib.diffusion.sampling import decode
from lib.diffusion.testbed import models
from lib.diffusion.testbed.data import MiniTokenizer
from lib.diffusion.testbed.evaluators import caption_accuracy
from lib.diffusion.testbed.train import LatentPool, _eval_prompts, _judge, _loop

ADAPTER = "lcm_lora"


DDIM_GRID = 10
"""Teacher grid: 10 DDIM steps, so one solver step skips k = 100 training timesteps."""


def lcm_scheduler(grid: int = DDIM_GRID) -> LCMScheduler:
    """diffusers' ``LCMScheduler`` on the testbed's SD 1.x schedule, timesteps on the
    distillation grid (``original_inference_steps``)."""
    return LCMScheduler.from_config(models.unet_scheduler("ddim").config,
                                    original_inference_steps=grid)  # fmt: skip


def _lora_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for n, p in sorted(model.named_parameters()) if f".{ADAPTER}." in n]


def train_lcm_lora(
    out: Path, seed: int, unet: nn.Module, text: nn.Module, vae: nn.Module, *, rank: int = 8,
    max_steps: int = 800, eval_every: int = 50, batch_size: int = 24, lr: float = 2e-3,
    ema_decay: float = 0.95, guidance: float = 3.0, target: float = 0.75, target_2: float = 0.6,
    pool_size: int = 4096, n_prompts: int = 64, sample_steps: int = 4, ddim_grid: int = DDIM_GRID,
) -> tuple[LoraAdapter, dict]:
    """Distil ``unet`` (frozen teacher) into an LCM-LoRA; returns the adapter and the record."""
    if batch_size < 1 or n_prompts < 1 or sample_steps < 1:
        raise ValueError("batch_size, n_prompts and sample_steps must be positive")
    torch.manual_seed(seed)
    teacher = unet.eval().requires_grad_(False)
    student = copy.deepcopy(unet).train()
    add_lora(student, ADAPTER, lora_config(rank, ATTENTION_TARGETS + CONV_TARGETS))
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    online, shadow = _lora_params(student), _lora_params(ema)
    opt = torch.optim.AdamW(online, lr=lr, weight_decay=0.0)
    alphas = models.unet_scheduler("ddpm").alphas_cumprod
    tok = MiniTokenizer()
    classifier = _judge(out)
    pool = LatentPool(vae, pool_size, seed)
    prompts = _eval_prompts(seed, n_prompts)
    with torch.no_grad():
        prompt_states = text(tok.ids(prompts))[0]
        empty_states = text(tok.ids([""]))[0]
    gen = torch.Generator().manual_seed(seed)
    grid = skipping_timesteps(1000, ddim_grid)

    def step_fn(step: int) -> float:
        for group in opt.param_groups:  # linear warm-up over 50 steps
            group["lr"] = lr * min(1.0, step / 50)
        z, caps = pool.batch(batch_size)
        with torch.no_grad():
            states = text(tok.ids(caps))[0]
        loss = lcd_loss(student, ema, teacher, z, states, empty_states, alphas,
                        guidance=guidance, grid=grid, generator=gen)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online, 1.0)
        opt.step()
        ema_update(shadow, online, ema_decay)
        return loss.item()

    def eval_fn() -> dict[str, float]:
        student.eval()
        metrics = {}
        for steps in sorted({2, sample_steps}):
            latents = sample_lcm(student, lcm_scheduler(ddim_grid), prompt_states, steps=steps,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
            acc = caption_accuracy(classifier, decode(vae, latents), prompts).accuracy
            metrics[f"caption_accuracy_{steps}"] = acc
        student.train()
        return metrics

    record = _loop(ADAPTER, out, {"student": student, "ema": ema, "opt": opt}, step_fn, eval_fn,
                   lambda m: m[f"caption_accuracy_{sample_steps}"] >= target
                   and m["caption_accuracy_2"] >= target_2, eval_every, max_steps)  # fmt: skip
    record.update(rank=rank, guidance=guidance, ema_decay=ema_decay, skip=1000 // ddim_grid,
                  ddim_grid=ddim_grid,
                  fine_tuned_from="the shipped UNet (teacher, frozen; LoRA only)")  # fmt: skip
    return LoraAdapter.from_model(student, ADAPTER), record
