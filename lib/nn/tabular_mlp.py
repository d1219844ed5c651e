"""Small seeded ReLU classifiers for tabular data, and families of retrained copies.

A binary classifier here is an ``nn.Sequential`` ReLU network that outputs one *logit* per row;
its probability is ``sigmoid(logit)``. :func:`train_binary_mlp` trains one full-batch with Adam
in float64, fully determined by its ``seed`` (initialisation) and by the rows it is given.
:func:`retrain_family` builds the "naturally-occurring model changes" of robust-counterfactual
work: copies of the same architecture retrained with new initialisation seeds on the full
training set, or on a random fraction of it (a data perturbation), never the base model itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lib.nn.mlp import mlp

DTYPE = torch.float64


def make_mlp(n_features: int, hidden: Sequence[int] = (32, 32), seed: int = 0) -> nn.Sequential:
    """A ``n_features - hidden... - 1`` ReLU network in float64, initialised from ``seed``."""
    if n_features < 1:
        raise ValueError(f"n_features must be positive, got {n_features}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {tuple(hidden)}")
    gen = torch.Generator().manual_seed(int(seed))
    net = mlp([n_features, *hidden, 1]).to(DTYPE)
    with torch.no_grad():  # PyTorch's default (Kaiming-uniform) ranges, from our own generator
        for layer in net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    return net


def train_binary_mlp(
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    hidden: Sequence[int] = (32, 32),
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> nn.Sequential:
    """Train a binary ReLU classifier (logit output) full-batch with Adam on ``(X, y)``.

    ``y`` holds 0/1 labels; the loss is binary cross-entropy on the logits. Returns the network
    in evaluation mode with gradients of its parameters switched off (it is only queried).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise ValueError("y must hold 0/1 labels of both classes")
    if epochs < 1 or lr <= 0:
        raise ValueError(f"epochs must be >= 1 and lr > 0, got {epochs} and {lr}")
    net = make_mlp(X.shape[1], hidden, seed)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y.astype(np.float64))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(net(Xt).squeeze(-1), yt)
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def retrain_family(
    X: np.ndarray,
    y: np.ndarray,
    *,
    seeds: Sequence[int],
    keep_fraction: float | None = None,
    **train_kwargs,
) -> list[nn.Sequential]:
    """Retrain the architecture once per seed: the model changes a counterfactual must survive.

    With ``keep_fraction=None`` every copy sees the full training set and differs only by its
    initialisation seed; with ``keep_fraction`` in (0, 1) each copy is also trained on its own
    random subset of that fraction of the rows (drawn from the same seed), a data perturbation.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must name at least one retraining")
    if keep_fraction is not None and not 0.0 < keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1) or be None, got {keep_fraction}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    models = []
    for seed in seeds:
        if keep_fraction is None:
            rows = np.arange(len(y))
        else:
            rng = np.random.default_rng([int(seed), 7919])
            rows = rng.choice(len(y), size=int(round(keep_fraction * len(y))), replace=False)
        models.append(train_binary_mlp(X[rows], y[rows], seed=int(seed), **train_kwargs))
    return models


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """``sigmoid(model(X))`` as a float64 numpy vector, one probability of class 1 per row."""
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    if Xt.ndim != 2:
        raise ValueError(f"X must be (n, d), got shape {tuple(Xt.shape)}")
    return torch.sigmoid(model(Xt).squeeze(-1)).numpy()
