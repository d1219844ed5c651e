"""Modular addition, the bias-free MLP and the full-batch training loop of grokking studies.

The setting of Prieto et al. (2025; their experimental setup and official code), after Power et
al. (2022): every pair ``(a, b)`` with ``0 <= a, b < p`` is labelled ``(a + b) mod p``; the input
is the concatenation of the one-hot codes of ``a`` and ``b`` (length ``2p``); a fixed random
share of the ``p^2`` pairs is the training set and the rest the test set. The model is a ReLU
MLP whose linear layers have **no biases**, which makes the logits positively homogeneous in every
weight matrix: scaling a matrix by ``c > 0`` scales the logits by ``c``. Training is full batch.

:func:`train_modular` runs one configuration (softmax cross-entropy in 16/32/64-bit, or
StableMax; AdamW or ⊥AdamW; any weight decay) and logs what the paper plots: train and test
accuracy, the loss, the Softmax Collapse fraction, the share of exactly-zero per-sample losses,
the cosine between the gradient and the naive-loss-minimisation direction, and the logit and
weight norms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lib.nn.stablemax import (
    PerpAdamW,
    float_dtype,
    nlm_cosine,
    softmax_collapse_fraction,
    softmax_cross_entropy,
    stablemax_cross_entropy,
    zero_loss_fraction,
)


@dataclass
class ModularData:
    """One-hot inputs ``(n, 2p)`` float32 and labels ``(n,)`` int64 for train and test."""

    p: int
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def modular_addition_data(p: int, train_fraction: float = 0.4, seed: int = 0) -> ModularData:
    """All ``p^2`` pairs ``(a, b) -> (a + b) mod p``, split at random (seeded) into train/test.

    The training set holds ``round(train_fraction * p^2)`` pairs. Inputs are the concatenated
    one-hot codes of ``a`` and ``b``.
    """
    if not isinstance(p, (int, np.integer)) or p < 2:
        raise ValueError(f"the modulus p must be an integer >= 2, got {p!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    p = int(p)
    n_train = int(round(train_fraction * p * p))
    if not 1 <= n_train < p * p:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty train or test set")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    X = torch.cat([nn.functional.one_hot(a, p), nn.functional.one_hot(b, p)], dim=1).float()
    y = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    tr, te = order[:n_train], order[n_train:]
    return ModularData(p, X[tr], y[tr], X[te], y[te])


def bias_free_mlp(
    p: int, width: int = 128, depth: int = 2, seed: int | None = None
) -> nn.Sequential:
    """ReLU MLP ``2p -> width -> ... -> p`` with ``depth`` hidden layers and no biases.

    Weights use torch's default initialisation, drawn from a generator seeded with ``seed``
    (or from the global generator when ``seed`` is None).
    """
    if p < 2 or width < 1 or depth < 1:
        raise ValueError(f"need p >= 2, width >= 1, depth >= 1; got p={p}, width={width}, "
                         f"depth={depth}")
    sizes = [2 * p] + [width] * depth + [p]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=False))
        if i < depth:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / np.sqrt(layer.in_features)  # torch's default (kaiming a=sqrt5)
                    layer.weight.uniform_(-bound, bound, generator=gen)
    return model


@dataclass
class Trajectory:
    """Logged history of :func:`train_modular` (one entry per logged step)."""

    config: dict
    step: list[int] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    collapse: list[float] = field(default_factory=list)
    zero_loss: list[float] = field(default_factory=list)
    nlm_cosine: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    logit_norm: list[float] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Every logged series as a numpy array."""
        names = ("step", "train_accuracy", "test_accuracy", "train_loss", "collapse",
                 "zero_loss", "nlm_cosine", "grad_norm", "logit_norm", "weight_norm")
        return {n: np.asarray(getattr(self, n), dtype=float) for n in names}

    def first_step(self, series: str, at_least: float) -> int | None:
        """First logged step where ``series`` reaches ``at_least`` (None if it never does)."""
        for s, v in zip(self.step, getattr(self, series)):
            if v >= at_least:
                return s
        return None


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean())


