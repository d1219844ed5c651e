"""Small, seeded classification data (scikit-learn's 8x8 digits) and a reusable training loop.

``load_digits_split`` gives standardised train/test tensors from
:func:`sklearn.datasets.load_digits`; ``train_classifier`` runs full-batch or mini-batch
training of any ``torch.nn.Module`` with a logged history (loss, train and test accuracy per
epoch) and optional hooks at the start and end of each epoch, so chapters can schedule
hyper-parameters of their own (an estimator's exponent, a temperature, ...) or log quantities
during training without writing another loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


@dataclass
class DigitsData:
    """Train/test tensors: inputs ``(n, 64)`` float32, labels ``(n,)`` int64."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max().item()) + 1


def load_digits_split(
    seed: int = 0, test_size: float = 0.2, standardize: bool = True
) -> DigitsData:
    """The 1797 digits (8x8 images, 10 classes), split with a stratified, seeded split.

    With ``standardize`` each pixel is centred and scaled with the *training* mean and
    standard deviation (constant pixels keep scale 1), so no test statistic leaks in.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    digits = load_digits()
    X = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    if standardize:
        mean = X_tr.mean(axis=0)
        std = X_tr.std(axis=0)
        std[std == 0] = 1.0
        X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    tensors = (torch.from_numpy(a) for a in (X_tr, y_tr, X_te, y_te))
    return DigitsData(*tensors)


@dataclass
class TrainLog:
    """Per-epoch history of :func:`train_classifier` (lists of floats, one entry per epoch)."""

    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def final_test_accuracy(self) -> float:
        if not self.test_accuracy:
            raise ValueError("the log is empty: no epoch was run")
        return self.test_accuracy[-1]


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct arg-max predictions, with the model in evaluation mode."""
    was_training = model.training
    model.eval()
    correct = (model(X).argmax(dim=1) == y).float().mean().item()
    model.train(was_training)
    return float(correct)


def train_classifier(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: int,
    batch_size: int | None = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    cosine: bool = False,
    seed: int = 0,
    on_epoch_start: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
) -> TrainLog:
    """Train ``model`` with cross-entropy on ``data``; return the per-epoch log.

    ``batch_size=None`` is full-batch gradient descent; otherwise the training set is
    reshuffled every epoch by a generator seeded with ``seed``. ``optimizer`` is ``"adam"`` or
    ``"sgd"`` (with ``momentum``); ``cosine`` anneals the learning rate to zero over the run.
    ``on_epoch_start(epoch, model)`` runs before each epoch (to schedule a hyper-parameter);
    any numbers it returns are logged in ``TrainLog.extra``. ``on_epoch_end(epoch, model)`` runs
    right after the epoch's last optimiser step, while the parameters' ``.grad`` still hold
    that last mini-batch's gradient (to log quantities during training, as the official code of
    some papers does); its numbers are logged in ``TrainLog.extra`` too.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive or None (full batch), got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if cosine else None
    generator = torch.Generator().manual_seed(int(seed))
    n = data.X_train.shape[0]
    step = n if batch_size is None else batch_size
    loss_fn = nn.CrossEntropyLoss()
    log = TrainLog()
    for epoch in range(epochs):
        if on_epoch_start is not None:
            for key, value in (on_epoch_start(epoch, model) or {}).items():
                log.extra.setdefault(key, []).append(float(value))
        model.train()
        order = torch.randperm(n, generator=generator) if batch_size is not None else None
        total, seen = 0.0, 0
        for start in range(0, n, step):
            idx = order[start : start + step] if order is not None else slice(None)
            X, y = data.X_train[idx], data.y_train[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X), y)
            loss.backward()
            opt.step()
            total += loss.item() * X.shape[0]
            seen += X.shape[0]
        if on_epoch_end is not None:
            for key, value in (on_epoch_end(epoch, model) or {}).items():
                log.extra.setdefault(key, []).append(float(value))
        if schedule is not None:
            schedule.step()
        log.loss.append(total / seen)
        log.train_accuracy.append(accuracy(model, data.X_train, data.y_train))
        log.test_accuracy.append(accuracy(model, data.X_test, data.y_test))
    return log
