"""The texture stages of ``make testbed``: judge, texture model, its consistency distillation.

    python -m lib.diffusion.testbed.train --only texture_classifier texture_unet texture_lcm

Chapter 21 (StableMaterials) needs a text-to-material model that samples in four steps and a
judge of what it makes. All three stages train on the procedural textures of
:mod:`lib.diffusion.testbed.textures`, drawn as :func:`~lib.diffusion.testbed.textures.scaled_crops`
(random magnified windows), which do *not* tile: the model must be made to tile by the sampler.

* ``texture_classifier`` -- :func:`~lib.diffusion.testbed.texture_model.texture_classifier`
  (family and colour heads) on fresh colour maps of all eight families every step, crops at
  magnification 1-1.75 (1 is a tileable texture, as feature-rolled samples are). Criterion:
  family and colour accuracy >= 0.97 on 1,024 validation images.
* ``texture_unet`` -- :class:`~lib.diffusion.testbed.texture_model.TextureDenoiser` with
  x0 prediction on DDPM's linear schedule
  (:func:`~lib.diffusion.testbed.texture_model.texture_scheduler`), trained on colour +
  height maps of the four *annotated* families (A-D) with 10 % empty captions, EMA 0.999.
  Criterion: 20-step guided DDIM samples (scale 3) of 64 validation captions reach family
  accuracy >= 0.85 and colour accuracy >= 0.9 (judged on the colour maps).
* ``texture_lcm`` -- latent consistency distillation
  (:func:`lib.diffusion.consistency_distillation.lcd_loss`) of the whole UNet (the released
  StableMaterials ships a separate full LCM UNet too; the caption encoder stays frozen): the
  teacher is ``texture_unet`` with one guided DDIM step (scale 3) on a 10-step grid (skip
  ``k = 100``, as the testbed's LCM-LoRA), EMA target ``mu = 0.95``. Criterion: 4-step
  ``LCMScheduler`` samples reach family accuracy >= 0.8 and colour accuracy >= 0.85.

Both denoisers ship in float16 (about 2.8 MB each) and load as float32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.diffusion.consistency_distillation import (
    ema_update,
    lcd_loss,
    skipping_timesteps,
)
from lib.diffusion.testbed.data import COLOURS
from lib.diffusion.testbed.evaluators import CaptionClassifier
from lib.diffusion.testbed.texture_model import (
    PREDICTION,
    TextureDenoiser,
    sample_maps,
    texture_classifier,
    texture_maps,
    texture_scheduler,
    to_grid,
)
from lib.diffusion.testbed.textures import (
    ANNOTATED,
    FAMILIES,
    generate_textures,
    scaled_crops,
    texture_caption,
)
from lib.diffusion.testbed.train import EMA, EMPTY_DROP, _descend, _loop

CLASSIFIER_SCALE = (1.0, 1.75)
"""Magnifications of the judge's training crops (1: the tileable texture itself)."""
LCM_GRID = 10


