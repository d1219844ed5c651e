"""ReLU networks as numpy arrays, and bounds on their pre-activations over an l_inf box.

A :class:`ReluNet` is ``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` with one output (for a
classifier, fold the logit difference into the last layer). Two ways to bound every hidden
pre-activation ``z_i`` over ``B = {x : ||x - x0||_inf <= eps}``:

* :func:`interval_preactivation_bounds`, interval arithmetic (IBP);
* :func:`crown_preactivation_bounds`, linear bound propagation (CROWN, Zhang et al. 2018), the
  forward-graph step of Shi et al. (2022). It accepts neuron splits, the constraints
  ``z_ij >= 0`` or ``z_ij <= 0`` that branch and bound adds.

Both return a :class:`PreactivationBounds`; the sign pattern of the bounds (active, inactive,
unstable) is all the backward graph of the Lipschitz bound needs from the forward graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: A neuron split: ``{(layer, neuron): +1 or -1}``, +1 meaning ``z >= 0``, -1 meaning ``z <= 0``.
#: Layers are numbered from 0 (the first hidden layer).
Splits = Mapping[tuple[int, int], int]


@dataclass(frozen=True)
class ReluNet:
    """A fully connected ReLU network with a scalar output, in float64.

    ``weights[i]`` has shape ``(n_{i+1}, n_i)``; the last weight has one row.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.weights) < 2 or len(self.weights) != len(self.biases):
            raise ValueError(
                "a ReluNet needs at least two layers and one bias per weight, got "
                f"{len(self.weights)} weights and {len(self.biases)} biases"
            )
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: weight {w.shape} and bias {b.shape} do not match")
            if i and w.shape[1] != self.weights[i - 1].shape[0]:
                raise ValueError(
                    f"layer {i} expects {w.shape[1]} inputs but layer {i - 1} has "
                    f"{self.weights[i - 1].shape[0]} outputs"
                )
        if self.weights[-1].shape[0] != 1:
            raise ValueError(
                f"the last layer must have one output (got {self.weights[-1].shape[0]}); "
                "fold a logit difference into it"
            )

    @classmethod
    def from_arrays(cls, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> ReluNet:
        return cls(
            tuple(np.asarray(w, dtype=np.float64) for w in weights),
            tuple(np.asarray(b, dtype=np.float64).reshape(-1) for b in biases),
        )

    @classmethod
    def from_torch(cls, model, output_row: np.ndarray | None = None) -> ReluNet:
        """Read the ``nn.Linear`` layers of a ``Sequential`` of Linear and ReLU layers.

        ``output_row`` (length = number of outputs) folds a combination of outputs into the
        last layer, e.g. ``[1, -1]`` for the logit difference of a two-class network.
        """
        import torch

        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        weights = [m.weight.detach().cpu().double().numpy() for m in linears]
        biases = [m.bias.detach().cpu().double().numpy() for m in linears]
        if output_row is not None:
            row = np.asarray(output_row, dtype=np.float64).reshape(1, -1)
            if row.shape[1] != weights[-1].shape[0]:
                raise ValueError(
                    f"output_row has {row.shape[1]} entries, the network {weights[-1].shape[0]} "
                    "outputs"
                )
            weights[-1], biases[-1] = row @ weights[-1], row @ biases[-1]
        return cls.from_arrays(weights, biases)

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def hidden_sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    def preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """Hidden pre-activations ``z_1 ... z_{L-1}`` for a batch ``x`` of shape ``(n, d)``."""
        a, zs = np.atleast_2d(x), []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            z = a @ w.T + b
            zs.append(z)
            a = np.maximum(z, 0.0)
        return zs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = self.preactivations(x)[-1]
        return (np.maximum(z, 0.0) @ self.weights[-1].T + self.biases[-1])[:, 0]

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """Input gradients ``J(x) = W_L D_{L-1} W_{L-1} ... D_1 W_1`` for a batch, ``(n, d)``.

        ``D_i = diag(1[z_i > 0])``; at ``z = 0`` (measure zero) this picks the element 0 of
        the Clarke gradient ``[0, 1]``.
        """
        zs = self.preactivations(x)
        g = np.broadcast_to(self.weights[-1][0], (zs[0].shape[0], self.weights[-1].shape[1]))
        for w, z in zip(self.weights[-2::-1], zs[::-1]):
            g = (g * (z > 0)) @ w
        return g


@dataclass
class PreactivationBounds:
    """Elementwise bounds ``lower[i] <= z_i(x) <= upper[i]`` over the box, per hidden layer."""

    lower: list[np.ndarray]
    upper: list[np.ndarray]

    @property
    def infeasible(self) -> bool:
        """True when some split made a bound interval empty (the branch holds no input)."""
        return any(bool(np.any(lo > up)) for lo, up in zip(self.lower, self.upper))

    def status(self, layer: int) -> np.ndarray:
        """+1 active (``l >= 0``), -1 inactive (``u <= 0``), 0 unstable, per neuron."""
        lo, up = self.lower[layer], self.upper[layer]
        return np.where(lo >= 0, 1, np.where(up <= 0, -1, 0))

    def n_unstable(self) -> int:
        return int(sum(np.sum(self.status(i) == 0) for i in range(len(self.lower))))


def _check_box(net: ReluNet, x0: np.ndarray, eps: float) -> np.ndarray:
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    if x0.shape[0] != net.input_dim:
        raise ValueError(f"x0 has {x0.shape[0]} entries, the network expects {net.input_dim}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps, the l_inf radius of the input box, must be >= 0, got {eps}")
    return x0


def _apply_splits(lo: np.ndarray, up: np.ndarray, layer: int, splits: Splits | None) -> None:
    for (i, j), sign in (splits or {}).items():
        if i != layer:
            continue
        if sign == 1:
            lo[j] = max(lo[j], 0.0)
        elif sign == -1:
            up[j] = min(up[j], 0.0)
        else:
            raise ValueError(f"a split sign must be +1 or -1, got {sign} for neuron {(i, j)}")


def _validate_splits(net: ReluNet, splits: Splits | None) -> None:
    sizes = net.hidden_sizes
    for i, j in splits or {}:
        if not (0 <= i < len(sizes) and 0 <= j < sizes[i]):
            raise ValueError(f"split {(i, j)} names no hidden neuron (hidden sizes {sizes})")


def interval_preactivation_bounds(
    net: ReluNet, x0: np.ndarray, eps: float, splits: Splits | None = None
) -> PreactivationBounds:
    """Interval bound propagation (IBP) of the box through the hidden layers."""
    x0 = _check_box(net, x0, eps)
    _validate_splits(net, splits)
    lo_a, up_a = x0 - eps, x0 + eps
    lower, upper = [], []
    for i, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1])):
        mid, rad = (lo_a + up_a) / 2, (up_a - lo_a) / 2
        lo, up = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        _apply_splits(lo, up, i, splits)
        lower.append(lo)
        upper.append(up)
        lo_a, up_a = np.maximum(lo, 0.0), np.maximum(up, 0.0)
    return PreactivationBounds(lower, upper)


