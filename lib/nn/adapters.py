"""Low-bit bottleneck adapters on a frozen backbone: quantiser, storage and weight-noise flatness.

Jie, Wang, Deng, *Revisiting the Parameter Efficiency of Adapters from the Perspective of
Precision Redundancy*, ICCV 2023 (arXiv:2307.16867; official code ``JieShibo/PETL-ViT``,
folder ``binary_adapter``). The pieces, in the order the paper uses them:

* **Flatness under weight noise** (the paper's motivating observation): trained adapter weights
  tolerate Gaussian noise in parameter space. :func:`noise_robustness` adds noise to a chosen
  set of weight tensors, with a standard deviation proportional to each tensor's root mean
  square (so that "10 % noise" means the same thing for weight sets of different scale), and
  reports the loss and accuracy.
* **The quantiser** (the paper's method section; ``QLinear`` in the official ``utils.py``): each
  weight matrix is standardised with its own mean and standard deviation, and the standardised
  entries are rounded to a ``2**bits``-level codebook chosen to minimise the expected
  quantisation error of a standard normal variable (:func:`normal_codebook`). The levels are the
  fixed point of Lloyd's two conditions (every boundary halfway between its two levels; every
  level the error-minimising representative of its cell). The official code makes each level the
  median of its cell, the minimiser of the expected *absolute* error (``error="l1"``, default);
  ``error="l2"`` takes cell means instead (the Lloyd-Max quantiser of the squared error). At one
  bit the quantised matrix is ``mean + std * c * sign(w - mean)`` with ``c = 0.674`` (L1) or
  ``sqrt(2/pi) = 0.798`` (L2). Training is quantisation-aware: latent full-precision weights,
  quantised forward pass, straight-through gradient (:func:`fake_quantize`).
* **Storage**: what must be kept per task is the packed ``bits``-bit codes of every adapter
  matrix, its two float32 statistics, and the float32 task head (:func:`storage_report`, which
  really packs the codes with :func:`numpy.packbits` and counts the bytes).

The backbone is a small pre-LN residual MLP (:class:`ResidualMLP`); adapters are attached in
parallel to each block's MLP, AdaptFormer style, ``x + mlp(ln(x)) + s * adapter(x)``, as the
official ``adaptformer.py`` does for ViT blocks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import root
from scipy.stats import norm
from sklearn.datasets import load_digits
from torch import nn

from lib.nn.digits import DigitsData

FULL_PRECISION = 32
ERRORS = ("l1", "l2")
_EPS = 1e-5  # guards the standardisation of a constant matrix (as the official code does)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer in 1..8 or 32 (full precision), got {bits!r}")
    bits = int(bits)
    if not (1 <= bits <= 8 or bits == FULL_PRECISION):
        raise ValueError(f"bits must be an integer in 1..8 or 32 (full precision), got {bits}")
    return bits


def _check_error(error: str) -> None:
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")


def _lloyd_step(levels: np.ndarray, error: str) -> np.ndarray:
    """One pass of Lloyd's two conditions for the standard normal law."""
    edges = np.concatenate([[-np.inf], 0.5 * (levels[1:] + levels[:-1]), [np.inf]])
    cdf = norm.cdf(edges)
    if error == "l1":  # the median of each cell minimises E|x - level| on it
        return norm.ppf(0.5 * (cdf[1:] + cdf[:-1]))
    pdf = norm.pdf(edges)  # the mean of each cell minimises E(x - level)^2 on it
    return (pdf[:-1] - pdf[1:]) / np.maximum(cdf[1:] - cdf[:-1], 1e-300)


@functools.lru_cache(maxsize=32)
def _codebook(bits: int, error: str) -> tuple[np.ndarray, np.ndarray]:
    k = 2**bits
    # Start from the high-resolution optimum (level density ~ pdf^(1/2) for L1, pdf^(1/3) for
    # L2, i.e. normal quantiles with variance 2 or 3), then solve "Lloyd step = identity" with
    # a quasi-Newton root finder: plain Lloyd iterations need >10^5 sweeps at 8 bits.
    start = norm.ppf((np.arange(k) + 0.5) / k) * math.sqrt(2.0 if error == "l1" else 3.0)
    levels = root(lambda v: _lloyd_step(v, error) - v, start, method="hybr",
                  options={"xtol": 1e-13}).x
    for _ in range(5):  # polish; each Lloyd step can only lower the expected error
        levels = _lloyd_step(np.sort(levels), error)
    residual = float(np.max(np.abs(_lloyd_step(levels, error) - levels)))
    if residual > 1e-9:  # pragma: no cover (does not happen for 1..8 bits)
        raise RuntimeError(f"the {bits}-bit {error} codebook did not converge ({residual:.1e})")
    bounds = 0.5 * (levels[1:] + levels[:-1])
    levels.setflags(write=False)
    bounds.setflags(write=False)
    return levels, bounds


