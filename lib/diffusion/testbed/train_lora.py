"""A style for the testbed and the style-LoRA stage of ``make testbed`` (shared by two chapters).

    python -m lib.diffusion.testbed.train --only style_lora --threads 1

The style is a *vertical light ramp*: every image is lit from below, darker at the top and
lighter at the bottom, ``x'(row) = clip(x + a (2 (row + 1/2) / 32 - 1), 0, 1)`` with
``a = STYLE_AMPLITUDE`` (:func:`stylise`). It is measured by :func:`style_score`, the mean
luminance of the bottom four rows minus that of the top four (shapes sit in the middle rows,
so on plain testbed images the score is about 0; on stylised images it is about ``1.6 a``).
Why a ramp and not a colour grade: the testbed autoencoder was trained on grey backgrounds and
turns a tinted background grey again (a sepia grade keeps about a tenth of its tint after one
encode-decode), whereas a smooth brightness ramp is low-frequency grey structure it can carry
(about a third survives, ``STYLE_REFERENCE`` in the record). Content (colour, shape, position)
is untouched and the mean brightness is unchanged except where the ramp clips.

:func:`train_style_lora` fine-tunes a peft LoRA (rank 4 on attention and convolution layers,
:mod:`lib.diffusion.lora_adapters`) on a frozen UNet with the usual epsilon loss
(:func:`lib.diffusion.testbed.train.unet_loss`) on autoencoder latents of stylised testbed
images. It stops when guided 20-step DDIM samples reach ``target_ratio`` of the style score of
autoencoder reconstructions of stylised images (the most a sample can show through this
decoder) while their caption accuracy (colour and shape) stays above ``accuracy_floor``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from torch import nn

from lib.diffusion.lora_adapters import (
    ATTENTION_TARGETS,
    CONV_TARGETS,
    LoraAdapter,
    add_lora,
    lora_config,
)
from lib.diffusion.sampling import decode, encode, sample_unet
from lib.diffusion.testbed.data import MiniTokenizer, generate
from lib.diffusion.testbed.evaluators import caption_accuracy
from lib.diffusion.testbed.train import LatentPool, _eval_prompts, _judge, _loop, unet_loss

STYLE_AMPLITUDE = 0.3
"""Half the brightness difference between the bottom and the top row of a stylised image."""
SCORE_ROWS = 4
"""Rows at the top and at the bottom that :func:`style_score` compares."""
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luminance weights."""


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got shape {x.shape}")
    if x.shape[2] < 2 * SCORE_ROWS:
        raise ValueError(f"images need at least {2 * SCORE_ROWS} rows, got {x.shape[2]}")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError("images must lie in [0, 1]")
    return x


