"""Additive-noise structural causal models with mutable mechanisms (environments).

The model of the paper's Sec. 6.1 simulation: every variable is

    X_i = g_i(w_i^T pa_i) + U_i,        U_i ~ N(0, sigma_i^2),

with ``g_i`` one of identity / sigmoid / tanh, and in environment ``e`` each *mutable*
mechanism is multiplied by a scale, ``X_m = alpha_{e,m} g_m(w_m^T pa_m) + U_m``. The stable
mechanisms are shared by every environment. Everything is torch float64 so that a mutable
mechanism can be replaced by a differentiable intervention function ``J`` (Sec. 5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch

NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

Data = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Mechanism:
    """One structural equation ``X = g(w^T pa) + U`` (a root when ``parents`` is empty)."""

    parents: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    nonlinearity: str = "identity"
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if len(self.parents) != len(self.weights):
            raise ValueError(f"{len(self.parents)} parents but {len(self.weights)} weights")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {sorted(NONLINEARITIES)}, "
                             f"got {self.nonlinearity!r}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    def mean(self, data: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        """``g(w^T pa)`` on a sample (zeros for a root)."""
        if not self.parents:
            return torch.zeros(n, dtype=torch.float64)
        z = sum(w * data[p] for w, p in zip(self.weights, self.parents))
        return NONLINEARITIES[self.nonlinearity](z)


@dataclass
class AdditiveNoiseSCM:
    """An acyclic additive-noise SCM over named variables, some of them mutable.

    ``mechanisms`` maps each variable to its :class:`Mechanism`; ``target`` is Y and
    ``mutable`` the variables X_M whose mechanisms change with the environment.
    """

    mechanisms: dict[str, Mechanism]
    target: str = "Y"
    mutable: tuple[str, ...] = ()
    order: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.target not in self.mechanisms:
            raise ValueError(f"target {self.target!r} has no mechanism")
        for m in self.mutable:
            if m not in self.mechanisms:
                raise ValueError(f"mutable variable {m!r} has no mechanism")
            if m == self.target:
                raise ValueError("the target cannot be mutable")
        for node, mech in self.mechanisms.items():
            for p in mech.parents:
                if p not in self.mechanisms:
                    raise ValueError(f"parent {p!r} of {node!r} has no mechanism")
        graph = self.graph()
        if not nx.is_directed_acyclic_graph(graph):
            raise ValueError("the mechanisms' parent sets contain a directed cycle")
        self.order = tuple(nx.lexicographical_topological_sort(graph))

    # --- structure -------------------------------------------------------------------------
    def graph(self) -> nx.DiGraph:
        """The causal DAG over all variables (without the environment node)."""
        g = nx.DiGraph()
        g.add_nodes_from(self.mechanisms)
        g.add_edges_from((p, v) for v, m in self.mechanisms.items() for p in m.parents)
        return g

    @property
    def stable(self) -> tuple[str, ...]:
        """The stable covariates X_S: every variable but Y and X_M, sorted by name
        (shorter names first, so X2 comes before X10)."""
        return tuple(sorted((v for v in self.order if v != self.target and v not in self.mutable),
                            key=lambda v: (len(v), v)))

    def descendants(self, nodes: Sequence[str]) -> tuple[str, ...]:
        """Proper descendants of ``nodes`` (excluding ``nodes``), in topological order."""
        g = self.graph()
        found = set().union(*(nx.descendants(g, v) for v in nodes)) - set(nodes)
        return tuple(v for v in self.order if v in found)

    # --- sampling --------------------------------------------------------------------------
    def noise(self, n: int, rng: np.random.Generator) -> Data:
        """Exogenous noises ``U_i`` for ``n`` units."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return {v: torch.from_numpy(rng.normal(0.0, self.mechanisms[v].noise_std, n))
                for v in self.order}

    def propagate(self, noise: Mapping[str, torch.Tensor],
                  scales: Mapping[str, float] | None = None,
                  replace: Mapping[str, Callable[[Data], torch.Tensor]] | None = None,
                  fixed: Mapping[str, torch.Tensor] | None = None) -> Data:
        """Evaluate the structural equations in topological order.

        ``scales``: the environment's factor ``alpha_m`` on each mutable mechanism (1 if
        absent). ``replace``: a mutable variable's mechanism replaced by ``J(data)`` (the
        paper's intervention function on pa(X_m), no noise). ``fixed``: values held fixed
        (a do-intervention; the node's own equation is skipped).
        """
        scales, replace, fixed = dict(scales or {}), dict(replace or {}), dict(fixed or {})
        for m in (*scales, *replace):
            if m not in self.mutable:
                raise ValueError(f"{m!r} is not a mutable variable; only X_M change with e")
        n = len(next(iter(noise.values())))
        data: Data = {}
        for v in self.order:
            if v in fixed:
                data[v] = fixed[v]
            elif v in replace:
                data[v] = replace[v](data)
            else:
                mech = self.mechanisms[v]
                data[v] = scales.get(v, 1.0) * mech.mean(data, n) + noise[v]
        return data

    def sample(self, n: int, rng: np.random.Generator,
               scales: Mapping[str, float] | None = None) -> Data:
        """``n`` draws from the environment whose mutable mechanisms are scaled by ``scales``."""
        return self.propagate(self.noise(n, rng), scales=scales)

    def abduct(self, data: Mapping[str, torch.Tensor],
               scales: Mapping[str, float] | torch.Tensor | None = None) -> Data:
        """Recover the noises of a sample: ``U_i = X_i - alpha_i g_i(w_i^T pa_i)``.

        ``scales`` may give one scale per mutable variable or, as a tensor per variable in a
        dict, one per unit (pooled environments).
        """
        scales = dict(scales or {})
        n = len(data[self.target])
        return {v: data[v] - scales.get(v, 1.0) * self.mechanisms[v].mean(data, n)
                for v in self.order}