def judge_textures(judge: CaptionClassifier, images: torch.Tensor, captions: list[str]
                   ) -> dict[str, float]:  # fmt: skip
    """Family and colour accuracy of colour maps ``(n, 3, 32, 32)`` in [0, 1] against their
    captions "a <colour> <family> texture", and the fraction right on both."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(captions):
        raise ValueError(f"need (n, 3, H, W) colour maps for {len(captions)} captions, got "
                         f"{tuple(images.shape)}")  # fmt: skip
    words = [c.split() for c in captions]
    colour = torch.tensor([COLOURS.index(w[1]) for w in words])
    family = torch.tensor([FAMILIES.index(w[2]) for w in words])
    with torch.no_grad():
        out = judge(images.clamp(0, 1))
    f_ok = out["family"].argmax(1) == family
    c_ok = out["colour"].argmax(1) == colour
    return {"family": f_ok.float().mean().item(), "colour": c_ok.float().mean().item(),
            "both": (f_ok & c_ok).float().mean().item()}


def validation_captions(seed: int, n: int = 64, families: tuple[str, ...] = ANNOTATED
                        ) -> list[str]:  # fmt: skip
    """``n`` seeded captions, colours and families uniform."""
    rng = np.random.default_rng((seed, 62))
    return [texture_caption(int(rng.integers(len(COLOURS))), families[rng.integers(len(families))])
            for _ in range(n)]


def _classifier_batch(n: int, seed: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tex = generate_textures(n, seed=seed)
    images = scaled_crops(tex.images, seed=(*seed, 1), scale=CLASSIFIER_SCALE)
    return (torch.from_numpy(images), torch.from_numpy(tex.family).long(),
            torch.from_numpy(tex.colour).long())  # fmt: skip


def train_texture_classifier(out: Path, seed: int, *, max_steps: int = 3000,
                             eval_every: int = 100, batch_size: int = 128, lr: float = 2e-3,
                             target: float = 0.97) -> tuple[CaptionClassifier, dict]:  # fmt: skip
    """Cross-entropy on the family and colour heads, fresh crops every step."""
    torch.manual_seed(seed)
    model = texture_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    val_x, val_f, val_c = _classifier_batch(1024, (seed, 63))

    def step_fn(step: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr * max(0.5 ** (step / 500), 1 / 16)
        x, fam, col = _classifier_batch(batch_size, (seed, 64, step))
        logits = model(x)
        return _descend(opt, F.cross_entropy(logits["family"], fam)
                        + F.cross_entropy(logits["colour"], col))  # fmt: skip

    def eval_fn() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            logits = model(val_x)
        model.train()
        return {"family": (logits["family"].argmax(1) == val_f).float().mean().item(),
                "colour": (logits["colour"].argmax(1) == val_c).float().mean().item()}

    record = _loop("texture_classifier", out, {"model": model, "opt": opt}, step_fn, eval_fn,
                   lambda m: min(m["family"], m["colour"]) >= target, eval_every, max_steps)
    record.update(scale=list(CLASSIFIER_SCALE), families=list(FAMILIES))
    return model.eval(), record


class TexturePool:
    """A fixed pool of annotated textures (colour + height); each batch is fresh
    :func:`scaled_crops` of random pool members, 10 % of captions emptied."""

    def __init__(self, n: int, seed: int, families: tuple[str, ...] = ANNOTATED) -> None:
        tex = generate_textures(n, seed=(seed, 65), families=families)
        self.maps, self.captions = texture_maps(tex), tex.captions
        self.rng = np.random.default_rng((seed, 66))
        self.seed, self.draws = seed, 0

    def batch(self, size: int) -> tuple[torch.Tensor, list[str]]:
        idx = self.rng.integers(0, len(self.captions), size)
        self.draws += 1
        crops = scaled_crops(self.maps[idx], seed=(self.seed, 67, self.draws))
        caps = [("" if self.rng.random() < EMPTY_DROP else self.captions[i]) for i in idx]
        return to_grid(torch.from_numpy(crops)), caps


def train_texture_unet(out: Path, seed: int, judge: CaptionClassifier, *, max_steps: int = 4000,
                       eval_every: int = 250, batch_size: int = 32, lr: float = 1e-3,
                       family_target: float = 0.85, colour_target: float = 0.9,
                       ) -> tuple[TextureDenoiser, dict]:  # fmt: skip
    """Epsilon-prediction training of the texture model (see the module docstring)."""
    torch.manual_seed(seed)
    model = TextureDenoiser().train()
    ema = EMA(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = texture_scheduler("ddpm")
    pool = TexturePool(8192, seed)
    prompts = validation_captions(seed)
    shadow = TextureDenoiser().eval()

    def step_fn(step: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 100)
        x0, caps = pool.batch(batch_size)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,))
        loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t, caps), x0)  # x0 prediction
        value = _descend(opt, loss)
        ema.update(model)
        return value

    def eval_fn() -> dict[str, float]:
        shadow.load_state_dict(ema.shadow)
        maps = sample_maps(shadow, prompts, steps=20, guidance=3.0,
                           scheduler=texture_scheduler("ddim"), seed=seed)  # fmt: skip
        return judge_textures(judge, maps[:, :3], prompts)

    record = _loop("texture_unet", out, {"model": model, "ema": ema, "opt": opt}, step_fn, eval_fn,
                   lambda m: m["family"] >= family_target and m["colour"] >= colour_target,
                   eval_every, max_steps)  # fmt: skip
    shadow.load_state_dict(ema.shadow)
    record.update(families=list(ANNOTATED), crops="scaled_crops, magnification 1.25-1.75",
                  stored="float16")  # fmt: skip
    return shadow.to(torch.float16), record


def train_texture_lcm(out: Path, seed: int, teacher: TextureDenoiser, judge: CaptionClassifier,
                      *, max_steps: int = 1500, eval_every: int = 50, batch_size: int = 32,
                      lr: float = 2e-4, ema_decay: float = 0.95, guidance: float = 3.0,
                      family_target: float = 0.8, colour_target: float = 0.85,
                      ) -> tuple[TextureDenoiser, dict]:  # fmt: skip
    """Consistency distillation of ``teacher`` (frozen) into a full copy of its UNet."""
    torch.manual_seed(seed)
    teacher = teacher.float().eval().requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.unet.train().requires_grad_(True)
    target = copy.deepcopy(student.unet).eval().requires_grad_(False)
    online = [p for _, p in sorted(student.unet.named_parameters())]
    shadow = [p for _, p in sorted(target.named_parameters())]
    opt = torch.optim.AdamW(online, lr=lr, weight_decay=0.0)
    alphas = texture_scheduler("ddpm").alphas_cumprod
    pool = TexturePool(8192, seed)
    prompts = validation_captions(seed)
    gen = torch.Generator().manual_seed(seed)
    grid = skipping_timesteps(1000, LCM_GRID)
    with torch.no_grad():
        empty = teacher.encode([""])

    def step_fn(step: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50)
        x0, caps = pool.batch(batch_size)
        with torch.no_grad():
            states = teacher.encode(caps)
        loss = lcd_loss(student.unet, target, teacher.unet, x0, states, empty, alphas,
                        guidance=guidance, grid=grid, generator=gen,
                        prediction_type=PREDICTION)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online, 1.0)
        opt.step()
        ema_update(shadow, online, ema_decay)
        return loss.item()

    def eval_fn() -> dict[str, float]:
        student.eval()
        maps = sample_maps(student, prompts, steps=4, seed=seed)  # LCMScheduler, plain
        student.train()
        return judge_textures(judge, maps[:, :3], prompts)

    record = _loop("texture_lcm", out, {"student": student, "target": target, "opt": opt},
                   step_fn, eval_fn,
                   lambda m: m["family"] >= family_target and m["colour"] >= colour_target,
                   eval_every, max_steps)  # fmt: skip
    record.update(guidance=guidance, ema_decay=ema_decay, skip=1000 // LCM_GRID,
                  ddim_grid=LCM_GRID, stored="float16",
                  fine_tuned_from="texture_unet (teacher, frozen; full UNet, caption encoder "
                                  "frozen)")  # fmt: skip
    return student.eval().requires_grad_(False).to(torch.float16), record

