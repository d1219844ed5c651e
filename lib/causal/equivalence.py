"""Equivalence classes of stable subsets (the paper's Sec. 5.2 and Algorithm 2).

Two subsets S', S'' of the stable covariates are equivalent when they give the same
predictor ``E[Y | x_S', x_A]`` (``A``: variables always conditioned on, such as X_M), so
the same worst-case risk. The paper enumerates the classes without visiting every subset:
look at the neighbours of Y in the maximal ancestral graph (MAG) that marginalises the
excluded covariates (latent) and conditions on the included ones (selection); decide each
neighbour in or out, and recurse until Y has no neighbour left, at which point the
undecided covariates are irrelevant. The official code builds each MAG with R's ``ggm``;
here MAG adjacency is tested directly on the DAG (Richardson & Spirtes, 2002, Thm 4.2):
``a`` and ``b`` are adjacent iff they are d-connected given
``(An({a, b} | S) & (O | S)) - {a, b}``, with O the observed and S the selected nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, combinations

import networkx as nx


@dataclass(frozen=True)
class EquivalenceClass:
    """Subsets ``core | T`` for every ``T`` subset of ``free``: one predictor, one risk."""

    core: frozenset[str]
    free: frozenset[str]

    @property
    def size(self) -> int:
        return 2 ** len(self.free)

    def members(self) -> list[frozenset[str]]:
        free = sorted(self.free)
        return [self.core | frozenset(t) for t in
                chain.from_iterable(combinations(free, r) for r in range(len(free) + 1))]


def _check(dag: nx.DiGraph, target: str, nodes: Iterable[str]) -> None:
    if not nx.is_directed_acyclic_graph(dag):
        raise ValueError("the graph must be a DAG")
    if target not in dag:
        raise ValueError(f"target {target!r} is not in the graph")
    for v in nodes:
        if v not in dag:
            raise ValueError(f"{v!r} is not in the graph")
        if v == target:
            raise ValueError("the target cannot be a covariate")


def mag_neighbours(dag: nx.DiGraph, target: str, observed: Iterable[str],
                   selected: Iterable[str] = ()) -> set[str]:
    """Nodes of ``observed`` adjacent to ``target`` in the MAG of ``dag`` that keeps
    ``observed | {target}``, conditions on ``selected`` and marginalises everything else."""
    observed, selected = set(observed), set(selected)
    _check(dag, target, observed | selected)
    if observed & selected:
        raise ValueError("a node cannot be both observed and selected")
    out = set()
    for v in observed:
        anc = set(selected) | {target, v}
        for u in list(anc):
            anc |= nx.ancestors(dag, u)
        cond = (anc & (observed | selected | {target})) - {target, v}
        if not nx.is_d_separator(dag, {target}, {v}, cond):
            out.add(v)
    return out


def markov_boundary(dag: nx.DiGraph, target: str, subset: Iterable[str],
                    selected: Iterable[str] = ()) -> frozenset[str]:
    """The members of ``subset`` that ``E[Y | x_subset, x_selected]`` depends on:
    ``{v : Y not d-separated from v given (subset | selected) - {v}}``."""
    subset, selected = set(subset), set(selected)
    _check(dag, target, subset | selected)
    given = subset | selected
    return frozenset(v for v in subset
                     if not nx.is_d_separator(dag, {target}, {v}, given - {v}))


def equivalence_classes(dag: nx.DiGraph, target: str, candidates: Sequence[str],
                        selected: Iterable[str] = ()) -> list[EquivalenceClass]:
    """All equivalence classes of subsets of ``candidates`` (the paper's Algorithm 2).

    ``selected``: nodes every predictor conditions on (X_M for the stable predictors
    ``E[Y | x_S', do(x_M)]`` on the graph with the arrows into X_M removed). Nodes of the
    graph in neither list are marginalised. The classes partition the ``2^|candidates|``
    subsets; the class count is the number of subsets whose risk must be estimated.
    """
    candidates, always = frozenset(candidates), frozenset(selected)
    _check(dag, target, candidates | always)
    if candidates & always:
        raise ValueError("a node cannot be both a candidate and always selected")

    def recurse(excluded: frozenset[str], included: frozenset[str]) -> list[EquivalenceClass]:
        undecided = candidates - excluded - included
        neighbours = mag_neighbours(dag, target, undecided, included | always)
        if not neighbours:
            return [EquivalenceClass(included, undecided)]
        found = []
        ordered = sorted(neighbours)
        for r in range(len(ordered) + 1):
            for chosen in combinations(ordered, r):
                chosen = frozenset(chosen)
                found += recurse(excluded | (neighbours - chosen), included | chosen)
        return found

    return recurse(frozenset(), frozenset())


def whole_stable_set_optimal(dag: nx.DiGraph, target: str, mutable: Iterable[str]) -> bool:
    """The graphical condition under which the whole stable set is minimax optimal, as the
    official code tests it (``IsFullSet`` in ``causal_discovery/graphparser.py``): with
    ``X_M^0 = X_M & Ch(Y)`` the mutable children of Y and ``K = De(X_M^0) - X_M^0``,
    the condition holds iff no child of Y lies in ``K``. It holds whenever Y has no
    mutable child (no edge Y -> X_M)."""
    mutable = set(mutable)
    _check(dag, target, mutable)
    children = set(dag.successors(target))
    m0 = mutable & children
    k = set().union(*(nx.descendants(dag, m) for m in m0)) - m0 if m0 else set()
    return not (k & children)
