"""Neur2RO's instance-agnostic, set-based value network (Dumouchelle et al., ICLR 2024, Sec. 5).

One network serves capital-budgeting instances of any size. Each project ``i`` is a set element
described by instance-relative features (this book's normalisation; the official code min-max
scales the raw ``c_i, r_i``):

    u_i(x)  = [x_i,              n c_i / B,  n r_bar_i / sum(r_bar),  Phi_i]   (decision branch)
    v_i(xi) = [1 + Phi_i xi / 2, n c_i / B,  n r_bar_i / sum(r_bar),  Phi_i]   (uncertainty branch)

The first entry of ``v_i`` is project ``i``'s profit factor, as in the official features (which
also carry a cost factor; costs are certain here). The loadings ``Phi_i`` are our addition: with
the official features the decision branch cannot tell which chosen projects a risk factor hurts,
so ``NN`` cannot represent ``sum_i x_i r_i(xi)``; with them it can (``mean_i x_i r_bar_i Phi_i``
is one aggregate). Per branch, a per-item ReLU network
``phi`` embeds every element, the embeddings are averaged over the items (DeepSets), and a
post-aggregation ReLU network ``rho`` maps the average to the branch's embedding:

    e_x = rho_x(mean_i phi_x(u_i(x))),   e_xi = rho_xi(mean_i phi_xi(v_i(xi))),
    NN(x, xi) = sum(r_bar) * head([e_x, e_xi]).

The label is learned in units of the instance's total nominal profit, so instances of
different sizes share one scale (the official code min-max scales labels per size).

For the MILPs, :meth:`SetValueNetwork.lower` turns the network on one instance into a plain
:class:`~lib.robust.value_network.ValueNetwork` (an ``x`` branch, a ``xi`` branch and the head,
all ordinary ReLU MLPs), so the main and adversarial problems of :mod:`lib.robust.ccg` embed it
unchanged. The ``xi`` branch becomes one MLP on ``xi``: the per-item first layers stacked (the
feature ``1 + Phi_i xi / 2`` is affine in ``xi``), and the average folded into ``rho``'s first
layer. The ``x`` branch uses that ``x_i`` is binary: ``phi_x(u_i(x)) = phi_x(u_i(0)) + x_i
(phi_x(u_i(1)) - phi_x(u_i(0)))`` exactly, so the average is affine in ``x`` and the per-item
network needs no binaries at all (this shortcut is our own derivation, not the official code's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.robust.capital_budgeting import CapitalBudgetingInstance, second_stage_value
from lib.robust.training_data import sample_plans, sample_scenarios
from lib.robust.value_network import Layer, ValueNetwork, _mlp
from lib.util.shipped_weights import sha256_file, verify_file

PARTS = ("phi_x", "rho_x", "phi_xi", "rho_xi", "head")


def item_features(inst: CapitalBudgetingInstance) -> np.ndarray:
    """The instance part of every item's features, ``[n c_i / B, n r_bar_i / sum(r_bar),
    Phi_i]`` (shape (n, 2 + kappa)): averages over the items are size-free (the first two
    average to ``sum(c) / B`` and 1)."""
    return np.column_stack([inst.n * inst.cost / inst.budget,
                            inst.n * inst.profit / inst.profit.sum(), inst.loadings])


def profit_factors(inst: CapitalBudgetingInstance, xi: np.ndarray) -> np.ndarray:
    """``1 + Phi_i xi / 2`` for every item, shape (m, n) for ``xi`` of shape (m, kappa)."""
    return 1 + np.atleast_2d(xi) @ inst.loadings.T / 2


@dataclass
class SetValueNetwork:
    """The set-based value network as float64 arrays (ReLU after every layer but the last of
    each part): ``phi_x``, ``phi_xi`` per-item embeddings of ``3 + kappa`` features; ``rho_x``,
    ``rho_xi`` post-aggregation networks; ``head`` on ``[e_x, e_xi]`` with output in units of the
    instance's total nominal profit."""

    phi_x: list[Layer]
    rho_x: list[Layer]
    phi_xi: list[Layer]
    rho_xi: list[Layer]
    head: list[Layer]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in PARTS:
            layers = getattr(self, part)
            if not layers:
                raise ValueError(f"part {part!r} has no layers")
            for (W, b), (W2, _) in zip(layers[:-1], layers[1:]):
                if W2.shape[1] != W.shape[0] or b.shape != (W.shape[0],):
                    raise ValueError(f"part {part!r}: layer shapes do not chain")
        if len(self.phi_x) < 2 or len(self.phi_xi) < 2:
            raise ValueError("the per-item networks need a hidden layer (at least two layers)")
        d = self.phi_x[0][0].shape[1]
        if d < 3 or self.phi_xi[0][0].shape[1] != d:
            raise ValueError("both per-item networks take the same 3 + kappa features")
        dx, dxi = self.rho_x[-1][0].shape[0], self.rho_xi[-1][0].shape[0]
        if self.head[0][0].shape[1] != dx + dxi or self.head[-1][0].shape[0] != 1:
            raise ValueError(f"the head must map {dx + dxi} embedding entries to 1 output")

    def _embed(self, phi: list[Layer], rho: list[Layer], first: np.ndarray,
               inst: CapitalBudgetingInstance) -> np.ndarray:
        feats = item_features(inst)  # (n, 2)
        m = len(first)
        U = np.concatenate([first[:, :, None], np.broadcast_to(feats, (m, *feats.shape))], 2)
        E = _mlp(phi, U.reshape(m * inst.n, -1)).reshape(m, inst.n, -1)
        return _mlp(rho, E.mean(1))

    def forward(self, inst: CapitalBudgetingInstance, x: np.ndarray, xi: np.ndarray
                ) -> np.ndarray:
        """``NN(x, xi)`` on ``inst`` for rows of ``x`` and ``xi`` (one of them may be one row)."""
        x, xi = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(xi, float))
        if x.shape[1] != inst.n or xi.shape[1] != inst.kappa:
            raise ValueError(f"x needs {inst.n} and xi {inst.kappa} columns, got {x.shape[1]} "
                             f"and {xi.shape[1]}")
        if self.phi_x[0][0].shape[1] != 3 + inst.kappa:
            raise ValueError(f"the network takes {self.phi_x[0][0].shape[1] - 3} risk factors, "
                             f"the instance has {inst.kappa}")
        ex = self._embed(self.phi_x, self.rho_x, x, inst)
        exi = self._embed(self.phi_xi, self.rho_xi, profit_factors(inst, xi), inst)
        if len(ex) == 1:
            ex = np.repeat(ex, len(exi), 0)
        if len(exi) == 1:
            exi = np.repeat(exi, len(ex), 0)
        return inst.profit.sum() * _mlp(self.head, np.hstack([ex, exi]))[:, 0]

    def lower(self, inst: CapitalBudgetingInstance) -> ValueNetwork:
        """The network on ``inst`` as a plain two-branch :class:`ValueNetwork` whose forward
        pass equals :meth:`forward` at every binary ``x`` (see the module docstring)."""
        n, feats = inst.n, item_features(inst)
        # x branch: the average of phi_x is affine in binary x
        e0 = _mlp(self.phi_x, np.column_stack([np.zeros(n), feats]))
        e1 = _mlp(self.phi_x, np.column_stack([np.ones(n), feats]))
        (R1, r1), rest = self.rho_x[0], self.rho_x[1:]
        x_branch = [(R1 @ (e1 - e0).T / n, R1 @ e0.mean(0) + r1), *rest]
        # xi branch: per-item first layers stacked, the average folded into rho_xi's first layer
        (W1, b1), middle = self.phi_xi[0], self.phi_xi[1:]
        layers = [(np.vstack([np.outer(W1[:, 0], inst.loadings[i] / 2) for i in range(n)]),
                   np.concatenate([W1[:, 0] + W1[:, 1:] @ feats[i] + b1 for i in range(n)]))]
        for W, b in middle[:-1]:  # block-diagonal copies of the per-item hidden layers
            layers.append((np.kron(np.eye(n), W), np.tile(b, n)))
        Wl, bl = middle[-1]  # phi_xi's last (linear) layer and the mean, folded into rho_xi
        mean = np.hstack([Wl / n] * n)
        (P1, p1), prest = self.rho_xi[0], self.rho_xi[1:]
        layers.append((P1 @ mean, P1 @ bl + p1))
        xi_branch = [*layers, *prest]
        # head: output rescaled to objective units
        s = inst.profit.sum()
        head = [*self.head[:-1], (self.head[-1][0] * s, self.head[-1][1] * s)]
        return ValueNetwork(x_branch, xi_branch, head)

    # -- storage: safetensors with a SHA-256 manifest ---------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        out = {}
        for part in PARTS:
            for i, (W, b) in enumerate(getattr(self, part)):
                out[f"{part}.{i}.weight"] = np.ascontiguousarray(W)
                out[f"{part}.{i}.bias"] = np.ascontiguousarray(b)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], meta: dict | None = None
                     ) -> SetValueNetwork:
        parts = {}
        for part in PARTS:
            layers, i = [], 0
            while f"{part}.{i}.weight" in tensors:
                layers.append((np.asarray(tensors[f"{part}.{i}.weight"], float),
                               np.asarray(tensors[f"{part}.{i}.bias"], float)))
                i += 1
            parts[part] = layers
        return cls(**parts, meta=dict(meta or {}))


