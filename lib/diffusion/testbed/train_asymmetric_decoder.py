"""The ``asym_decoder`` stage of ``make testbed``: a mask-conditioned decoder for the frozen VAE.

    python -m lib.diffusion.testbed.train --only asym_decoder --threads 1

Zhu et al. (2023) keep Stable Diffusion's encoder and train a new decoder that also sees the
masked image (:class:`lib.diffusion.mask_conditioned_decoder.AsymmetricDecoder`). Here the
decoder starts from the testbed autoencoder's own decoder (the conditional branch is new) and
is fine-tuned on posterior samples of the frozen encoder with random rectangle and brush holes,
a quarter of them full masks so that text-to-image decoding stays as good as before. The loss
is L1 + squared error on pixels; the paper's LPIPS and patch-GAN terms are left out (no
perceptual network in the miniature). Training images are the testbed distribution with 75 %
textured backgrounds (1-2 px stripes, dots, checkers, pixel noise), the detail a 4x
downsampling latent loses.

The stage stops when, on 128 textured validation images with fixed holes, the known region's
PSNR beats the vanilla decoder's by ``gain_target`` dB while the hole and the full-mask decode
are at least as good as the vanilla decoder's (within ``margin`` dB). Weights are stored in
float16 (1.5 MB) and loaded as float32. About 3,000 steps, 14 min on one contended core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.diffusion.inpainting import random_masks, region_psnr
from lib.diffusion.mask_conditioned_decoder import AsymmetricDecoder
from lib.diffusion.testbed.data import GrammarConfig, generate
from lib.diffusion.testbed.train import _loop

TEXTURED = GrammarConfig(p_texture=0.75)
"""Training distribution: the testbed's, with three textured backgrounds in four."""
P_FULL = 0.25


def masks_for_training(n: int, rng: np.random.Generator, p_full: float = P_FULL) -> torch.Tensor:
    """Mixed rectangle/brush holes, a fraction ``p_full`` replaced by the full mask."""
    if not 0.0 <= p_full <= 1.0:
        raise ValueError(f"p_full must lie in [0, 1], got {p_full}")
    masks = random_masks(n, rng, kind="mixed")
    masks[torch.from_numpy(rng.random(n) < p_full)] = 1.0
    return masks


@torch.no_grad()
def _scores(decoder: nn.Module, z: torch.Tensor, x: torch.Tensor,
            masks: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """Known-region, hole and full-mask PSNR (dB) of a decoder on unscaled latents."""
    to01 = lambda t: ((t + 1) / 2).clamp(0, 1)  # noqa: E731
    img = to01(x)
    if isinstance(decoder, AsymmetricDecoder):
        out = to01(decoder(z, x, masks))
        full = to01(decoder(z, x, torch.ones_like(masks)))
    else:
        out = full = to01(decoder.decode(z).sample)
    return {"known": region_psnr(out, img, 1 - masks).mean().item(),
            "hole": region_psnr(out, img, masks).mean().item(),
            "full": region_psnr(full, img, torch.ones_like(masks)).mean().item()}  # fmt: skip


def train_asymmetric_decoder(
    out: Path, seed: int, vae: nn.Module, *, max_steps: int = 4000, eval_every: int = 40,
    batch_size: int = 12, lr: float = 2e-3, main_lr_ratio: float = 0.05,
    gain_target: float = 8.0, margin: float = 0.3, n_val: int = 128,
) -> tuple[nn.Module, dict]:
    """Fine-tune :class:`AsymmetricDecoder` from ``vae``'s decoder with the encoder frozen."""
    torch.manual_seed(seed)
    vae.eval().requires_grad_(False)
    model = AsymmetricDecoder.from_autoencoder(vae).train()
    # The conditional branch is new and learns fast; the pretrained main branch moves slowly
    # (a large step there first breaks what the vanilla decoder already does well).
    groups = [{"params": list(model.condition_encoder.parameters()), "lr": lr},
              {"params": [*model.decoder.parameters(), *model.post_quant_conv.parameters()],
               "lr": lr * main_lr_ratio}]  # fmt: skip
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    val = generate(n_val, seed=(seed, 62), split="all", config=TEXTURED).images_tensor()
    val_x = val * 2 - 1
    with torch.no_grad():
        val_z = vae.encode(val_x).latent_dist.mean
    val_masks = random_masks(n_val, np.random.default_rng((seed, 63)), kind="mixed")
    base = _scores(vae, val_z, val_x, val_masks)
    print(f"[asym_decoder] vanilla decoder: {base}", flush=True)

    def step_fn(step: int) -> float:
        for group in opt.param_groups:  # linear warm-up over 20 steps
            group["lr"] = group["base_lr"] * min(1.0, step / 20)
        x = generate(batch_size, seed=(seed, 60, step), split="all",
                     config=TEXTURED).images_tensor() * 2 - 1  # fmt: skip
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        recon = model(z, x, masks_for_training(batch_size, np.random.default_rng((seed, 61, step))))
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def eval_fn() -> dict[str, float]:
        model.eval()
        got = _scores(model, val_z, val_x, val_masks)
        model.train()
        return {"known_gain": got["known"] - base["known"],
                "hole_delta": got["hole"] - base["hole"],
                "full_delta": got["full"] - base["full"], "known_psnr": got["known"]}

    record = _loop("asym_decoder", out, {"model": model, "opt": opt}, step_fn, eval_fn,
                   lambda m: m["known_gain"] >= gain_target and m["hole_delta"] >= -margin
                   and m["full_delta"] >= -margin, eval_every, max_steps)  # fmt: skip
    record["vanilla"] = base
    model.eval().requires_grad_(False)
    return model.to(torch.float16), record