def stylise(images: np.ndarray, amplitude: float = STYLE_AMPLITUDE) -> np.ndarray:
    """The style: add a vertical ramp from ``-amplitude`` (top) to ``+amplitude`` (bottom).

    ``images`` ``(n, 3, H, W)`` in [0, 1]; returns float32 of the same shape, clipped to [0, 1].
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude must lie in [0, 1], got {amplitude}")
    x = _check_images(images)
    h = x.shape[2]
    ramp = (2 * (np.arange(h, dtype=np.float32) + 0.5) / h - 1)[None, None, :, None]
    return np.clip(x + amplitude * ramp, 0.0, 1.0).astype(np.float32)


def style_score(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-image style statistic ``(n,)``: mean luminance of the bottom ``SCORE_ROWS`` rows
    minus that of the top ``SCORE_ROWS`` rows (about 0 for testbed images, about
    ``1.6 * amplitude`` for stylised ones before any autoencoder)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = _check_images(images)
    luma = np.einsum("nchw,c->nhw", x, LUMA)
    return luma[:, -SCORE_ROWS:].mean(axis=(1, 2)) - luma[:, :SCORE_ROWS].mean(axis=(1, 2))


@torch.no_grad()
def reference_style_score(vae: nn.Module, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Mean style score of stylised testbed images, raw and after one encode-decode by ``vae``
    (the second is what a latent model can show at most), and of plain reconstructions."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    x = generate(n, seed=(seed, 70), split="train").images
    styled = stylise(x)
    recon = decode(vae, encode(vae, torch.from_numpy(styled))).numpy()
    plain = decode(vae, encode(vae, torch.from_numpy(x))).numpy()
    return {"stylised": float(style_score(styled).mean()),
            "stylised_reconstructed": float(style_score(recon).mean()),
            "plain_reconstructed": float(style_score(plain).mean())}  # fmt: skip


def ddim_for(noise_scheduler: Any) -> DDIMScheduler:
    """A DDIM sampler on the same noise schedule as a training scheduler (SD's DDIM settings:
    no final alpha of one, steps offset 1)."""
    return DDIMScheduler.from_config(noise_scheduler.config, set_alpha_to_one=False,
                                     steps_offset=1, clip_sample=False)  # fmt: skip


def train_style_lora(
    stage: str, out: Path, seed: int, unet: nn.Module, noise_scheduler: Any, text: nn.Module,
    vae: nn.Module, *, rank: int = 4, max_steps: int = 1500, eval_every: int = 50,
    batch_size: int = 32, lr: float = 1e-3, target_ratio: float = 0.8,
    accuracy_floor: float = 0.75, pool_size: int = 4096, n_prompts: int = 64,
    sample_steps: int = 20, guidance: float = 3.0, sample_scheduler: Any = None,
) -> tuple[LoraAdapter, dict]:
    """Train a style LoRA (adapter name ``stage``) on a copy of the frozen ``unet``.

    Epsilon loss under ``noise_scheduler`` on latents of :func:`stylise`-d testbed images (10 %
    empty captions, as the base model was trained). Evaluated every ``eval_every`` steps on
    ``n_prompts`` colour-and-shape prompts sampled with ``sample_scheduler`` (default: DDIM on
    ``noise_scheduler``'s schedule). Returns the detached adapter and the training record.
    """
    if not 0.0 < target_ratio <= 1.5:
        raise ValueError(f"target_ratio must lie in (0, 1.5], got {target_ratio}")
    if batch_size < 1 or n_prompts < 1:
        raise ValueError("batch_size and n_prompts must be positive")
    torch.manual_seed(seed)
    model = copy.deepcopy(unet).train()
    params = add_lora(model, stage, lora_config(rank, ATTENTION_TARGETS + CONV_TARGETS))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tok = MiniTokenizer()
    classifier = _judge(out)
    pool = LatentPool(vae, pool_size, seed, transform=stylise)
    loss_fn = unet_loss(noise_scheduler)
    sampler = ddim_for(noise_scheduler) if sample_scheduler is None else sample_scheduler
    reference = reference_style_score(vae, seed=seed)
    prompts = _eval_prompts(seed, n_prompts)
    with torch.no_grad():
        prompt_states = text(tok.ids(prompts))[0]
        empty_states = text(tok.ids([""]))[0]
    print(f"[{stage}] style score of stylised reconstructions {reference}", flush=True)

    def step_fn(step: int) -> float:
        for group in opt.param_groups:  # linear warm-up over 50 steps
            group["lr"] = lr * min(1.0, step / 50)
        z, caps = pool.batch(batch_size)
        with torch.no_grad():
            states = text(tok.ids(caps))[0]
        loss = loss_fn(model, z, states)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    def eval_fn() -> dict[str, float]:
        model.eval()
        latents = sample_unet(model, sampler, prompt_states, empty_states, steps=sample_steps,
                              guidance=guidance, generator=torch.Generator().manual_seed(seed))
        model.train()
        images = decode(vae, latents)
        acc = caption_accuracy(classifier, images, prompts)
        score = float(style_score(images).mean())
        return {"style_score": score,
                "style_ratio": score / reference["stylised_reconstructed"],
                "caption_accuracy": acc.accuracy}  # fmt: skip

    record = _loop(stage, out, {"model": model, "opt": opt}, step_fn, eval_fn,
                   lambda m: m["style_ratio"] >= target_ratio
                   and m["caption_accuracy"] >= accuracy_floor, eval_every, max_steps)  # fmt: skip
    record.update(reference=reference, rank=rank, style_amplitude=STYLE_AMPLITUDE,
                  fine_tuned_from="the shipped UNet's weights, frozen (LoRA only)")  # fmt: skip
    return LoraAdapter.from_model(model, stage), record


__all__ = ["STYLE_AMPLITUDE", "ddim_for", "reference_style_score", "style_score",
           "stylise", "train_style_lora"]
