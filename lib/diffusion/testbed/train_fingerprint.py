"""Testbed stages ``fingerprint`` and ``fingerprint_plain``: WOUAF's mapping network, per-layer
affine heads and fingerprint decoder on the shipped (frozen) autoencoder decoder.

    python -m lib.diffusion.testbed.train --only fingerprint fingerprint_plain --threads 1

``fingerprint`` trains with random post-processing between the decoder and ``E`` (crop-resize,
blur, DCT quantisation, noise; :func:`lib.vision.postprocess.random_postprocess`);
``fingerprint_plain`` is the same recipe without it (the paper's no-augmentation ablation). Both
draw fresh random 16-bit fingerprints every batch and use latents of encoded training images (the
chapter tests on latents sampled by the UNet). The loss (paper Eq. 4) is bit cross-entropy plus
a fidelity weight times MSE to the unmodulated decoder's output; the weight ramps up after a
warm-up in which the bits are learnt, so the decoder is first allowed to change, then pulled
back to the original images. A stage stops when clean bit accuracy and PSNR on held-out latents
meet their targets. Resumable and seeded through :func:`lib.diffusion.testbed.train._loop`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lib.diffusion.fingerprinting import (
    FingerprintModulation,
    ModulatedDecoder,
    bit_accuracy,
    fingerprint_loss,
    psnr,
    random_fingerprints,
)
from lib.diffusion.sampling import decode, encode
from lib.diffusion.testbed.data import generate
from lib.vision.postprocess import random_postprocess

BITS = 16


def train_fingerprint(out: Path, seed: int, vae: nn.Module, *, augment: bool,
                      max_steps: int = 1500, eval_every: int = 100, batch_size: int = 16,
                      n_pool: int = 1024, n_val: int = 64, lr: float = 2e-3,
                      fidelity: float = 20.0, warmup: int = 300, ramp: int = 300,
                      accuracy_target: float = 0.97, psnr_target: float = 30.0,
                      budget_accuracy: float = 0.55, budget_psnr: float = 28.0
                      ) -> tuple[nn.Module, dict]:  # fmt: skip
    """Train :class:`FingerprintModulation` on ``vae``'s decoder; returns it and its record.

    Stops early at ``accuracy_target`` and ``psnr_target`` (the paper's regime); at the step
    budget it accepts the weights only if they read bits better than chance
    (``budget_accuracy``) at ``budget_psnr`` dB, and otherwise fails loudly."""
    from lib.diffusion.testbed.train import _loop

    if warmup < 0 or ramp < 1:
        raise ValueError(f"warmup must be >= 0 and ramp >= 1, got {warmup}, {ramp}")
    stage = "fingerprint" if augment else "fingerprint_plain"
    torch.manual_seed(seed)
    images = generate(n_pool + n_val, seed=(seed, 60), split="train").images_tensor()
    latents = encode(vae, images)
    reference = decode(vae, latents)  # the unmodulated decoder's output D(z)
    modulation = FingerprintModulation.for_decoder(vae.decoder, bits=BITS)
    model = ModulatedDecoder(vae, modulation)
    opt = torch.optim.Adam(modulation.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + (0 if augment else 1))
    val_bits = random_fingerprints(n_val, BITS, torch.Generator().manual_seed(seed + 7))

    last_step = [0]

    def step_fn(step: int) -> float:
        last_step[0] = step
        idx = torch.randint(0, n_pool, (batch_size,), generator=gen)
        bits = random_fingerprints(batch_size, BITS, gen)
        x = model.decode(latents[idx], bits)
        seen = random_postprocess(x, gen) if augment else x
        weight = fidelity * min(1.0, max(0.0, (step - warmup) / ramp))
        loss, _ = fingerprint_loss(modulation.read_bits(seen), bits, x, reference[idx], weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        x = model.decode(latents[n_pool:], val_bits)
        acc = bit_accuracy(modulation.read_bits(x), val_bits).mean()
        return {"bit_accuracy": float(acc), "psnr": float(psnr(x, reference[n_pool:]).mean())}

    def done(m: dict[str, float]) -> bool:
        if m["bit_accuracy"] >= accuracy_target and m["psnr"] >= psnr_target:
            return True
        at_budget = last_step[0] > max_steps - eval_every  # the last evaluation
        return at_budget and m["bit_accuracy"] >= budget_accuracy and m["psnr"] >= budget_psnr

    record = _loop(stage, out, {"modulation": modulation, "opt": opt}, step_fn, eval_fn, done,
                   eval_every, max_steps)  # fmt: skip
    record.update(bits=BITS, augment=augment, fidelity=fidelity, batch_size=batch_size)
    return modulation.eval().requires_grad_(False), record