def train_modular(
    data: ModularData,
    *,
    steps: int,
    width: int = 128,
    depth: int = 2,
    loss: str = "softmax",
    bits: int = 32,
    optimizer: str = "adamw",
    lr: float = 0.01,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-25,
    log_every: int = 50,
    seed: int = 0,
    flush_denormal: bool = True,
    model: nn.Module | None = None,
    keep_logits_every: int | None = None,
    perp_rescale: bool = True,
) -> tuple[nn.Module, Trajectory]:
    """Full-batch training on modular addition; returns the model and its :class:`Trajectory`.

    ``loss`` is ``"softmax"`` (cross-entropy with the log-softmax in ``bits`` = 16, 32 or 64
    bits) or ``"stablemax"`` (StableMax cross-entropy in float64). ``optimizer`` is ``"adamw"``
    or ``"perp_adamw"`` (⊥AdamW; ``perp_rescale`` keeps the full gradient's norm as the official
    ``OrthoGrad`` does, False is the plain projection). The defaults are the paper's: lr 0.01,
    betas (0.9, 0.99) and a tiny Adam epsilon (1e-25), so that Adam's denominator does not hide
    a vanishing gradient.

    Every ``log_every`` steps (and at the last one) the log records, on the training set: the
    accuracy, the loss, the Softmax Collapse fraction in ``bits`` (the share of training samples
    whose own float loss is exactly 0, :func:`softmax_collapse_fraction` with the labels; for
    StableMax: the share whose StableMax loss is exactly 0), the share of exactly-zero losses,
    the mean over layers of the NLM cosine of the current full-batch gradient (before any
    projection), the gradient norm, the mean logit norm, the weight norm; and the test accuracy.
    With
    ``keep_logits_every`` the training logits are also kept (detached copies) every that many
    steps, in ``Trajectory.logits``, for measurements after the run.

    ``flush_denormal`` calls ``torch.set_flush_denormal(True)`` (a process-wide setting): with
    epsilon 1e-25 Adam divides by numbers in the subnormal range, which CPUs handle tens of times
    slower; flushing them to zero moves float32's underflow threshold from about 1e-45 to 1e-38
    and leaves the absorption behind Softmax Collapse (a matter of relative precision) untouched.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be at least 1, got {log_every}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    if loss not in ("softmax", "stablemax"):
        raise ValueError(f"loss must be 'softmax' or 'stablemax', got {loss!r}")
    if keep_logits_every is not None and keep_logits_every < 1:
        raise ValueError(f"keep_logits_every must be positive or None, got {keep_logits_every}")
    float_dtype(bits)  # validates bits
    if flush_denormal:
        torch.set_flush_denormal(True)
    if model is None:
        model = bias_free_mlp(data.p, width, depth, seed=seed)
    params = [q for q in model.parameters() if q.requires_grad]
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    elif optimizer == "perp_adamw":
        opt = PerpAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        rescale=perp_rescale)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'perp_adamw', got {optimizer!r}")

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        if loss == "stablemax":
            return stablemax_cross_entropy(logits, data.y_train)
        return softmax_cross_entropy(logits, data.y_train, bits=bits)

    config = dict(p=data.p, n_train=len(data.y_train), width=width, depth=depth, loss=loss,
                  bits=bits, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                  betas=betas, eps=eps, steps=steps, seed=seed, perp_rescale=perp_rescale)
    log = Trajectory(config)
    start = time.perf_counter()
    model.train()
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        logits = model(data.X_train)
        value = loss_of(logits)
        value.backward()
        if keep_logits_every is not None and (step % keep_logits_every == 0 or step == steps):
            log.logits[step] = logits.detach().clone()
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                cos = [c for c in nlm_cosine(params) if c == c]
                grad = torch.sqrt(sum((q.grad.double() ** 2).sum() for q in params
                                      if q.grad is not None))
                if loss == "stablemax":
                    zero = zero_loss_fraction(logits, data.y_train, loss="stablemax")
                    collapse = zero
                else:
                    zero = zero_loss_fraction(logits, data.y_train, bits=bits)
                    collapse = softmax_collapse_fraction(logits, bits=bits, labels=data.y_train)
                log.step.append(step)
                log.train_accuracy.append(_accuracy(logits, data.y_train))
                log.test_accuracy.append(_accuracy(model(data.X_test), data.y_test))
                log.train_loss.append(float(value))
                log.collapse.append(collapse)
                log.zero_loss.append(zero)
                log.nlm_cosine.append(float(np.mean(cos)) if cos else float("nan"))
                log.grad_norm.append(float(grad))
                log.logit_norm.append(float(logits.double().norm(dim=1).mean()))
                log.weight_norm.append(float(torch.sqrt(sum((q.double() ** 2).sum()
                                                            for q in params))))
        if step < steps:
            opt.step()
    log.seconds = time.perf_counter() - start
    return model, log
