"""Laplacian positional encodings for graphs: raw eigenvectors, a sign-invariant network, and SPE.

Huang, Lu, Robinson, Yang, Zhang, Jegelka and Li, "On the Stability of Expressive Positional
Encodings for Graph Neural Networks" (ICLR 2024, arXiv:2310.02579). With the Laplacian
L = V diag(lambda) V^T restricted to its d smallest eigenpairs, SPE (Section 3) is

    SPE(V, lambda) = rho( V diag(phi_1(lambda)) V^T, ..., V diag(phi_m(lambda)) V^T ),

phi_l permutation equivariant maps of the eigenvalues and rho a permutation-equivariant network
on the n x n x m tensor. Eigenvectors enter only through these eigenvalue-weighted ("soft")
projections, so any orthonormal basis of a repeated eigenspace gives the same output (basis
invariance), and the output moves continuously with L as long as phi and rho are Lipschitz and
lambda_{d+1} > lambda_d (the stability theorem of Section 3). The baselines are the raw
eigenvectors (LapPE), a SignNet-style network phi(v) + phi(-v) (Lim et al., 2023), which is
invariant to sign flips but not to rotations inside an eigenspace, and a BasisNet-style network
on eigenspace projectors (Lim et al., 2023), which is basis invariant but partitions the
spectrum into eigenspaces by hard rounding.

Everything is dense: the graphs here have tens of nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import nn

from lib.nn.mlp import mlp

# ---------------------------------------------------------------------------------------------
# Laplacians and their eigenpairs (numpy, float64)
# ---------------------------------------------------------------------------------------------


def check_adjacency(A: np.ndarray) -> np.ndarray:
    """Return A as a float64 array after checking it is a weighted adjacency matrix.

    Raises ValueError unless A is a finite, square, symmetric matrix with non-negative weights.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"an adjacency matrix must be square, got shape {A.shape}")
    if A.shape[0] < 2:
        raise ValueError(f"a graph needs at least 2 nodes, got {A.shape[0]}")
    if not np.all(np.isfinite(A)):
        raise ValueError("the adjacency matrix has NaN or infinite entries")
    if not np.allclose(A, A.T, atol=1e-12, rtol=0):
        raise ValueError("the adjacency matrix must be symmetric (an undirected graph)")
    if np.any(A < 0):
        raise ValueError("edge weights must be non-negative")
    return A


def laplacian(A: np.ndarray, normalized: bool = False) -> np.ndarray:
    """The combinatorial Laplacian D - A, or with ``normalized`` I - D^{-1/2} A D^{-1/2}.

    Isolated nodes get a zero row in the normalized Laplacian's adjacency part (D^{-1/2} = 0
    there), the usual convention.
    """
    A = check_adjacency(A)
    deg = A.sum(axis=1)
    if not normalized:
        return np.diag(deg) - A
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return np.eye(len(A)) - inv_sqrt[:, None] * A * inv_sqrt[None, :]


