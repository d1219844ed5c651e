"""The value network ``NN(x, xi) ~ V(x, xi)`` of Neur2RO: separate ``x`` and ``xi`` embedding
branches joined by a small ReLU head (Sec. 5 of the ICLR paper), as float64 arrays that the
MILPs encode, and its training in torch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

Layer = tuple[np.ndarray, np.ndarray]  # (W, b) with W of shape (out, in)


@dataclass
class ValueNetwork:
    """The value network ``NN(x, xi)`` as float64 arrays (what the MILPs encode).

    ``x_branch`` and ``xi_branch`` are ReLU MLPs (ReLU after every layer but the last) mapping
    ``x`` and ``xi`` to embeddings; ``head`` is a ReLU MLP on their concatenation ``[e_x, e_xi]``
    whose last layer has the label scaling folded in, so ``forward`` returns objective units.
    """

    x_branch: list[Layer]
    xi_branch: list[Layer]
    head: list[Layer]

    @property
    def embed_dim(self) -> tuple[int, int]:
        return self.x_branch[-1][0].shape[0], self.xi_branch[-1][0].shape[0]

    def embed_x(self, x: np.ndarray) -> np.ndarray:
        return _mlp(self.x_branch, np.atleast_2d(np.asarray(x, dtype=float)))

    def embed_xi(self, xi: np.ndarray) -> np.ndarray:
        return _mlp(self.xi_branch, np.atleast_2d(np.asarray(xi, dtype=float)))

    def forward(self, x: np.ndarray, xi: np.ndarray) -> np.ndarray:
        """``NN(x, xi)`` for rows of ``x`` and ``xi`` (broadcast if one of them is one row)."""
        ex, exi = self.embed_x(x), self.embed_xi(xi)
        if len(ex) == 1 and len(exi) > 1:
            ex = np.repeat(ex, len(exi), 0)
        if len(exi) == 1 and len(ex) > 1:
            exi = np.repeat(exi, len(ex), 0)
        return _mlp(self.head, np.hstack([ex, exi]))[:, 0]


def _mlp(layers: list[Layer], z: np.ndarray) -> np.ndarray:
    for i, (W, b) in enumerate(layers):
        z = z @ W.T + b
        if i < len(layers) - 1:
            z = np.maximum(z, 0)
    return z


def random_value_network(n: int, kappa: int, rng: np.random.Generator, hidden: int = 8,
                         embed: int = 4) -> ValueNetwork:
    """An untrained network with Gaussian weights (for testing the MILP encodings)."""
    def mlp(sizes: list[int]) -> list[Layer]:
        return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
                for i, o in zip(sizes[:-1], sizes[1:])]
    return ValueNetwork(mlp([n, hidden, embed]), mlp([kappa, hidden, embed]),
                        mlp([2 * embed, hidden, 1]))


@dataclass
class TrainingReport:
    seconds: float
    train_mae: float
    test_mae: float
    test_rel_error: float
    losses: list[float] = field(default_factory=list)


def train_value_network(X: np.ndarray, XI: np.ndarray, labels: np.ndarray, *,
                        hidden: tuple[int, int, int] = (16, 16, 16), embed: int = 8,
                        epochs: int = 300, batch_size: int = 256,
                        lr: float = 3e-3, test_fraction: float = 0.2, seed: int = 0
                        ) -> tuple[ValueNetwork, TrainingReport]:
    """Fit ``NN(x, xi) ~ V(x, xi)`` by mean squared error (Adam, torch, CPU).

    The architecture follows the paper's decomposition (Sec. 5): separate ``x`` and ``xi``
    embedding networks joined by a ReLU head, so that in the main problem each scenario's
    ``xi`` embedding is a constant and in the adversarial problem the plan's embedding is. It
    is a per-instance MLP, not the paper's instance-agnostic set-based network.
    """
    import torch

    from lib.nn.mlp import mlp

    X, XI, labels = (np.asarray(a, dtype=float) for a in (X, XI, labels))
    if not (len(X) == len(XI) == len(labels)) or len(X) < 10:
        raise ValueError("X, XI and labels need the same length (at least 10 samples)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=gen).numpy()
    n_test = max(1, int(test_fraction * len(X)))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = float(labels[train].mean()), float(labels[train].std() + 1e-12)

    torch.manual_seed(seed)

    hx, hxi, hh = hidden
    fx = mlp([X.shape[1], *([hx] if hx else []), embed])
    fxi = mlp([XI.shape[1], *([hxi] if hxi else []), embed])
    head = mlp([2 * embed, hh, 1])
    params = [*fx.parameters(), *fxi.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    tx = torch.tensor(X, dtype=torch.float32)
    txi = torch.tensor(XI, dtype=torch.float32)
    ty = torch.tensor((labels - mean) / std, dtype=torch.float32)

    def predict(idx: np.ndarray) -> torch.Tensor:
        return head(torch.cat([fx(tx[idx]), fxi(txi[idx])], 1))[:, 0]

    losses = []
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            loss = torch.mean((predict(idx) - ty[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / len(order))

    def export(seq: torch.nn.Sequential, scale: float = 1.0, shift: float = 0.0) -> list[Layer]:
        lins = [m for m in seq if isinstance(m, torch.nn.Linear)]
        out = [(m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
               for m in lins]
        W, b = out[-1]
        out[-1] = (W * scale, b * scale + shift)
        return out

    net = ValueNetwork(export(fx), export(fxi), export(head, std, mean))
    pred = net.forward(X, XI)
    err = np.abs(pred - labels)
    report = TrainingReport(time.perf_counter() - start, float(err[train].mean()),
                            float(err[test].mean()),
                            float((err[test] / np.abs(labels[test])).mean()), losses)
    return net, report