def normal_codebook(bits: int, error: str = "l1") -> tuple[np.ndarray, np.ndarray]:
    """The ``2**bits`` levels and ``2**bits - 1`` boundaries that minimise the expected
    quantisation error of a standard normal variable (the paper's quantiser; official
    ``QLinear.quantize``).

    They are the fixed point of Lloyd's conditions: every boundary halfway between its two
    levels, and every level the median (``error="l1"``, the official code's choice: minimal
    expected absolute error) or the mean (``error="l2"``: Lloyd-Max, minimal expected squared
    error) of the normal law restricted to its cell. At one bit the levels are
    ``+-Phi^{-1}(3/4) = +-0.674`` (L1) and ``+-sqrt(2/pi) = +-0.798`` (L2). The returned arrays
    are read-only and cached.
    """
    bits = _check_bits(bits)
    _check_error(error)
    if bits == FULL_PRECISION:
        raise ValueError("32 bits means no quantisation: there is no codebook")
    return _codebook(bits, error)


def _standardise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if w.numel() < 2:
        raise ValueError(f"a quantised weight needs at least 2 entries, got {w.numel()}")
    if not torch.isfinite(w).all():
        raise ValueError("the weight to quantise contains NaN or infinite entries")
    mean, std = w.mean(), w.std()
    return (w - mean) / (std + _EPS), mean, std


def quantization_codes(
    w: torch.Tensor, bits: int, error: str = "l1"
) -> tuple[np.ndarray, float, float]:
    """Integer codes in ``0 .. 2**bits - 1`` of a weight tensor (flattened, row-major), with the
    tensor's float32 mean and standard deviation: everything a low-bit adapter matrix stores."""
    bits = _check_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("32-bit weights are stored as float32, not as codes")
    levels, bounds = normal_codebook(bits, error)
    z, mean, std = _standardise(w.detach().float())
    codes = np.searchsorted(bounds, z.flatten().cpu().numpy().astype(np.float64))
    return codes.astype(np.uint8), float(mean), float(std)


def fake_quantize(w: torch.Tensor, bits: int, error: str = "l1") -> torch.Tensor:
    """The quantised weight ``mean + std * Q((w - mean) / std)`` with a straight-through
    gradient (quantisation-aware training as in the official ``QLinear.forward``).

    ``Q`` rounds each standardised entry to the nearest level of :func:`normal_codebook`. The
    forward value is exactly the quantised matrix; the backward pass treats ``Q`` as the
    identity, so gradients reach the latent full-precision weight. ``bits=32`` returns ``w``.
    """
    bits = _check_bits(bits)
    if bits == FULL_PRECISION:
        return w
    levels, bounds = normal_codebook(bits, error)
    z, mean, std = _standardise(w)
    lv = torch.tensor(levels, dtype=w.dtype, device=w.device)  # a copy: the cache is read-only
    bd = torch.tensor(bounds, dtype=w.dtype, device=w.device)
    q = lv[torch.bucketize(z.detach(), bd)]
    return mean + (std + _EPS) * (z + (q - z).detach())