def laplacian_eigs(
    A: np.ndarray, d: int, normalized: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The d smallest eigenvalues (ascending, shape (d,)) and eigenvectors (shape (n, d)) of L.

    Inside a repeated eigenvalue the eigenvectors are an arbitrary orthonormal basis chosen by
    LAPACK: this is the non-uniqueness the paper starts from (Section 1).
    """
    L = laplacian(A, normalized)
    n = L.shape[0]
    if not (1 <= int(d) <= n) or int(d) != d:
        raise ValueError(f"d, the number of eigenpairs, must be an integer in [1, {n}], got {d}")
    lam, V = np.linalg.eigh(L)
    return lam[: int(d)], V[:, : int(d)]


def canonical_signs(V: np.ndarray) -> np.ndarray:
    """Flip each column so that its entry of largest magnitude is positive (a sign convention).

    This removes the sign ambiguity of simple eigenvectors when that entry is unique; it cannot
    remove the rotation ambiguity of a repeated eigenvalue.
    """
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2:
        raise ValueError(f"V must be an (n, d) matrix of eigenvectors, got shape {V.shape}")
    idx = np.argmax(np.abs(V), axis=0)
    signs = np.sign(V[idx, np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    return V * signs


def align_signs(V: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip each column of V to best match the same column of ``reference`` (the most generous
    comparison for raw eigenvectors: no sign flip is ever counted as a change)."""
    V, reference = np.asarray(V), np.asarray(reference)
    if V.shape != reference.shape:
        raise ValueError(f"shapes differ: {V.shape} vs {reference.shape}")
    signs = np.sign(np.sum(V * reference, axis=0))
    signs[signs == 0] = 1.0
    return V * signs


def lap_pe(A: np.ndarray, d: int, normalized: bool = False) -> np.ndarray:
    """LapPE: the raw eigenvectors of the d smallest eigenvalues, sign-canonicalised (n x d)."""
    _, V = laplacian_eigs(A, d, normalized)
    return canonical_signs(V)


def random_edge_perturbation(A: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A symmetric direction E on the existing edges of A (Gaussian weights), ||E||_F = 1.

    A + eps E reweights the edges without adding or removing any, so every eps changes the
    Laplacian by a small, structure-preserving amount.
    """
    A = check_adjacency(A)
    upper = np.triu(A > 0, k=1)
    if not upper.any():
        raise ValueError("the graph has no edges to perturb")
    E = np.zeros_like(A)
    E[upper] = rng.standard_normal(int(upper.sum()))
    E = E + E.T
    return E / np.linalg.norm(E)


def sensitivity(
    encode: Callable[[np.ndarray], np.ndarray],
    A: np.ndarray,
    E: np.ndarray,
    eps: float,
    *,
    normalized: bool = False,
    align: bool = False,
) -> float:
    """||PE(A + eps E) - PE(A)||_F / ||L(A + eps E) - L(A)||_F: output change per input change.

    The paper's stability notion (Section 3) bounds the numerator by a function of the
    denominator; for a stable encoding this ratio stays bounded as eps -> 0. With ``align`` the
    columns of the perturbed output are sign-aligned to the unperturbed ones first (used for
    raw eigenvectors, so that a mere sign flip is not counted).
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    A = check_adjacency(A)
    A2 = check_adjacency(A + eps * np.asarray(E, dtype=np.float64))
    out, out2 = np.asarray(encode(A)), np.asarray(encode(A2))
    if align:
        out2 = align_signs(out2, out)
    dL = np.linalg.norm(laplacian(A2, normalized) - laplacian(A, normalized))
    return float(np.linalg.norm(out2 - out) / dL)


# ---------------------------------------------------------------------------------------------
# Networks (torch): SPE, a SignNet-style baseline, a dense GIN
# ---------------------------------------------------------------------------------------------

def spe_projections(lam_features: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The soft eigenspace projections W_l = V diag(phi_l(lambda)) V^T of SPE (Section 3).

    ``lam_features`` is (B, d, m), the m functions phi_l evaluated on the eigenvalues; V is
    (B, n, d). Returns W with shape (B, n, n, m). Zero columns of V (padding) contribute nothing.
    """
    shapes_ok = V.dim() == 3 and lam_features.dim() == 3
    if not shapes_ok or lam_features.shape[:2] != (V.shape[0], V.shape[2]):
        raise ValueError(
            f"need V (B, n, d) and phi(lambda) (B, d, m); got {tuple(V.shape)} and "
            f"{tuple(lam_features.shape)}"
        )
    return torch.einsum("bid,bdm,bjd->bijm", V, lam_features, V)


def _node_mask(V: torch.Tensor, node_mask: torch.Tensor | None) -> torch.Tensor:
    if node_mask is None:
        return torch.ones(V.shape[:2], dtype=V.dtype, device=V.device)
    return node_mask.to(V.dtype)


class SPE(nn.Module):
    """Stable and Expressive Positional Encodings (Section 3): node encodings of shape (B, n, p).

    * phi: one MLP R -> R^m applied to every eigenvalue separately (elementwise, hence
      permutation equivariant in the eigenvalues); output column l is phi_l(lambda).
    * rho: permutation equivariant on the (n, n, m) tensor of projections. ``rho="mlp"`` applies
      an MLP to each entry W[i, j, :] and sums over j; ``rho="gin"`` treats each W[:, j, :] as
      node features of a GIN on the graph (message passing along i), then sums over j, as the
      paper does with a GIN.

    Bounded (tanh) activations and small weights keep phi and rho Lipschitz, as the stability
    theorem assumes.
    """

    def __init__(
        self,
        m: int = 4,
        out_dim: int = 8,
        hidden: int = 16,
        *,
        rho: str = "mlp",
        rho_layers: int = 2,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if rho not in ("mlp", "gin"):
            raise ValueError(f"rho must be 'mlp' or 'gin', got {rho!r}")
        if rho_layers < 1:
            raise ValueError(f"rho needs at least one layer, got {rho_layers}")
        self.rho_kind = rho
        self.phi = mlp([1, hidden, m], activation)
        if rho == "mlp":
            self.rho = nn.ModuleList(
                [mlp([m + 1] + [hidden] * rho_layers + [out_dim], activation)]
            )
        else:
            sizes = [m + 1] + [hidden] * rho_layers
            self.rho = nn.ModuleList(
                mlp([a, hidden, b], activation) for a, b in zip(sizes[:-1], sizes[1:])
            )
            self.rho_out = nn.Linear(hidden, out_dim)
        self.out_dim = out_dim

    def forward(
        self,
        lam: torch.Tensor,
        V: torch.Tensor,
        A: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """lam (B, d), V (B, n, d), A (B, n, n; needed for rho="gin"), node_mask (B, n)."""
        if lam.dim() != 2 or V.dim() != 3 or lam.shape != (V.shape[0], V.shape[2]):
            raise ValueError(f"need lam (B, d) and V (B, n, d); got {tuple(lam.shape)}, "
                             f"{tuple(V.shape)}")
        mask = _node_mask(V, node_mask)
        W = spe_projections(self.phi(lam.unsqueeze(-1)), V)  # (B, n, n, m)
        # One constant channel marks the diagonal i = j (still permutation equivariant): it
        # lets rho tell a node's own entry W_l[i, i] from its entries towards other nodes.
        eye = torch.eye(V.shape[1], dtype=V.dtype, device=V.device).expand(V.shape[0], -1, -1)
        W = torch.cat([W, eye[..., None]], dim=-1)  # (B, n, n, m + 1)
        if self.rho_kind == "mlp":
            H = self.rho[0](W)
        else:
            if A is None:
                raise ValueError("rho='gin' needs the adjacency A")
            H = W
            for layer in self.rho:
                H = layer(H + torch.einsum("bik,bkjh->bijh", A, H))
            H = self.rho_out(H)
        H = (H * mask[:, None, :, None]).sum(dim=2)  # sum over the second node index j
        return H * mask[..., None]


class SignNetPE(nn.Module):
    """A SignNet-style encoding (Lim et al., 2023): rho([phi(v_i) + phi(-v_i)]_{i=1..d}).

    phi is a two-layer GIN on the graph that reads one eigenvector as a scalar node signal;
    the sum over +v and -v makes it sign invariant. It still looks at each eigenvector on its
    own, so a rotation inside a repeated eigenspace (or a near-rotation when two eigenvalues
    almost collide) changes its output: it is not basis invariant, and not stable.
    """

    def __init__(self, d: int, out_dim: int = 8, hidden: int = 16, activation: str = "tanh"):
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be positive, got {d}")
        self.d = d
        self.phi = nn.ModuleList([mlp([1, hidden, hidden], activation),
                                  mlp([hidden, hidden, hidden], activation)])
        self.rho = mlp([d * hidden, hidden, out_dim], activation)
        self.out_dim = out_dim

    def _phi(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        h = x  # (B, d, n, 1)
        for layer in self.phi:
            h = layer(h + torch.einsum("bik,bdkh->bdih", A, h))
        return h

    def forward(
        self,
        lam: torch.Tensor,
        V: torch.Tensor,
        A: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """V (B, n, d) with d equal to the d given at construction; lam is not used."""
        if V.dim() != 3 or V.shape[2] != self.d:
            raise ValueError(f"need V of shape (B, n, {self.d}), got {tuple(V.shape)}")
        if A is None:
            raise ValueError("SignNetPE needs the adjacency A")
        mask = _node_mask(V, node_mask)
        x = V.permute(0, 2, 1).unsqueeze(-1)  # (B, d, n, 1)
        h = self._phi(x, A) + self._phi(-x, A)  # (B, d, n, hidden), sign invariant
        h = h.permute(0, 2, 1, 3).reshape(V.shape[0], V.shape[1], -1)
        return self.rho(h) * mask[..., None]


class BasisNetPE(nn.Module):
    """A BasisNet-style encoding (Lim et al., 2023): networks on the projector of each eigenspace.

    Following the official SPE code's BasisNet baseline (``get_projections`` and ``BasisInvPE``
    in github.com/Graph-COM/SPE): the d eigenvalues are rounded to ``decimals`` places, equal
    rounded values form one eigenspace with projector P = V_k V_k^T, and a network phi_k chosen
    by the eigenspace's dimension k maps P to k features per node. The features are concatenated
    (grouped by dimension, in eigenvalue order), zero-padded to d, joined with the eigenvalues,
    and read by rho. Here phi_k is an MLP on each entry (P_ij, [i = j]) summed over j, then an
    MLP to k outputs (the official code uses a 2-to-1 invariant graph network); rho is an MLP.

    Projectors do not depend on the basis, so the encoding is basis invariant; but the grouping
    is a hard partition: when a perturbation splits an eigenvalue by more than the rounding,
    the eigenspace falls apart into lines that are processed separately, and the output jumps.
    """

    def __init__(self, d: int, out_dim: int = 8, hidden: int = 16, activation: str = "tanh",
                 decimals: int = 5) -> None:
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be positive, got {d}")
        if decimals < 0:
            raise ValueError(f"decimals must be non-negative, got {decimals}")
        self.d, self.decimals = d, decimals
        self.phi_in = nn.ModuleList(mlp([2, hidden, hidden], activation) for _ in range(d))
        self.phi_out = nn.ModuleList(mlp([hidden, hidden, k], activation)
                                     for k in range(1, d + 1))
        self.rho = mlp([2 * d, hidden, out_dim], activation)
        self.out_dim = out_dim

    def eigenspaces(self, lam: np.ndarray) -> list[np.ndarray]:
        """Index groups of equal eigenvalues after rounding (the official code's partition)."""
        rounded = np.round(np.asarray(lam, dtype=float), self.decimals)
        _, first, inverse = np.unique(rounded, return_index=True, return_inverse=True)
        return [np.flatnonzero(inverse == g) for g in np.argsort(first)]

    def forward(
        self,
        lam: torch.Tensor,
        V: torch.Tensor,
        A: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """lam (B, d), V (B, n, d) with d as at construction; A is not used."""
        if lam.dim() != 2 or V.dim() != 3 or lam.shape != (V.shape[0], V.shape[2]) \
                or V.shape[2] != self.d:
            raise ValueError(f"need lam (B, {self.d}) and V (B, n, {self.d}); got "
                             f"{tuple(lam.shape)}, {tuple(V.shape)}")
        mask = _node_mask(V, node_mask)
        n = V.shape[1]
        eye = torch.eye(n, dtype=V.dtype, device=V.device)
        outputs = []
        for b in range(V.shape[0]):
            groups = self.eigenspaces(lam[b].detach().cpu().numpy())
            feats = []
            for k in sorted({len(g) for g in groups}):  # grouped by dimension, as officially
                for g in (g for g in groups if len(g) == k):
                    Vk = V[b][:, torch.as_tensor(g, device=V.device)]
                    P = Vk @ Vk.T  # the eigenspace's projector: basis independent
                    h = self.phi_in[k - 1](torch.stack([P, eye], dim=-1)).sum(dim=1)
                    feats.append(self.phi_out[k - 1](h))  # (n, k)
            x = torch.cat(feats, dim=-1)  # (n, d)
            x = torch.cat([x, lam[b].expand(n, -1)], dim=-1)
            outputs.append(self.rho(x))
        return torch.stack(outputs) * mask[..., None]


def encode_graph(
    model: nn.Module, A: np.ndarray, d: int, normalized: bool = False
) -> np.ndarray:
    """Run an encoder (SPE, SignNetPE, BasisNetPE) on one graph in float64: the (n, p) output.

    The encoder's parameters are cast to float64 in place: differences of order 1e-8 must not
    drown in float32 rounding when stability is measured.
    """
    lam, V = laplacian_eigs(A, d, normalized)
    model.double()
    with torch.no_grad():
        out = model(
            torch.from_numpy(lam)[None],
            torch.from_numpy(V)[None],
            torch.from_numpy(check_adjacency(A))[None],
        )
    return out[0].numpy()


class DenseGIN(nn.Module):
    """A GIN (Xu et al., 2019) on dense, padded adjacency matrices, with a sum readout.

    h <- MLP((1 + eps) h + A h) per layer; graph output = MLP(sum of node states).
    """

    def __init__(self, in_dim: int, hidden: int = 32, layers: int = 3, out_dim: int = 1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a GIN needs at least one layer, got {layers}")
        sizes = [in_dim] + [hidden] * layers
        self.layers = nn.ModuleList(mlp([a, hidden, b]) for a, b in zip(sizes[:-1], sizes[1:]))
        self.eps = nn.Parameter(torch.zeros(layers))
        self.readout = mlp([hidden, hidden, out_dim])

    def forward(self, X: torch.Tensor, A: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        mask = node_mask.to(X.dtype)[..., None]
        h = X * mask
        for eps, layer in zip(self.eps, self.layers):
            h = layer((1 + eps) * h + A @ h) * mask
        return self.readout(h.sum(dim=1)).squeeze(-1)


ENCODINGS = ("none", "LapPE", "SignNet", "SPE")


class PEGraphRegressor(nn.Module):
    """A dense GIN whose node features are a positional encoding: none (a constant), LapPE
    (raw eigenvectors), SignNet or SPE, trained end to end."""

    def __init__(self, encoding: str, d: int, pe_dim: int = 8, hidden: int = 32,
                 layers: int = 3, spe_m: int = 8) -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
        if encoding == "SPE":
            self.pe = SPE(m=spe_m, out_dim=pe_dim, hidden=hidden, rho="gin", activation="relu")
        elif encoding == "SignNet":
            self.pe = SignNetPE(d, out_dim=pe_dim, hidden=hidden, activation="relu")
        elif encoding == "LapPE":
            self.pe = nn.Linear(d, pe_dim)
        in_dim = 1 if encoding == "none" else 1 + pe_dim
        self.gin = DenseGIN(in_dim, hidden, layers)

    def forward(self, lam, V, A, node_mask) -> torch.Tensor:  # noqa: ANN001 (tensors)
        ones = node_mask.to(V.dtype)[..., None]
        if self.encoding == "none":
            X = ones
        elif self.encoding == "LapPE":
            X = torch.cat([ones, self.pe(V)], dim=-1)
        else:
            X = torch.cat([ones, self.pe(lam, V, A, node_mask)], dim=-1)
        return self.gin(X, A, node_mask)


# ---------------------------------------------------------------------------------------------
# A small learning task: counting cycles
# ---------------------------------------------------------------------------------------------


def cycle_counts(A: np.ndarray, lengths: Sequence[int] = (3, 4, 5)) -> np.ndarray:
    """The number of simple cycles of each length in an unweighted graph (networkx)."""
    A = check_adjacency(A)
    lengths = [int(k) for k in lengths]
    if not lengths or min(lengths) < 3:
        raise ValueError(f"cycle lengths must be at least 3, got {lengths}")
    G = nx.from_numpy_array((A > 0).astype(int))
    counts = dict.fromkeys(lengths, 0)
    for cycle in nx.simple_cycles(G, length_bound=max(lengths)):
        if len(cycle) in counts:
            counts[len(cycle)] += 1
    return np.array([counts[k] for k in lengths], dtype=np.float64)


@dataclass
class GraphBatch:
    """Padded dense tensors for a set of graphs: eigenpairs, adjacency, node mask, targets."""

    lam: torch.Tensor  # (G, d)
    V: torch.Tensor  # (G, n_max, d), zero rows/columns where padded
    A: torch.Tensor  # (G, n_max, n_max)
    mask: torch.Tensor  # (G, n_max) bool
    y: torch.Tensor  # (G,)
    sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray | torch.Tensor) -> GraphBatch:
        idx = torch.as_tensor(idx)
        return GraphBatch(self.lam[idx], self.V[idx], self.A[idx], self.mask[idx], self.y[idx],
                          [self.sizes[i] for i in idx.tolist()])


def pack_graphs(adjacencies: Sequence[np.ndarray], targets: Sequence[float], d: int,
                n_max: int | None = None, normalized: bool = True) -> GraphBatch:
    """Eigendecompose each graph (all eigenpairs up to d; smaller graphs are zero-padded) and
    pack everything into float32 tensors."""
    if len(adjacencies) != len(targets) or not adjacencies:
        raise ValueError("need as many targets as graphs, and at least one graph")
    n_max = n_max or max(len(A) for A in adjacencies)
    G = len(adjacencies)
    lam = np.zeros((G, d))
    V = np.zeros((G, n_max, d))
    Ap = np.zeros((G, n_max, n_max))
    mask = np.zeros((G, n_max), dtype=bool)
    for g, A in enumerate(adjacencies):
        n = len(A)
        if n > n_max:
            raise ValueError(f"graph {g} has {n} nodes, more than n_max = {n_max}")
        k = min(d, n)
        lam[g, :k], V[g, :n, :k] = laplacian_eigs(A, k, normalized)
        Ap[g, :n, :n] = A
        mask[g, :n] = True
    as_t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return GraphBatch(as_t(lam), as_t(V), as_t(Ap), torch.tensor(mask),
                      as_t(np.asarray(targets, dtype=np.float64)),
                      [len(A) for A in adjacencies])


def random_regular_graphs(count: int, n_range: tuple[int, int], degrees: Sequence[int],
                          rng: np.random.Generator) -> list[np.ndarray]:
    """Random regular graphs (networkx) with n uniform in n_range and degree drawn from
    ``degrees``: every node looks the same to message passing, so only a positional
    encoding can tell their cycle counts apart."""
    graphs = []
    while len(graphs) < count:
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        k = int(rng.choice(list(degrees)))
        if (n * k) % 2:
            continue
        G = nx.random_regular_graph(k, n, seed=int(rng.integers(2**31)))
        graphs.append(nx.to_numpy_array(G))
    return graphs


def train_regressor(model: PEGraphRegressor, train: GraphBatch, *, epochs: int = 100,
                    batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                    sign_flip: bool = True) -> list[float]:
    """Adam on the L1 loss (the counting task's metric is the MAE); returns the epoch losses.

    For LapPE and SignNet, ``sign_flip`` draws random eigenvector signs at every step, the
    usual augmentation for raw eigenvectors (SPE and SignNet are sign invariant anyway).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), batch_size):
            b = train.subset(perm[start:start + batch_size])
            V = b.V
            if sign_flip and model.encoding == "LapPE":
                signs = torch.randint(0, 2, (V.shape[0], 1, V.shape[2]), generator=gen) * 2 - 1
                V = V * signs
            loss = (model(b.lam, V, b.A, b.mask) - b.y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        losses.append(total / len(train))
    return losses


def evaluate_mae(model: PEGraphRegressor, data: GraphBatch) -> float:
    """Mean absolute error of the model's predictions on a packed set of graphs."""
    model.eval()
    with torch.no_grad():
        return float((model(data.lam, data.V, data.A, data.mask) - data.y).abs().mean())