def published_simulation_scm(y_noise_std: float = 1.0, y_to_m1: float = 1.91,
                             m1_parent: str = "Y", noise_std: float = 0.1) -> AdditiveNoiseSCM:
    """The structural equations of the official simulation (``data/simulation_params.json``
    of github.com/lmz123321/which_invariance, "G3, Y->K"), renamed as in the paper's Fig. 4a.

    Stable covariates X1..X8, mutable M1 (the paper's X9) and M2 (X10); weights and
    nonlinearities as published. Our knobs: ``y_noise_std`` (published 0.1),
    ``y_to_m1`` (the weight of M1's parent, published 1.91) and ``m1_parent`` ("Y" as
    published; another node moves the mutable child of Y elsewhere, which makes the
    paper's graphical condition hold).
    """
    if y_noise_std <= 0 or noise_std <= 0:
        raise ValueError("noise standard deviations must be positive")
    s = noise_std
    mech = {
        "Y": Mechanism((), (), "identity", y_noise_std),
        "X6": Mechanism((), (), "identity", s),
        "X8": Mechanism((), (), "identity", s),
        "M1": Mechanism((m1_parent,), (y_to_m1,), "tanh", s),
        "X5": Mechanism(("X6",), (0.84,), "sigmoid", s),
        "X7": Mechanism(("X8",), (-1.52,), "identity", s),
        "X1": Mechanism(("Y", "M1", "X6", "X5"), (0.63, -0.58, 1.51, 1.13), "sigmoid", s),
        "X3": Mechanism(("X1",), (-0.95,), "tanh", s),
        "X2": Mechanism(("X3", "X8"), (1.47, -0.64), "tanh", s),
        "M2": Mechanism(("X5", "X3", "X8"), (-1.2, 1.33, 0.64), "tanh", s),
        "X4": Mechanism(("X2", "X7", "X8"), (1.42, 0.99, 0.72), "sigmoid", s),
    }
    if m1_parent not in mech or m1_parent in ("M1", "X1", "X3", "X2", "X4", "M2"):
        raise ValueError(f"m1_parent must be Y or a non-descendant of M1, got {m1_parent!r}")
    return AdditiveNoiseSCM(mech, target="Y", mutable=("M1", "M2"))