def dequantize(codes: np.ndarray, mean: float, std: float, bits: int, error: str = "l1",
               shape: Sequence[int] | None = None) -> torch.Tensor:
    """Rebuild the float32 matrix from stored codes and statistics (inverse of
    :func:`quantization_codes` up to the rounding it performed)."""
    levels, _ = normal_codebook(bits, error)
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= len(levels)):
        raise ValueError(f"codes must lie in 0..{len(levels) - 1} for {bits} bits")
    w = mean + (std + _EPS) * levels[codes.astype(np.int64)]
    out = torch.as_tensor(w, dtype=torch.float32)
    return out.reshape(tuple(shape)) if shape is not None else out


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack ``bits``-bit integer codes into a byte string with :func:`numpy.packbits` (each code
    written as ``bits`` binary digits, most significant first; the last byte zero-padded)."""
    bits = _check_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("32-bit weights are stored as float32, not packed codes")
    codes = np.asarray(codes).astype(np.int64).ravel()
    if codes.size and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"codes must lie in 0..{2**bits - 1} for {bits} bits")
    shifts = np.arange(bits - 1, -1, -1)
    digits = ((codes[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(digits.ravel()).tobytes()


class QuantLinear(nn.Module):
    """A bias-free linear map whose weight is quantised to ``bits`` bits in the forward pass
    (``bits=32``: an ordinary float32 weight)."""

    def __init__(self, d_in: int, d_out: int, bits: int = 1, error: str = "l1") -> None:
        super().__init__()
        if d_in < 1 or d_out < 1:
            raise ValueError(f"layer sizes must be positive, got {d_in} -> {d_out}")
        self.bits = _check_bits(bits)
        _check_error(error)
        self.error = error
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize(self.weight, self.bits, self.error)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight())


class Adapter(nn.Module):
    """AdaptFormer-style bottleneck ``s * W_up relu(W_down x)`` with ``bits``-bit matrices.

    As in the official ``adaptformer.py``: no biases, ReLU, the up-projection starts at zero in
    full precision (the adapted network starts as the backbone) and at tiny truncated-normal
    values when quantised (a zero matrix has no spread to standardise).
    """

    def __init__(self, d: int, hidden: int, bits: int = 1, scale: float = 1.0,
                 error: str = "l1", d_out: int | None = None) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"the adapter's hidden size must be positive, got {hidden}")
        if not math.isfinite(scale):
            raise ValueError(f"the adapter scale must be finite, got {scale}")
        self.bits, self.scale, self.hidden = _check_bits(bits), float(scale), int(hidden)
        self.down = QuantLinear(d, hidden, bits, error)
        self.up = QuantLinear(hidden, d if d_out is None else d_out, bits, error)
        with torch.no_grad():
            if self.bits == FULL_PRECISION:
                self.up.weight.zero_()
            else:
                nn.init.trunc_normal_(self.up.weight, std=1e-3, a=-2e-3, b=2e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(x)))


class Block(nn.Module):
    """Pre-LN residual MLP block with an optional parallel adapter:
    ``x + W_2 gelu(W_1 ln(x)) [+ adapter(x)]``."""

    def __init__(self, d: int, expansion: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, expansion * d)
        self.fc2 = nn.Linear(expansion * d, d)
        self.adapter: Adapter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


class ResidualMLP(nn.Module):
    """A small backbone for 8x8 images: linear embedding, ``depth`` residual blocks, a final
    LayerNorm and a linear head (the part replaced for every downstream task)."""

    def __init__(self, n_in: int = 64, width: int = 128, depth: int = 3, n_classes: int = 10,
                 expansion: int = 2) -> None:
        super().__init__()
        if min(n_in, width, depth, n_classes, expansion) < 1:
            raise ValueError("all sizes of the backbone must be positive")
        self.width = width
        self.embed = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(Block(width, expansion) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)
        self.embed_adapter: Adapter | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.embed_adapter is not None:
            h = h + self.embed_adapter(x)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def insert_adapters(model: ResidualMLP, hidden: int, bits: int, n_classes: int,
                    scale: float = 1.0, error: str = "l1", seed: int = 0,
                    embedding: bool = False) -> list[Adapter]:
    """Freeze ``model``, attach a fresh adapter to every block and a fresh float32 head for
    ``n_classes``; return the adapters. Only adapters and head are trainable afterwards."""
    if n_classes < 2:
        raise ValueError(f"a classification head needs at least 2 classes, got {n_classes}")
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    if embedding:
        model.embed_adapter = Adapter(model.embed.in_features, hidden, bits, scale, error,
                                      d_out=model.width)
        adapters.append(model.embed_adapter)
    for block in model.blocks:
        block.adapter = Adapter(model.width, hidden, bits, scale, error)
        adapters.append(block.adapter)
    model.head = nn.Linear(model.width, n_classes)
    return adapters


def reset_head(model: ResidualMLP, n_classes: int, seed: int = 0, freeze: bool = True) -> None:
    """A fresh float32 head; with ``freeze`` everything else stops training (a linear probe),
    without it every weight trains (full fine-tuning)."""
    if n_classes < 2:
        raise ValueError(f"a classification head needs at least 2 classes, got {n_classes}")
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(not freeze)
    model.head = nn.Linear(model.width, n_classes)


@dataclass(frozen=True)
class StorageReport:
    """Bits that must be stored for one task (see :func:`storage_report`)."""

    weight_bits: int  # adapter matrices: packed codes (low-bit) or float32 entries
    stat_bits: int  # float32 mean and std of every low-bit matrix
    head_bits: int  # float32 head weight and bias
    n_adapter_weights: int

    @property
    def adapter_bits(self) -> int:
        return self.weight_bits + self.stat_bits

    @property
    def total_bits(self) -> int:
        return self.weight_bits + self.stat_bits + self.head_bits

    @property
    def total_bytes(self) -> int:
        return self.total_bits // 8


def storage_report(adapters: Sequence[Adapter], head: nn.Linear | None = None) -> StorageReport:
    """Exact per-task storage, as the official ``save_model`` writes it: for each low-bit
    matrix its codes packed by :func:`pack_codes` plus two float32 statistics; float32 matrices
    at 32 bits an entry; the float32 head (weight and bias) if given. The byte strings are
    really built, so the count is what a file would hold."""
    if not adapters:
        raise ValueError("storage_report needs at least one adapter")
    weight_bits = stat_bits = n = 0
    for adapter in adapters:
        for layer in (adapter.down, adapter.up):
            n += layer.weight.numel()
            if layer.bits == FULL_PRECISION:
                weight_bits += 8 * layer.weight.detach().float().numpy().tobytes().__len__()
            else:
                codes, mean, std = quantization_codes(layer.weight, layer.bits, layer.error)
                weight_bits += 8 * len(pack_codes(codes, layer.bits))
                stat_bits += 8 * np.array([mean, std], dtype=np.float32).nbytes
    head_bits = 0
    if head is not None:
        head_bits = 32 * (head.weight.numel() + (head.bias.numel() if head.bias is not None else 0))
    return StorageReport(weight_bits, stat_bits, head_bits, n)


@torch.no_grad()
def quantize_adapters_(adapters: Sequence[Adapter], bits: int | None = None,
                       error: str | None = None) -> None:
    """Replace every adapter matrix by its quantised value, in place, and mark it full
    precision so that the stored (dequantised) matrix is used as it is from then on.

    With ``bits=None`` each layer uses its own bit width (deploying a QAT adapter); with a number
    it is post-training quantisation of a trained adapter to that width, without retraining.
    (The quantiser is not idempotent, since a quantised matrix has a smaller spread than its
    latent one, hence the switch to full precision after writing.)
    """
    for adapter in adapters:
        for layer in (adapter.down, adapter.up):
            b = layer.bits if bits is None else _check_bits(bits)
            layer.weight.copy_(fake_quantize(layer.weight, b, error or layer.error))
            layer.bits = FULL_PRECISION
        adapter.bits = FULL_PRECISION


@dataclass
class NoiseCurve:
    """Mean (over draws) loss and accuracy after relative Gaussian weight noise of each size."""

    sigmas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    clean_loss: float
    clean_accuracy: float

    @property
    def loss_increase(self) -> np.ndarray:
        return self.loss - self.clean_loss


@torch.no_grad()
def noise_robustness(model: nn.Module, params: Sequence[torch.Tensor], X: torch.Tensor,
                     y: torch.Tensor, sigmas: Sequence[float], draws: int = 8,
                     seed: int = 0, per: str = "tensor") -> NoiseCurve:
    """Loss and accuracy of ``model`` on ``(X, y)`` when every tensor ``W`` in ``params`` gets
    independent noise ``N(0, (sigma * rms(W))^2)`` per entry, ``rms(W) = ||W||_F / sqrt(n)``.

    The noise is *relative*: ``||noise||_F ~= sigma ||W||_F`` for every tensor, so one sigma
    perturbs a large-norm weight set (a fully fine-tuned backbone) and a small-norm one (an
    adapter) by the same fraction of their size. This is the calibration under which the
    paper's flatness observation is compared across weight sets; the weights are restored
    afterwards. With ``per="set"`` one scale, the root mean square over all entries of all
    tensors together, is used for every tensor instead (``||noise|| ~= sigma ||theta||`` for the
    whole set).
    """
    if per not in ("tensor", "set"):
        raise ValueError(f"per must be 'tensor' or 'set', got {per!r}")
    params = list(params)
    if not params:
        raise ValueError("noise_robustness needs at least one parameter tensor")
    sigmas = np.asarray(sigmas, dtype=float)
    if sigmas.ndim != 1 or sigmas.size == 0 or np.any(sigmas < 0) or not np.all(
            np.isfinite(sigmas)):
        raise ValueError("sigmas must be a non-empty list of finite non-negative numbers")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    was_training = model.training
    model.eval()
    originals = [p.detach().clone() for p in params]
    scales = [float(p.detach().pow(2).mean().sqrt()) for p in params]
    if per == "set":
        n_total = sum(p.numel() for p in params)
        rms = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params) / n_total)
        scales = [rms] * len(params)
    gen = torch.Generator().manual_seed(int(seed))

    def evaluate() -> tuple[float, float]:
        logits = model(X)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    clean_loss, clean_acc = evaluate()
    losses, accs = np.zeros(len(sigmas)), np.zeros(len(sigmas))
    try:
        for i, sigma in enumerate(sigmas):
            for _ in range(draws):
                for p, w0, s in zip(params, originals, scales):
                    noise = torch.randn(w0.shape, generator=gen, dtype=w0.dtype)
                    p.copy_(w0 + sigma * s * noise)
                loss, acc = evaluate()
                losses[i] += loss / draws
                accs[i] += acc / draws
    finally:
        for p, w0 in zip(params, originals):
            p.copy_(w0)
        model.train(was_training)
    return NoiseCurve(sigmas, losses, accs, clean_loss, clean_acc)


def shifted_digits(seed: int = 0, pretrain_classes: Sequence[int] = (0, 1, 2, 3, 4),
                   per_class: int = 30, rotate: float = 90.0, invert: bool = False,
                   noise: float = 0.0) -> tuple[DigitsData, DigitsData]:
    """A pretraining task and a shifted downstream task from scikit-learn's 8x8 digits.

    Pretraining: every image of ``pretrain_classes`` (80/20 seeded split). Downstream: the other
    classes, relabelled ``0..k-1``, each image rotated by ``rotate`` degrees (exact ``rot90``
    for multiples of 90, bilinear ``scipy.ndimage.rotate`` otherwise), optionally inverted
    (``16 - x``) and with Gaussian pixel ``noise`` (on the 0-16 scale), with
    ``per_class`` training images per class (a low-data regime like VTAB-1K's) and the rest for
    testing. Both are standardised with the *pretraining* pixel statistics, as a frozen
    backbone's input normalisation would be.
    """
    pre = sorted({int(c) for c in pretrain_classes})
    if not pre or min(pre) < 0 or max(pre) > 9 or len(pre) > 8:
        raise ValueError(
            f"pretrain_classes must be 1 to 8 distinct digits 0-9, got {pretrain_classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    digits = load_digits()
    X, y = digits.images.astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng([seed, 2307])
    in_pre = np.isin(y, pre)
    idx = rng.permutation(np.flatnonzero(in_pre))
    n_test = len(idx) // 5
    Xp = X.reshape(len(X), 64)
    mean = Xp[idx[n_test:]].mean(0)
    std = Xp[idx[n_test:]].std(0)
    std[std == 0] = 1.0

    def tensors(rows: np.ndarray, images: np.ndarray, labels: np.ndarray):
        flat = (images[rows].reshape(len(rows), 64) - mean) / std
        return torch.from_numpy(flat.astype(np.float32)), torch.from_numpy(labels[rows])

    remap = np.full(10, -1, dtype=np.int64)
    pre_map = remap.copy()
    pre_map[pre] = np.arange(len(pre))
    pretrain = DigitsData(*tensors(idx[n_test:], X, pre_map[y]),
                          *tensors(idx[:n_test], X, pre_map[y]))
    down = [c for c in range(10) if c not in pre]
    remap[down] = np.arange(len(down))
    if rotate % 90 == 0:
        rotated = np.rot90(X, k=(rotate // 90) % 4, axes=(1, 2)).copy()
    else:
        rotated = ndimage.rotate(X, rotate, axes=(1, 2), reshape=False, order=1).clip(0, 16)
    if invert:
        rotated = 16.0 - rotated
    if noise:
        rotated = rotated + noise * rng.standard_normal(rotated.shape).astype(np.float32)
    train_rows, test_rows = [], []
    for c in down:
        rows = rng.permutation(np.flatnonzero(y == c))
        if len(rows) <= per_class:
            raise ValueError(f"per_class={per_class} leaves no test image of digit {c}")
        train_rows.append(rows[:per_class])
        test_rows.append(rows[per_class:])
    tr, te = np.concatenate(train_rows), np.concatenate(test_rows)
    downstream = DigitsData(*tensors(tr, rotated, remap[y]), *tensors(te, rotated, remap[y]))
    return pretrain, downstream


def fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
        weight_decay: float = 0.0, cosine: bool = True) -> list[float]:
    """Full-batch AdamW on the parameters of ``model`` that require gradients (the adapters and
    head, the head alone, or everything); return the training loss of every step.

    The downstream sets here hold a few hundred images, so one batch is the whole set; the
    official recipe's AdamW with weight decay and a cosine learning-rate decay is kept (the
    decay lets the signs of 1-bit latent weights settle at the end of training). For minibatch
    training with logged test accuracy use :func:`lib.nn.digits.train_classifier`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        losses.append(float(loss.detach()))
    return losses
