"""Numeric constants of a stability bound for SPE, from the weights of its networks.

Huang et al. (ICLR 2024), Section 3, bound the change of SPE by Lipschitz constants of phi and
rho and the eigengap gamma = lambda_{d+1} - lambda_d at the cut. Their constants are not stated
numerically; this module computes the constants of our own version of the bound, derived for
the SPE of :mod:`lib.graphs.positional_encodings` (phi one MLP R -> R^m applied to each
eigenvalue; rho an entrywise MLP summed over the second node, or a GIN with the graph fixed):

* W_l = V diag(h_l(lambda)) V^T equals g_l(L) for the spectral function g_l = h_l * r, with r a
  ramp from 1 at lambda_d + delta down to 0 at lambda_{d+1} - delta. By Weyl's inequality this
  g_l also produces W_l(L') whenever delta >= ||L - L'||_2 (we use the Frobenius norm, which is
  larger), and a K-Lipschitz function of a symmetric matrix is K-Lipschitz in the Frobenius
  norm, so ||W_l(L) - W_l(L')||_F <= (K_l + M_l / (gamma - 2 delta)) ||L - L'||_F, with K_l
  the Lipschitz constant of the channel h_l and M_l its largest |value| on the spectrum.
  When the window holds every eigenpair there is no cut and the M_l term is absent.
* rho is J-Lipschitz from the stacked W (Frobenius) to the node encodings (Frobenius).

Hence ||SPE(L) - SPE(L')||_F <= J sqrt(sum_l (K_l + M_l/(gamma - 2 delta))^2) ||L - L'||_F,
a Lipschitz form of the paper's C2 + C3/gamma term (no Hölder term is needed for elementwise
phi). The derivation is ours, not the paper's; every constant here is an upper bound computed
from the weights (activations tanh or ReLU, both 1-Lipschitz).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

_ONE_LIPSCHITZ = (nn.Tanh, nn.ReLU)


def _linears(seq: nn.Module) -> list[nn.Linear]:
    if not isinstance(seq, nn.Sequential):
        raise ValueError(f"need an nn.Sequential MLP, got {type(seq).__name__}")
    layers = []
    for module in seq:
        if isinstance(module, nn.Linear):
            layers.append(module)
        elif not isinstance(module, _ONE_LIPSCHITZ):
            raise ValueError(f"only Linear, Tanh and ReLU layers are supported, got {module}")
    if not layers:
        raise ValueError("the MLP has no linear layer")
    return layers


def mlp_lipschitz(seq: nn.Module) -> float:
    """Upper bound on the Lipschitz constant (Euclidean norms) of an MLP: the product of the
    spectral norms of its weight matrices (1-Lipschitz activations in between)."""
    out = 1.0
    for layer in _linears(seq):
        out *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    return out


def phi_channel_constants(phi: nn.Module, lo: float, hi: float,
                          grid: int = 4001) -> tuple[np.ndarray, np.ndarray]:
    """(K_l, M_l) for each output channel of a one-hidden-layer MLP h: R -> R^m on [lo, hi].

    K_l = sum_k |W2[l, k]| |W1[k]| bounds the Lipschitz constant of channel l (tighter than
    the spectral product); M_l = max |h_l| on a grid of [lo, hi] plus K_l * spacing / 2 bounds
    the largest |h_l(x)| on the interval.
    """
    layers = _linears(phi)
    if len(layers) != 2 or layers[0].in_features != 1:
        raise ValueError("phi must be a one-hidden-layer MLP from R (Linear(1, h), act, Linear)")
    if not hi > lo or grid < 2:
        raise ValueError(f"need lo < hi and grid >= 2, got lo={lo}, hi={hi}, grid={grid}")
    w1 = layers[0].weight.detach().double()[:, 0].abs()
    w2 = layers[1].weight.detach().double().abs()
    K = (w2 @ w1).numpy()
    xs = torch.linspace(lo, hi, grid, dtype=torch.float64)[:, None]
    with torch.no_grad():
        values = copy.deepcopy(phi).double()(xs).abs().max(dim=0).values.numpy()
    M = values + K * (hi - lo) / (grid - 1) / 2
    return K, M


def spe_rho_lipschitz(spe: nn.Module, n: int, A: np.ndarray | None = None) -> float:
    """J for the rho of an SPE from lib.graphs.positional_encodings on n-node graphs.

    rho="mlp": an MLP psi on each entry W[i, j, :], summed over j: J = sqrt(n) Lip(psi)
    (Cauchy-Schwarz over the n terms of each sum). rho="gin": with the adjacency A held fixed,
    each layer H -> MLP(H + A H) is Lip(MLP) ||I + A||_2 Lipschitz, so
    J = sqrt(n) prod_layers (Lip(MLP) ||I + A||_2) ||W_out||_2.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    kind = getattr(spe, "rho_kind", None)
    if kind == "mlp":
        return float(np.sqrt(n) * mlp_lipschitz(spe.rho[0]))
    if kind == "gin":
        if A is None:
            raise ValueError("rho='gin' needs the adjacency A")
        A = np.asarray(A, dtype=float)
        if A.shape != (n, n):
            raise ValueError(f"A must be ({n}, {n}), got {A.shape}")
        step = float(np.linalg.norm(np.eye(n) + A, 2))
        J = np.sqrt(n) * float(torch.linalg.matrix_norm(spe.rho_out.weight.detach().double(), 2))
        for layer in spe.rho:
            J *= mlp_lipschitz(layer) * step
        return float(J)
    raise ValueError("need an SPE module (with rho_kind 'mlp' or 'gin')")


def spe_stability_constant(K: np.ndarray, M: np.ndarray, J: float, gap: float,
                           delta: float) -> float:
    """C with ||SPE(L) - SPE(L')||_F <= C ||L - L'||_F whenever ||L - L'||_F <= delta.

    C = J sqrt(sum_l (K_l + M_l / (gap - 2 delta))^2); ``gap = inf`` (all eigenpairs used, no
    cut) drops the M term. Returns inf when gap <= 2 delta: the bound says nothing there.
    """
    K = np.asarray(K, dtype=float)
    M = np.asarray(M, dtype=float)
    if K.shape != M.shape or K.ndim != 1 or np.any(K < 0) or np.any(M < 0):
        raise ValueError("K and M must be non-negative vectors of the same length")
    if J < 0 or delta < 0 or not gap >= 0:
        raise ValueError(f"J, delta and gap must be non-negative, got {J}, {delta}, {gap}")
    if np.isinf(gap):
        return float(J * np.linalg.norm(K))
    if gap <= 2 * delta:
        return float("inf")
    return float(J * np.linalg.norm(K + M / (gap - 2 * delta)))
