"""Judging generated MiniSD images: a caption classifier, caption accuracy and feature FID.

The :class:`CaptionClassifier` is a small CNN trained on the testbed's own generator
(:func:`lib.diffusion.testbed.data.generate`, split ``"all"``) with one head per attribute:
colour, shape, position, size, background brightness bucket and texture. It plays the role
CLIP zero-shot scores and Inception features play at paper scale:

* :func:`caption_accuracy`: the fraction of images whose predicted attributes match every
  attribute the prompt states (the testbed card's "caption accuracy");
* :func:`feature_frechet_distance`: the Frechet distance between Gaussians fitted to the
  classifier's penultimate features of two image sets (FID's formula on our own features):
  ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})``.

:func:`train_caption_classifier` trains on fresh batches every step (the generator is cheap)
and stops when every required head reaches the target accuracy on a fixed validation set,
logging its step time. Part of each batch is blurred (2x average pooling, then bilinear
upsampling) so the classifier can also judge decodes of 8x8 latents.

Shipped weights (``weights/caption_classifier``, written by
``python -m lib.diffusion.testbed.train_evaluator``) load with :func:`load_caption_classifier`,
which checks their SHA-256 against the manifest and reads safetensors only (never pickle).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lib.diffusion.testbed.data import (
    BRIGHTNESS_BUCKETS,
    COLOURS,
    DEFAULT_CONFIG,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    generate,
    parse_caption,
)
from lib.util.shipped_weights import sha256_file, verify_file

HEADS: dict[str, int] = {
    "colour": len(COLOURS),
    "shape": len(SHAPES),
    "position": len(POSITIONS),
    "size": len(SIZES),
    "texture": len(TEXTURES),
}
"""Classification heads (the :class:`~lib.diffusion.testbed.data.Labels` field -> classes).
The background bucket is not a classification head: it is read off the regressed brightness
with the grammar's thresholds (see :meth:`CaptionClassifier.bucket`)."""
PREDICTED = (*HEADS, "bucket")
"""Every attribute :func:`predict` returns."""
BRIGHTNESS_SCALE = 0.25  # the regression head predicts (level - 0.5) / BRIGHTNESS_SCALE

N_QUANTILES = 19
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "caption_classifier"
WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE = "model.safetensors", "config.json", "manifest.json"