def save(net: SetValueNetwork, folder: Path, name: str = "set_value_network") -> Path:
    """Write ``<name>.safetensors`` and ``manifest.json`` (its SHA-256 and ``net.meta``)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(net.tensors(), str(path))
    manifest = {"sha256": {path.name: sha256_file(path)}, "training": net.meta}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load(folder: Path, name: str = "set_value_network") -> SetValueNetwork:
    """Read the shipped network after checking its SHA-256 against ``manifest.json`` (only
    JSON and safetensors are read: loading cannot execute code)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path} is missing; train with `make neur2ro-weights`")
    manifest = json.loads(manifest_path.read_text())
    path = folder / f"{name}.safetensors"
    verify_file(path, manifest.get("sha256", {}).get(path.name))
    return SetValueNetwork.from_tensors(load_file(str(path)), manifest.get("training", {}))


# -- data and training -------------------------------------------------------------------------


@dataclass
class SetDataset:
    """Labelled samples from many instances: per sample the instance index, plan and scenario,
    and the label ``V(x, xi) / sum(r_bar)``."""

    instances: list[CapitalBudgetingInstance]
    index: np.ndarray
    X: list[np.ndarray]
    XI: np.ndarray
    labels: np.ndarray


def make_set_dataset(instances: list[CapitalBudgetingInstance], n_plans: int, n_scenarios: int,
                     rng: np.random.Generator) -> SetDataset:
    """For every instance, ``n_plans`` sampled plans with ``n_scenarios`` box scenarios each,
    labelled with the exact ``V`` (the paper's data generation across instances, Sec. 5)."""
    if not instances or n_plans < 1 or n_scenarios < 1:
        raise ValueError("need at least one instance, one plan and one scenario")
    kappas = {inst.kappa for inst in instances}
    if len(kappas) != 1:
        raise ValueError(f"all instances need the same number of risk factors, got {kappas}")
    index, X, XI, labels = [], [], [], []
    for k, inst in enumerate(instances):
        for x in sample_plans(inst, n_plans, rng):
            xi = sample_scenarios(inst.kappa, n_scenarios, rng)
            index += [k] * n_scenarios
            X += [x] * n_scenarios
            XI.append(xi)
            labels.append(second_stage_value(inst, x, xi) / inst.profit.sum())
    return SetDataset(list(instances), np.array(index), X, np.vstack(XI), np.concatenate(labels))


