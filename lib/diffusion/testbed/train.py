"""Train the MiniSD testbed from nothing and write its shipped weights.

    python -m lib.diffusion.testbed.train [--only text_encoder vae unet dit] [--threads 2]
                                          [--out DIR] [--force] [--parallel]
    make testbed       (= --parallel: the base stages, then two one-thread lanes at once)

Order: the caption classifier that judges samples (its own script,
:mod:`lib.diffusion.testbed.train_evaluator`, run only when its weights are missing or with
``--force``), the text encoder (CLIP-style contrastive pretraining against a small image tower, then
frozen, as in Stable Diffusion), the autoencoder, then the two denoisers on the frozen text
encoder and autoencoder latents: the UNet (epsilon prediction, SD 1.x schedule) and the DiT
(rectified flow). Each stage stops on a quality criterion, checked every ``eval_every`` steps,
or at its step cap (then the run fails loudly instead of shipping weights that miss the mark):

* text encoder: caption-to-image retrieval among 256 validation images, where a hit is an image
  whose labels match everything the caption states, >= 0.9;
* autoencoder: reconstruction PSNR >= 27 dB on plain backgrounds and caption-classifier
  accuracy on reconstructions (colour, shape, position) >= 0.95;
* each denoiser: caption accuracy (colour and shape) of 20-step guided samples (scale 3) for 128
  validation prompts >= 0.9, judged by the caption classifier on decoded images.

Resumable: a finished stage (its folder and a manifest entry) is skipped unless ``--force``;
an unfinished stage resumes from its last checkpoint (``weights/.resume/``, torch state dicts
read with ``weights_only=True``). Seeded. Logs its own seconds per step; 2-thread OpenMP slows
down badly when another process competes for the cores, so use ``--threads 1`` on a shared
machine. Writes ``weights/<part>/`` with ``save_pretrained`` and ``weights/manifest.json``
(SHA-256 of every file, the training record).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.diffusion.sampling import decode, sample_flow, sample_unet
from lib.diffusion.testbed import models
from lib.diffusion.testbed.data import COLOURS, SHAPES, MiniTokenizer, generate, parse_caption
from lib.diffusion.testbed.evaluators import (
    MANIFEST_FILE,
    CaptionClassifier,
    caption_accuracy,
    load_caption_classifier,
)

WEIGHTS = Path(__file__).resolve().parent / "weights"
STAGES = ("text_encoder", "vae", "unet", "dit", "asym_decoder",
          "fingerprint", "fingerprint_plain", "flawed_unet", "oms", "flawed_style_lora",
          "style_lora", "lcm_lora", "texture_classifier", "texture_unet", "texture_lcm")
BASE_STAGES = ("text_encoder", "vae", "unet", "dit")
"""Stages the others are fine-tuned from or condition on; ``--parallel`` trains them first."""
LANES = (("asym_decoder", "texture_classifier", "texture_unet", "texture_lcm", "style_lora",
          "lcm_lora"),
         ("fingerprint_plain", "fingerprint", "flawed_unet", "oms",
          "flawed_style_lora"))  # fmt: skip
"""With ``--parallel``, the remaining stages run as two one-thread processes, these lanes, each
in order (a lane's later stages may depend on its earlier ones; no stage depends on the other
lane). Balanced on the recorded training times: about 31 and 38 minutes."""
EMPTY_DROP = 0.1  # fraction of captions replaced by "" so classifier-free guidance works


def _judge(out: Path) -> CaptionClassifier:
    """The caption classifier in ``out`` (a full retrain writes its own there), else the
    shipped one."""
    folder = out / "caption_classifier"
    return load_caption_classifier(folder if (folder / MANIFEST_FILE).is_file() else None)


def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimizer step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


class StageFailed(RuntimeError):
    """A stage hit its step cap before its quality criterion."""


def _log(stage: str, step: int, seconds_per_step: float, **values: float) -> None:
    text = " ".join(f"{k}={v:.4f}" for k, v in values.items())
    print(f"[{stage}] step {step:5d} {seconds_per_step:.3f} s/step {text}", flush=True)


class ImageTower(nn.Module):
    """Small CNN image encoder for the contrastive pretraining of the text encoder (not shipped)."""

    def __init__(self, width: int = 64, out: int = models.TEXT_WIDTH) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, 2, 1), nn.GELU(),
            nn.Conv2d(32, width, 3, 2, 1), nn.GELU(), nn.Conv2d(width, width, 3, 2, 1), nn.GELU(),
            nn.Flatten(), nn.Linear(width * 16, out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _matches(caption: str, labels: Any, i: int) -> bool:
    stated = parse_caption(caption)
    return all(int(getattr(labels, k)[i]) == v for k, v in stated.items())


class Checkpoint:
    """Resume state of one stage: module and optimizer state dicts plus the step and history."""

    def __init__(self, folder: Path, stage: str) -> None:
        self.path = folder / ".resume" / f"{stage}.pt"

    def load(self, modules: dict[str, Any]) -> tuple[int, list]:
        if not self.path.is_file():
            return 0, []
        state = torch.load(self.path, weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        print(f"resuming {self.path.stem} at step {state['step']}", flush=True)
        return int(state["step"]), json.loads(state["history"])

    def save(self, modules: dict[str, Any], step: int, history: list) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: m.state_dict() for name, m in modules.items()}
        state["step"], state["history"] = step, json.dumps(history)
        torch.save(state, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _loop(
    stage: str,
    out: Path,
    modules: dict[str, Any],
    step_fn: Callable[[int], float],
    eval_fn: Callable[[], dict[str, float]],
    done: Callable[[dict[str, float]], bool],
    eval_every: int,
    max_steps: int,
) -> dict[str, Any]:
    """Shared training loop: steps, periodic evaluation, checkpoint, stop on ``done``."""
    ckpt = Checkpoint(out, stage)
    start_step, history = ckpt.load(modules)
    losses: list[float] = []
    tic, t0 = time.perf_counter(), time.perf_counter()
    for step in range(start_step + 1, max_steps + 1):
        losses.append(step_fn(step))
        if step % eval_every == 0:
            per_step = (time.perf_counter() - tic) / len(losses)
            metrics = eval_fn()
            entry = {"step": step, "loss": float(np.mean(losses)), "seconds_per_step": per_step,
                     **metrics}  # fmt: skip
            history.append(entry)
            _log(stage, step, per_step, loss=entry["loss"], **metrics)
            ckpt.save(modules, step, history)
            losses, tic = [], time.perf_counter()
            if done(metrics):
                steps = np.diff([0] + [h["step"] for h in history])
                train_seconds = float(np.dot(steps, [h["seconds_per_step"] for h in history]))
                return {"steps": step, "history": history, "resumed_from": start_step,
                        "train_seconds": round(train_seconds, 1),
                        "seconds_this_run": round(time.perf_counter() - t0, 1)}  # fmt: skip
    raise StageFailed(f"{stage}: no quality criterion met after {max_steps} steps; "
                      f"last metrics {history[-1] if history else None}")  # fmt: skip


# --------------------------------------------------------------------------------- stages


def train_text_encoder(
    out: Path, seed: int, max_steps: int = 4000, eval_every: int = 250, batch_size: int = 128,
    target: float = 0.9,
) -> tuple[nn.Module, dict]:
    """CLIP's symmetric contrastive loss between the text encoder's pooled ``<eos>`` state
    (through a linear projection) and a small CNN image tower (Radford et al., 2021)."""
    torch.manual_seed(seed)
    tok = MiniTokenizer()
    text = models.text_encoder()
    proj = nn.Linear(models.TEXT_WIDTH, models.TEXT_WIDTH, bias=False)
    tower = ImageTower()
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*text.parameters(), *proj.parameters(), *tower.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    holder = nn.ParameterDict({"logit_scale": logit_scale})
    modules = {"text": text, "proj": proj, "tower": tower, "scale": holder, "opt": opt}
    val = generate(256, seed=(seed, 20), split="train")
    val_ids = tok.ids(val.captions)

    def embed_text(ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(proj(text(ids).pooler_output), dim=-1)

    def step_fn(step: int) -> float:
        batch = generate(batch_size, seed=(seed, 21, step), split="train")
        t = embed_text(tok.ids(batch.captions))
        v = F.normalize(tower(batch.images_tensor()), dim=-1)
        logits = logit_scale.clamp(max=math.log(100)).exp() * t @ v.T
        # Captions that state the same attributes are not negatives of each other's images.
        same = torch.tensor([[batch.captions[i] == batch.captions[j] for j in range(batch_size)]
                             for i in range(batch_size)])  # fmt: skip
        logits = logits.masked_fill(same & ~torch.eye(batch_size, dtype=torch.bool), -1e4)
        target_ = torch.arange(batch_size)
        loss = (F.cross_entropy(logits, target_) + F.cross_entropy(logits.T, target_)) / 2
        return _descend(opt, loss)

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        t = embed_text(val_ids)
        v = F.normalize(tower(val.images_tensor()), dim=-1)
        best = (t @ v.T).argmax(1).tolist()
        hits = [_matches(val.captions[i], val.labels, j) for i, j in enumerate(best)]
        return {"retrieval": float(np.mean(hits))}

    record = _loop("text_encoder", out, modules, step_fn, eval_fn,
                   lambda m: m["retrieval"] >= target, eval_every, max_steps)  # fmt: skip
    text.eval().requires_grad_(False)
    return text, record


def train_vae(out: Path, seed: int, max_steps: int = 6000, eval_every: int = 250,
              batch_size: int = 32, psnr_target: float = 27.0, accuracy_target: float = 0.95,
              n_val: int = 512, n_scale: int = 2048) -> tuple[nn.Module, dict]:  # fmt: skip
    """``AutoencoderKL`` with mean-squared reconstruction error plus a small KL term (weight
    1e-6, as in latent diffusion's KL-regularised autoencoders), then SD's latent scaling
    factor ``1 / std(latents)`` measured on ``n_scale`` (2,048) images."""
    if n_scale < 2:
        raise ValueError(f"n_scale must be at least 2 images, got {n_scale}")
    torch.manual_seed(seed)
    vae = models.autoencoder()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    modules = {"vae": vae, "opt": opt}
    classifier = _judge(out)
    val = generate(n_val, seed=(seed, 30), split="all")
    val_x = val.images_tensor()
    plain = torch.from_numpy(val.labels.texture == 0)
    full = [f"a {COLOURS[c]} {SHAPES[s]} {p}" for c, s, p in zip(
        val.labels.colour, val.labels.shape,
        [("on the left", "in the center", "on the right")[i] for i in val.labels.position])]

    def step_fn(step: int) -> float:
        x = generate(batch_size, seed=(seed, 31, step), split="all").images_tensor() * 2 - 1
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * dist.kl().mean()
        return _descend(opt, loss)

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        vae.eval()
        recon = ((vae(val_x * 2 - 1).sample + 1) / 2).clamp(0, 1)
        vae.train()
        err = ((recon - val_x) ** 2).mean(dim=(1, 2, 3))
        acc = caption_accuracy(classifier, recon, full).accuracy
        # 1-2 px textures and pixel noise cannot pass a 4x-downsampling bottleneck, so PSNR is
        # judged on plain backgrounds (it is recorded on all images too).
        return {"psnr": -10 * math.log10(float(err[plain].mean())),
                "psnr_all": -10 * math.log10(float(err.mean())),
                "recon_caption_accuracy": acc}  # fmt: skip

    record = _loop("vae", out, modules, step_fn, eval_fn,
                   lambda m: m["psnr"] >= psnr_target and m["recon_caption_accuracy"]
                   >= accuracy_target, eval_every, max_steps)  # fmt: skip
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = generate(n_scale, seed=(seed, 32), split="train").images_tensor()
        z = torch.cat([vae.encode(x[i:i + 512] * 2 - 1).latent_dist.sample()
                       for i in range(0, n_scale, 512)])  # fmt: skip
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    record["scaling_factor"] = vae.config.scaling_factor
    return vae, record


class LatentPool:
    """A fixed pool of training images as autoencoder posteriors (mean, std) and captions;
    each denoiser batch draws a fresh latent sample from the posteriors, as SD's training does.
    ``transform`` (e.g. a style, :func:`lib.diffusion.testbed.train_lora.stylise`) maps the
    ``(n, 3, 32, 32)`` images in [0, 1] before encoding."""

    def __init__(self, vae: nn.Module, n: int, seed: int,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:  # fmt: skip
        data = generate(n, seed=(seed, 40), split="train")
        images = torch.from_numpy(np.ascontiguousarray(
            data.images if transform is None else transform(data.images), dtype=np.float32))
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, n, 512):
                dist = vae.encode(images[i:i + 512] * 2 - 1).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.captions = data.captions
        self.scale = vae.config.scaling_factor
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, list[str]]:
        idx = self.rng.integers(0, len(self.captions), size)
        z = self.mean[idx] + self.std[idx] * torch.randn_like(self.mean[idx])
        caps = [("" if self.rng.random() < EMPTY_DROP else self.captions[i]) for i in idx]
        return z * self.scale, caps


class EMA:
    """Exponential moving average of a model's weights (warm-up as in common diffusion code)."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = state["shadow"]
        self.updates = int(state["updates"])


def _eval_prompts(seed: int, n: int = 128) -> list[str]:
    """Validation prompts: held-in captions restricted to colour and shape (what is judged)."""
    rng = np.random.default_rng((seed, 50))
    out = []
    while len(out) < n:
        c, s = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        out.append(f"a {c} {s}")
    return out


def _train_denoiser(stage: str, out: Path, seed: int, model: nn.Module, loss_fn: Callable,
                    sample_fn: Callable, text: nn.Module, vae: nn.Module, *, lr: float,
                    max_steps: int, eval_every: int, batch_size: int, target: float,
                    pool_size: int, n_prompts: int) -> tuple[nn.Module, dict]:  # fmt: skip
    tok = MiniTokenizer()
    classifier = _judge(out)
    pool = LatentPool(vae, pool_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(model)
    modules = {"model": model, "opt": opt, "ema": ema}
    prompts = _eval_prompts(seed, n_prompts)
    with torch.no_grad():
        prompt_states = text(tok.ids(prompts))[0]
        empty_states = text(tok.ids([""]))[0]
    shadow = type(model).from_config(model.config)

    def step_fn(step: int) -> float:
        for group in opt.param_groups:  # linear warm-up over 200 steps
            group["lr"] = lr * min(1.0, step / 200)
        z, caps = pool.batch(batch_size)
        with torch.no_grad():
            states = text(tok.ids(caps))[0]
        loss = loss_fn(model, z, states)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        return loss.item()

    def eval_fn() -> dict[str, float]:
        shadow.load_state_dict(ema.shadow)
        shadow.eval()
        gen = torch.Generator().manual_seed(seed)
        latents = sample_fn(shadow, prompt_states, empty_states, gen)
        images = decode(vae, latents)
        acc = caption_accuracy(classifier, images, prompts)
        return {"caption_accuracy": acc.accuracy, **{f"acc_{k}": v for k, v in
                                                     acc.per_attribute.items()}}  # fmt: skip

    record = _loop(stage, out, modules, step_fn, eval_fn,
                   lambda m: m["caption_accuracy"] >= target, eval_every, max_steps)  # fmt: skip
    shadow.load_state_dict(ema.shadow)
    return shadow.eval().requires_grad_(False), record


def unet_loss(scheduler: Any) -> Callable:
    """Epsilon-prediction loss ``|| eps - eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t,
    c) ||^2`` with ``t`` uniform on the 1000 training steps (DDPM's simple loss)."""

    def loss(model: nn.Module, z: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(z)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (z.shape[0],))
        noisy = scheduler.add_noise(z, noise, t)
        return F.mse_loss(model(noisy, t, encoder_hidden_states=states).sample, noise)

    return loss


def flow_loss(model: nn.Module, z: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss ``|| (eps - z) - v_theta((1 - s) z + s eps, s, c) ||^2`` with ``s``
    logit-normal (SD3's timestep density, which spends the steps at intermediate noise)."""
    noise = torch.randn_like(z)
    s = torch.sigmoid(torch.randn(z.shape[0]))[:, None, None, None]
    noisy = (1 - s) * z + s * noise
    return F.mse_loss(model(noisy, s.flatten(), states), noise - z)


def train_unet(out: Path, seed: int, text: nn.Module, vae: nn.Module, *,
                max_steps: int = 12000, target: float = 0.9, eval_every: int = 500,
                batch_size: int = 64, pool_size: int = 16384,
                n_prompts: int = 128) -> tuple[nn.Module, dict]:  # fmt: skip
    """The UNet denoiser (DDPM simple loss on SD 1.x's schedule, 10 % empty captions)."""
    torch.manual_seed(seed)
    model = models.unet()
    train_sched = models.unet_scheduler("ddpm")

    def sample_fn(m: nn.Module, states: torch.Tensor, empty: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        return sample_unet(m, models.unet_scheduler("ddim"), states, empty, steps=20,
                           guidance=3.0, generator=gen)  # fmt: skip

    return _train_denoiser("unet", out, seed, model, unet_loss(train_sched), sample_fn, text,
                           vae, lr=1e-3, max_steps=max_steps, eval_every=eval_every,
                           batch_size=batch_size, target=target, pool_size=pool_size,
                           n_prompts=n_prompts)  # fmt: skip


def train_dit(out: Path, seed: int, text: nn.Module, vae: nn.Module, *,
               max_steps: int = 12000, target: float = 0.9, eval_every: int = 500,
               batch_size: int = 64, pool_size: int = 16384,
               n_prompts: int = 128) -> tuple[nn.Module, dict]:  # fmt: skip
    """The MiniDiT denoiser (rectified flow, logit-normal noise levels, 10 % empty captions)."""
    torch.manual_seed(seed)
    model = models.MiniDiT()

    def sample_fn(m: nn.Module, states: torch.Tensor, empty: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        return sample_flow(m, models.dit_scheduler(), states, empty, steps=20, guidance=3.0,
                           generator=gen)  # fmt: skip

    return _train_denoiser("dit", out, seed, model, flow_loss, sample_fn, text, vae, lr=5e-4,
                           max_steps=max_steps, eval_every=eval_every, batch_size=batch_size,
                           target=target, pool_size=pool_size, n_prompts=n_prompts)  # fmt: skip


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    from lib.diffusion.testbed.loader import (
        FOLDERS,
        MANIFEST,
        load_component,
        save_component,
        write_static_parts,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--force", action="store_true", help="retrain finished stages too")
    parser.add_argument("--keep-classifier", action="store_true",
                        help="with --force, do not retrain the caption classifier")
    parser.add_argument("--parallel", action="store_true",
                        help="train the base stages, then the others as two one-thread lanes")
    args = parser.parse_args(argv)
    if args.parallel:
        return _run_parallel(args)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "sha256": {}, "training": {}}  # fmt: skip
    write_static_parts(args.out, manifest)
    trained: dict[str, nn.Module] = {}

    def get(stage: str) -> nn.Module:
        if stage not in trained:
            trained[stage] = load_component(args.out, stage, manifest)
        return trained[stage]

    if not _ensure_classifier(args):
        return 1
    for stage in STAGES:
        if stage not in args.only:
            continue
        if stage in manifest["training"] and not args.force:
            print(f"[{stage}] already trained (use --force to retrain)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            if stage == "text_encoder":
                model, record = train_text_encoder(args.out, args.seed)
            elif stage == "vae":
                model, record = train_vae(args.out, args.seed)
            elif stage == "unet":
                model, record = train_unet(args.out, args.seed, get("text_encoder"), get("vae"))
            elif stage == "asym_decoder":  # own module (it imports this one's training loop)
                from lib.diffusion.testbed.train_asymmetric_decoder import (
                    train_asymmetric_decoder,
                )

                model, record = train_asymmetric_decoder(args.out, args.seed, get("vae"))
            elif stage in ("fingerprint", "fingerprint_plain"):  # own module, like asym_decoder
                from lib.diffusion.testbed.train_fingerprint import train_fingerprint

                model, record = train_fingerprint(args.out, args.seed, get("vae"),
                                                  augment=stage == "fingerprint")
            elif stage in ("flawed_unet", "oms", "flawed_style_lora"):  # own module
                from lib.diffusion.testbed import train_flawed_schedule as tfs

                if stage == "flawed_unet":
                    model, record = tfs.train_flawed_unet(args.out, args.seed, get("text_encoder"),
                                                          get("vae"), get("unet"))  # fmt: skip
                    tfs.save_flawed_scheduler(args.out / FOLDERS[stage])
                elif stage == "oms":
                    model, record = tfs.train_oms(args.out, args.seed, get("text_encoder"),
                                                  get("vae"))  # fmt: skip
                else:
                    model, record = tfs.train_flawed_style_lora(
                        args.out, args.seed, get("text_encoder"), get("vae"), get("flawed_unet"))
            elif stage == "style_lora":  # own module (shared with the flawed UNet's style LoRA)
                from lib.diffusion.testbed.train_lora import train_style_lora

                model, record = train_style_lora(stage, args.out, args.seed, get("unet"),
                                                 models.unet_scheduler("ddpm"),
                                                 get("text_encoder"), get("vae"))  # fmt: skip
            elif stage == "lcm_lora":  # own module
                from lib.diffusion.testbed.train_lcm_lora import train_lcm_lora

                model, record = train_lcm_lora(args.out, args.seed, get("unet"),
                                               get("text_encoder"), get("vae"))  # fmt: skip
            elif stage.startswith("texture_"):  # own module (chapter 21's texture model)
                from lib.diffusion.testbed import train_textures as tt

                if stage == "texture_classifier":
                    model, record = tt.train_texture_classifier(args.out, args.seed)
                elif stage == "texture_unet":
                    model, record = tt.train_texture_unet(args.out, args.seed,
                                                          get("texture_classifier"))
                else:
                    model, record = tt.train_texture_lcm(args.out, args.seed, get("texture_unet"),
                                                         get("texture_classifier"))
            else:
                model, record = train_dit(args.out, args.seed, get("text_encoder"), get("vae"))
        except StageFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        record.update(seed=args.seed, threads=args.threads,
                      seconds=round(time.perf_counter() - t0, 1),
                      parameters=models.parameter_count(model),
                      median_seconds_per_step=round(float(np.median(
                          [h["seconds_per_step"] for h in record["history"]])), 4),
                      final=record["history"][-1],
                      versions={"python": platform.python_version(),
                                "torch": torch.__version__})  # fmt: skip
        record.pop("history")
        trained[stage] = model
        save_component(args.out, stage, model, manifest)
        manifest["training"][stage] = record
        # Re-read the manifest just before writing: stages trained at the same time by other
        # processes keep their entries; this stage contributes only its own files and record.
        on_disk = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
            "sha256": {}, "training": {}}  # fmt: skip
        prefix = FOLDERS[stage] + "/"
        on_disk["sha256"].update({k: v for k, v in manifest["sha256"].items()
                                  if k.startswith(prefix) or k not in on_disk["sha256"]})
        on_disk["training"][stage] = record
        manifest = on_disk
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        Checkpoint(args.out, stage).remove()
        print(f"[{stage}] done in {record['seconds']} s: {record['final']}", flush=True)
    return 0


def _ensure_classifier(args: argparse.Namespace) -> bool:
    """Train the caption classifier that judges samples when its weights are missing, or under
    ``--force`` without ``--keep-classifier``; ``False`` if its training failed."""
    from lib.diffusion.testbed import train_evaluator

    judge = args.out / "caption_classifier"
    if (args.force and not args.keep_classifier) or not (judge / MANIFEST_FILE).is_file():
        print("[classifier] training the caption classifier", flush=True)
        return not train_evaluator.main(["--seed", str(args.seed), "--threads",
                                         str(args.threads), "--out", str(judge)])  # fmt: skip
    return True


def _run_parallel(args: argparse.Namespace) -> int:
    """``--parallel``: the classifier and the requested base stages in this process, then each
    lane's requested stages in its own one-thread process, both at once. Every process after
    the first gets ``--keep-classifier``, so the classifier is trained once."""
    import subprocess

    missing = set(STAGES) - set(BASE_STAGES) - {s for lane in LANES for s in lane}
    if missing:
        raise ValueError(f"stages in no lane of --parallel: {sorted(missing)}")
    if not _ensure_classifier(args):
        return 1
    kept = ["--seed", str(args.seed), "--out", str(args.out), "--keep-classifier"]
    kept += ["--force"] if args.force else []
    base = [s for s in BASE_STAGES if s in args.only]
    if base and main(kept + ["--threads", str(args.threads), "--only", *base]):
        return 1
    cmd = [sys.executable, "-m", "lib.diffusion.testbed.train", *kept, "--threads", "1"]
    procs = [subprocess.Popen([*cmd, "--only", *stages])
             for stages in ([s for s in lane if s in args.only] for lane in LANES) if stages]
    return max((p.wait() for p in procs), default=0)


if __name__ == "__main__":
    # Run the imported module's main, so that stages defined in other modules (which import
    # this one) raise the same StageFailed class that main catches.
    from lib.diffusion.testbed.train import main as _main

    raise SystemExit(_main())