class CaptionClassifier(nn.Module):
    """Small CNN with one linear head per attribute on a shared ``feature_dim`` feature vector.

    Input: images ``(n, 3, 32, 32)`` in [0, 1]. Five 3x3 convolutions (widths ``w, 2w, 2w,
    4w, 4w``; three of them stride 2, 32 -> 4 px) with batch norm and ReLU; their output and 19
    quantiles of the image's grey levels (direct evidence of the background level, which
    convolutions estimate only coarsely) feed a linear layer to the features (the penultimate
    layer used by :func:`feature_frechet_distance`). Classification heads for colour, shape,
    position, size and texture, and a regression head for the nominal background brightness,
    from which the bucket is read with the grammar's thresholds (0.25, 0.75).
    ``width=16, feature_dim=96`` has about 0.17 M parameters.
    """

    def __init__(self, width: int = 16, feature_dim: int = 96,
                 heads: dict[str, int] | None = None) -> None:  # fmt: skip
        super().__init__()
        if width < 1 or feature_dim < 1:
            raise ValueError(f"width and feature_dim must be positive, got {width}, {feature_dim}")
        heads = dict(HEADS if heads is None else heads)
        if not heads or any(k < 2 for k in heads.values()):
            raise ValueError(f"heads must name at least one head with >= 2 classes, got {heads}")
        self.config = {"width": int(width), "feature_dim": int(feature_dim), "heads": heads}

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]  # fmt: skip

        w = width
        self.trunk = nn.Sequential(
            *block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 2), nn.Flatten(),
        )  # fmt: skip
        self.register_buffer("quantiles", torch.linspace(0.05, 0.95, N_QUANTILES), persistent=False)
        self.project = nn.Sequential(
            nn.Linear(4 * w * (IMAGE_SIZE // 8) ** 2 + N_QUANTILES, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, k) for name, k in heads.items()})
        self.brightness = nn.Linear(feature_dim, 1)
        self.thresholds = (DEFAULT_CONFIG.dark_below, DEFAULT_CONFIG.bright_above)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(n, feature_dim)`` of images in [0, 1]."""
        x = 2.0 * images - 1.0
        grey = x.mean(dim=1).flatten(1)
        levels = torch.quantile(grey, self.quantiles, dim=1).T  # background-level evidence
        return self.project(torch.cat([self.trunk(x), levels], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, ``{name: (n, classes)}``, and ``"brightness"``: ``(n,)`` the
        regressed nominal background level."""
        h = self.features(images)
        out = {name: head(h) for name, head in self.heads.items()}
        out["brightness"] = 0.5 + BRIGHTNESS_SCALE * self.brightness(h).squeeze(1)
        return out

    def bucket(self, brightness: torch.Tensor) -> torch.Tensor:
        """Brightness bucket (0 dark, 1 medium, 2 bright) of regressed levels."""
        dark, bright = self.thresholds
        return (brightness >= dark).long() + (brightness > bright).long()

    def attributes(self) -> tuple[str, ...]:
        """Names of the attributes :func:`predict` returns."""
        return (*self.heads, "bucket")

    def save_pretrained(self, folder: str | Path) -> dict[str, str]:
        """Write ``config.json`` and ``model.safetensors``; return their SHA-256 digests."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        return {name: sha256_file(folder / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CaptionClassifier:
        """Build from ``config.json`` and load ``model.safetensors`` (no hash check; see
        :func:`load_caption_classifier`). Returns the model in evaluation mode."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise ValueError(f"{folder} has no {name}")
        config = json.loads((folder / CONFIG_FILE).read_text())
        model = cls(**config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        return model.eval()


def load_caption_classifier(folder: str | Path | None = None) -> CaptionClassifier:
    """The shipped (or a saved) classifier, after checking its files against ``manifest.json``.

    Raises ValueError when a file is missing or its SHA-256 differs from the manifest. Only
    safetensors and JSON are read, so loading cannot run code.
    """
    folder = Path(WEIGHTS_DIR if folder is None else folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ValueError(
            f"{folder} has no {MANIFEST_FILE}; train the classifier with "
            "`python -m lib.diffusion.testbed.train_evaluator`"
        )
    manifest = json.loads(manifest_path.read_text())
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        verify_file(folder / name, manifest.get("sha256", {}).get(name))
    return CaptionClassifier.from_pretrained(folder)


def blur(images: torch.Tensor) -> torch.Tensor:
    """2x average pooling then bilinear upsampling: the detail an 8x8-latent decoder loses."""
    small = F.avg_pool2d(images, 2)
    return F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must have shape (n, 3, 32, 32), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images is empty")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.25 or hi > 1.25:
        raise ValueError(
            f"images must lie in [0, 1] (found [{lo:.2f}, {hi:.2f}]); decoder outputs in"
            " [-1, 1] need (x + 1) / 2"
        )
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def _batched(model: CaptionClassifier, images: torch.Tensor, fn: Callable, batch: int = 512):
    was_training = model.training
    model.eval()
    try:
        return [fn(images[i : i + batch]) for i in range(0, images.shape[0], batch)]
    finally:
        model.train(was_training)


def predict(model: CaptionClassifier, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Predicted class of every attribute, ``{name: (n,) int64}``, for images in [0, 1]
    (arg-max of each head; the bucket from the regressed brightness)."""
    x = _as_images(images)
    def one(b: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(b)
        pred = {k: out[k].argmax(1) for k in model.heads}
        pred["bucket"] = model.bucket(out["brightness"])
        return pred

    parts = _batched(model, x, one)
    return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def features(model: CaptionClassifier, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Penultimate features ``(n, feature_dim)`` float64 of images in [0, 1]."""
    x = _as_images(images)
    return torch.cat(_batched(model, x, model.features)).double().numpy()


def attribute_distribution(
    model: CaptionClassifier, images: torch.Tensor | np.ndarray, head: str
) -> np.ndarray:
    """Frequencies of the predicted classes of ``head`` (sums to 1), e.g. the colour mix."""
    if head not in model.attributes():
        raise ValueError(f"unknown head {head!r}; the model predicts {model.attributes()}")
    pred = predict(model, images)[head]
    classes = len(BRIGHTNESS_BUCKETS) if head == "bucket" else model.config["heads"][head]
    return np.bincount(pred, minlength=classes) / pred.size


@dataclass
class CaptionAccuracy:
    """``accuracy``: fraction of images whose predictions match all attributes their prompt
    states; ``per_attribute``: accuracy per head over the prompts that state it; ``correct``:
    the per-image booleans."""

    accuracy: float
    per_attribute: dict[str, float]
    correct: np.ndarray


def caption_accuracy(
    model: CaptionClassifier,
    images: torch.Tensor | np.ndarray,
    prompts: str | Sequence[str],
) -> CaptionAccuracy:
    """Caption accuracy of images against their prompts (testbed card, section 1).

    Only attributes the prompt states count (an omitted colour is not checked; a prompt
    without "dark"/"bright" does not constrain the background). A single prompt applies to all
    images. Raises ValueError for ungrammatical prompts or a length mismatch.
    """
    x = _as_images(images)
    n = x.shape[0]
    if isinstance(prompts, str):
        prompts = [prompts] * n
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images")
    parsed = [parse_caption(p) for p in prompts]
    unknown = {k for p in parsed for k in p} - set(model.attributes())
    if unknown:
        raise ValueError(f"the model has no head for stated attributes {sorted(unknown)}")
    pred = predict(model, x)
    correct = np.ones(n, dtype=bool)
    per_attribute = {}
    for head in model.attributes():
        rows = np.array([i for i, p in enumerate(parsed) if head in p], dtype=np.int64)
        if rows.size == 0:
            continue
        want = np.array([parsed[i][head] for i in rows])
        hit = pred[head][rows] == want
        correct[rows] &= hit
        per_attribute[head] = float(hit.mean())
    return CaptionAccuracy(float(correct.mean()), per_attribute, correct)


def gaussian_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``(n, d)`` features (n >= 2), in float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (n, d) with n >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^{1/2} sigma2 sigma1^{1/2})^{1/2})``,
    the formula of FID. The trace term uses symmetric eigen-decompositions (sigma1^{1/2} from
    ``eigh``, then the eigenvalues of the symmetric PSD middle matrix), which avoids the
    complex round-off of a general matrix square root. Tiny negative results from round-off
    are clipped to 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, float)), np.atleast_2d(np.asarray(sigma2, float))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape},"
            f" sigma2 {s2.shape}"
        )
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if not np.allclose(s, s.T, atol=1e-8 * max(1.0, np.abs(s).max())):
            raise ValueError(f"{name} is not symmetric")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w1, v1 = np.linalg.eigh(s1)
    scale = max(1.0, np.abs(w1).max(), np.abs(np.linalg.eigvalsh(s2)).max())
    if w1.min() < -1e-8 * scale:
        raise ValueError(f"sigma1 is not positive semi-definite (eigenvalue {w1.min():.3g})")
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    middle = root1 @ s2 @ root1
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    if w.min() < -1e-8 * scale**2:
        raise ValueError(f"sigma2 is not positive semi-definite (eigenvalue {w.min():.3g})")
    trace_root = np.sqrt(np.clip(w, 0.0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_root)
    return max(value, 0.0)


def feature_frechet_distance(
    model: CaptionClassifier,
    images_a: torch.Tensor | np.ndarray,
    images_b: torch.Tensor | np.ndarray,
) -> float:
    """"Feature FID": :func:`frechet_distance` of Gaussians fitted to the classifier's
    penultimate features of two image sets (each with more images than the feature dimension
    is advisable: the covariance estimate is biased upwards otherwise)."""
    return frechet_distance(*gaussian_statistics(features(model, images_a)),
                            *gaussian_statistics(features(model, images_b)))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """Outcome of :func:`train_caption_classifier`.

    ``history`` has one entry per evaluation: ``step``, ``loss`` (mean training loss since the
    previous evaluation), ``seconds_per_step`` (mean wall time of those steps, generation
    included) and ``val_<head>`` accuracies on the clean validation set.
    """

    model: CaptionClassifier
    converged: bool
    steps: int
    seconds: float
    val_accuracy: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def head_accuracy(model: CaptionClassifier, images: torch.Tensor,
                  labels: dict[str, torch.Tensor]) -> dict[str, float]:  # fmt: skip
    """Accuracy of every head on labelled images (``labels`` as ``Labels.tensors()``)."""
    pred = predict(model, images)
    return {k: float((torch.from_numpy(v) == labels[k]).float().mean()) for k, v in pred.items()}


def train_caption_classifier(
    model: CaptionClassifier | None = None,
    *,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    target: float = 0.99,
    required_heads: Sequence[str] | None = None,
    eval_every: int = 100,
    n_val: int = 2048,
    max_steps: int = 5000,
    blur_prob: float = 0.25,
    lr_half_life: float = 400.0,
    log: Callable[[dict[str, float]], Any] | None = None,
) -> TrainResult:
    """Train a :class:`CaptionClassifier` on fresh generator batches until it is accurate enough.

    Every step draws ``batch_size`` new images of the ``"all"`` split with seed
    ``(seed, 1, step)`` (a fraction ``blur_prob`` of them blurred with :func:`blur`) and takes an
    Adam step on the sum of the heads' cross-entropies. Every ``eval_every`` steps the heads are
    scored on a fixed clean validation set (seed ``(seed, 2)``, ``n_val`` images); training stops
    as soon as every head in ``required_heads`` (default: all) reaches ``target``, or after
    ``max_steps`` (then ``converged`` is False). The learning rate halves every
    ``lr_half_life`` steps (down to ``lr / 32``): the bucket needs a precise brightness
    regression near the 0.25 and 0.75 thresholds, which a constant rate does not give.
    ``log`` receives each history entry. Seeded: with ``model=None`` (built after seeding
    torch) the same arguments give the same weights on the same machine and thread count.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (batch norm), got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    if eval_every < 1 or max_steps < 1 or n_val < 1:
        raise ValueError("eval_every, max_steps and n_val must be positive")
    if not 0.0 <= blur_prob <= 1.0:
        raise ValueError(f"blur_prob must lie in [0, 1], got {blur_prob}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    torch.manual_seed(seed)
    model = CaptionClassifier() if model is None else model
    required = list(model.attributes()) if required_heads is None else list(required_heads)
    missing = set(required) - set(model.attributes())
    if missing:
        raise ValueError(f"required_heads {sorted(missing)} are not heads of the model")
    val = generate(n_val, seed=(seed, 2), split="all")
    val_x, val_y = val.images_tensor(), val.labels.tensors()
    if lr_half_life <= 0:
        raise ValueError(f"lr_half_life must be positive, got {lr_half_life}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: max(0.5 ** (s / lr_half_life), 1 / 32)
    )
    blur_gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    losses: list[float] = []
    acc: dict[str, float] = {}
    start = time.perf_counter()
    interval_start, converged, step = start, False, 0
    model.train()
    for step in range(1, max_steps + 1):
        batch = generate(batch_size, seed=(seed, 1, step), split="all")
        x, y = batch.images_tensor(), batch.labels.tensors()
        level = torch.from_numpy(batch.labels.brightness)
        if blur_prob > 0:
            mask = torch.rand(batch_size, generator=blur_gen) < blur_prob
            if mask.any():
                x = x.clone()
                x[mask] = blur(x[mask])
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], y[k]) for k in model.heads)
        loss = loss + F.mse_loss(logits["brightness"], level) / BRIGHTNESS_SCALE**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == max_steps:
            elapsed = time.perf_counter() - interval_start
            acc = head_accuracy(model, val_x, val_y)
            k = step - (history[-1]["step"] if history else 0)
            entry = {"step": float(step), "loss": float(np.mean(losses[-int(k):])),
                     "seconds_per_step": elapsed / k,
                     **{f"val_{h}": a for h, a in acc.items()}}  # fmt: skip
            history.append(entry)
            if log is not None:
                log(entry)
            model.train()
            interval_start = time.perf_counter()
            if all(acc[h] >= target for h in required):
                converged = True
                break
    model.eval()
    return TrainResult(model, converged, step, time.perf_counter() - start, acc, history, losses)