@dataclass
class SetTrainingReport:
    seconds: float
    train_mae: float  # in units of the total nominal profit
    losses: list[float] = field(default_factory=list)


def train_set_value_network(data: SetDataset, *, item_hidden: int = 16, item_embed: int = 8,
                            post_hidden: int = 16, embed: int = 4, head_hidden: int = 8,
                            epochs: int = 200, batch_size: int = 256, lr: float = 3e-3,
                            seed: int = 0) -> tuple[SetValueNetwork, SetTrainingReport]:
    """Fit the set-based network by mean squared error on labels in units of the total
    nominal profit (Adam, torch, CPU); items are padded to the largest instance and masked in
    the average. Architecture as the official ``SetEncoder``: per-item ``phi`` with one hidden
    layer, mean aggregation, ``rho`` with one hidden layer, head with one hidden layer."""
    import torch

    from lib.nn.mlp import mlp

    if len(data.labels) < 10:
        raise ValueError("need at least 10 samples")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    nmax = max(inst.n for inst in data.instances)
    m = len(data.labels)
    d = 3 + data.instances[0].kappa
    U = np.zeros((m, nmax, d))
    V = np.zeros((m, nmax, d))
    mask = np.zeros((m, nmax))
    for s in range(m):
        inst = data.instances[data.index[s]]
        n, feats = inst.n, item_features(inst)
        U[s, :n, 0] = data.X[s]
        V[s, :n, 0] = profit_factors(inst, data.XI[s])[0]
        U[s, :n, 1:] = V[s, :n, 1:] = feats
        mask[s, :n] = 1.0

    nets = {"phi_x": mlp([d, item_hidden, item_embed]),
            "rho_x": mlp([item_embed, post_hidden, embed]),
            "phi_xi": mlp([d, item_hidden, item_embed]),
            "rho_xi": mlp([item_embed, post_hidden, embed]),
            "head": mlp([2 * embed, head_hidden, 1])}
    params = [p for net in nets.values() for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    tU, tV = torch.tensor(U, dtype=torch.float32), torch.tensor(V, dtype=torch.float32)
    tm = torch.tensor(mask, dtype=torch.float32)
    ty = torch.tensor(data.labels, dtype=torch.float32)

    def predict(idx: torch.Tensor) -> torch.Tensor:
        w = tm[idx, :, None] / tm[idx].sum(1)[:, None, None]
        ex = nets["rho_x"]((nets["phi_x"](tU[idx]) * w).sum(1))
        exi = nets["rho_xi"]((nets["phi_xi"](tV[idx]) * w).sum(1))
        return nets["head"](torch.cat([ex, exi], 1))[:, 0]

    losses = []
    for _ in range(epochs):
        order = torch.randperm(m, generator=gen)
        total = 0.0
        for s in range(0, m, batch_size):
            idx = order[s:s + batch_size]
            loss = torch.mean((predict(idx) - ty[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / m)

    def export(seq: torch.nn.Sequential) -> list[Layer]:
        return [(mod.weight.detach().double().numpy().copy(),
                 mod.bias.detach().double().numpy().copy())
                for mod in seq if isinstance(mod, torch.nn.Linear)]

    net = SetValueNetwork(**{k: export(v) for k, v in nets.items()})
    with torch.no_grad():
        pred = predict(torch.arange(m)).double().numpy()
    report = SetTrainingReport(time.perf_counter() - start,
                               float(np.abs(pred - data.labels).mean()), losses)
    return net, report