def _relu_relaxation(lo: np.ndarray, up: np.ndarray):
    """CROWN's relaxation ``alpha z <= relu(z) <= s z + t`` per neuron (adaptive lower slope)."""
    active, inactive = lo >= 0, up <= 0
    unstable = ~(active | inactive)
    denom = np.where(unstable, up - lo, 1.0)
    s = np.where(active, 1.0, np.where(unstable, up / denom, 0.0))
    t = np.where(unstable, -up * lo / denom, 0.0)
    alpha = np.where(active, 1.0, np.where(unstable, (up > -lo).astype(float), 0.0))
    return alpha, s, t


def crown_preactivation_bounds(
    net: ReluNet, x0: np.ndarray, eps: float, splits: Splits | None = None
) -> PreactivationBounds:
    """Linear bound propagation (CROWN) for every hidden pre-activation, intersected with IBP.

    For layer k, ``z_k = W_k a_{k-1} + b_k`` is substituted backwards through the ReLU
    relaxations of the earlier layers down to the input, where the linear function is bounded
    in closed form over the box: ``Lambda x0 +- eps ||Lambda||_1`` per row. A split neuron
    (``z >= 0`` or ``z <= 0``) has its interval clipped, which makes its ReLU exactly linear
    in every later relaxation (the forward-graph branching of Shi et al. 2022).
    """
    x0 = _check_box(net, x0, eps)
    ibp = interval_preactivation_bounds(net, x0, eps, splits)
    lower, upper, relax = [], [], []
    for k, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1])):
        lam_l, lam_u = w.copy(), w.copy()
        c_l, c_u = b.copy(), b.copy()
        for i in range(k - 1, -1, -1):
            alpha, s, t = relax[i]
            # lower bound: positive coefficients take relu's lower relaxation, negative its upper
            pos, neg = np.maximum(lam_l, 0), np.minimum(lam_l, 0)
            c_l = c_l + neg @ t
            lam_l = pos * alpha + neg * s
            pos, neg = np.maximum(lam_u, 0), np.minimum(lam_u, 0)
            c_u = c_u + pos @ t
            lam_u = pos * s + neg * alpha
            wi, bi = net.weights[i], net.biases[i]
            c_l, c_u = c_l + lam_l @ bi, c_u + lam_u @ bi
            lam_l, lam_u = lam_l @ wi, lam_u @ wi
        lo = lam_l @ x0 + c_l - eps * np.abs(lam_l).sum(axis=1)
        up = lam_u @ x0 + c_u + eps * np.abs(lam_u).sum(axis=1)
        lo, up = np.maximum(lo, ibp.lower[k]), np.minimum(up, ibp.upper[k])
        _apply_splits(lo, up, k, splits)
        lower.append(lo)
        upper.append(up)
        relax.append(_relu_relaxation(lo, np.maximum(up, lo)))
    return PreactivationBounds(lower, upper)
