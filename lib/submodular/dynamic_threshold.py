"""Fully dynamic monotone submodular maximisation under a cardinality constraint k, with the
threshold / level / random-pick / lazy-rebuild construction of Banihashem et al. (ICML 2023,
"Dynamic Constrained Submodular Optimization with Polylogarithmic Update Time").

One :class:`ThresholdCopy` per guess gamma of OPT works with the threshold tau = gamma / (2k).
It builds its solution S level by level. Level i holds a pool R_i, the live elements whose
marginal gain with respect to the picks of the earlier levels, S_{<i}, is at least tau. The
level picks elements *uniformly at random* from what is left of its pool, adds each to S and
filters the rest (drops every element whose gain fell below tau), until the pool has halved,
is empty, or |S| = k; the survivors are R_{i+1}. The randomness hides S from an oblivious
adversary: a deletion fixed in advance hits one of level i's picks with probability about
(picks_i / |R_i|), so expensive rebuilds are rare.

Updates (the chapter's equations (ds-insert) and (ds-delete)):

- *insert e*: walk down the levels while Delta(e | S_{<i}) >= tau, adding e to each R_i it
  passes; if e passes them all and Delta(e | S) >= tau, it is added to S when |S| < k. A pool
  that has grown by ``rebuild_factor`` since its level was built triggers a rebuild from
  that level.
- *delete e*: remove e from the pools; if e is one of level i's picks, or level i's pool has
  shrunk by ``rebuild_factor``, rebuild from level i.

Invariant after every update: every live element outside S has Delta(e | S) < tau, or
|S| = k. Either way f(S) >= min(k tau, OPT - k tau); with gamma in [OPT / (1 + eps), OPT]
that is at least OPT / (2 (1 + eps)) >= (1/2 - eps) OPT. :class:`DynamicSubmodular` runs
every guess and outputs the best copy. Every oracle query (walks, rebuilds, all guesses) is
charged to the shared :class:`~lib.submodular.objectives.OracleCounter`.

The paper's full pseudocode was not available to us; the rebuild thresholds (halving and
doubling) and the one-pick-at-a-time filtering are our reading of its construction (see the
chapter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lib.submodular.objectives import OracleCounter


def opt_guesses(lo: float, hi: float, eps: float) -> np.ndarray:
    """The grid gamma_j = lo (1 + eps)^j, j = 0..J, with gamma_J >= hi: any OPT in [lo, hi]
    has a guess in [OPT / (1 + eps), OPT]."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if not 0 < lo <= hi or not math.isfinite(hi):
        raise ValueError(f"need 0 < lo <= hi < inf, got lo={lo}, hi={hi}")
    count = math.ceil(math.log(hi / lo) / math.log1p(eps) - 1e-12) + 1
    return lo * (1 + eps) ** np.arange(count)


def opt_range_from_singletons(oracle: OracleCounter, universe, k: int) -> tuple[float, float]:
    """[min_e f({e}), k max_e f({e})] over every element that may ever be inserted: OPT of
    any live set lies in it (OPT >= its largest singleton, OPT <= k times it). Charges one
    query per element of ``universe``."""
    universe = np.asarray(list(universe), dtype=np.intp)
    if universe.size == 0:
        raise ValueError("the universe of elements is empty")
    singles = oracle.gains(oracle.empty_state(), universe)
    if singles.min() <= 0:
        raise ValueError("every element needs f({e}) > 0 for a geometric grid of guesses")
    return float(singles.min()), float(k * singles.max())


@dataclass
class Level:
    """One level: pool R_i, the state and value of S_{<i}, the picks, |R_i| at build time."""

    pool: set[int]
    start_state: np.ndarray
    start_value: float
    built: int
    picks: list[int] = field(default_factory=list)
    pick_set: set[int] = field(default_factory=set)


class ThresholdCopy:
    """The level structure for one threshold tau (one guess gamma = 2 k tau of OPT)."""

    def __init__(self, oracle: OracleCounter, k: int, tau: float, rng: np.random.Generator,
                 *, rebuild_factor: float = 2.0) -> None:  # fmt: skip
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if not tau > 0:
            raise ValueError(f"the threshold tau must be positive, got {tau}")
        if not rebuild_factor > 1:
            raise ValueError(f"rebuild_factor must exceed 1, got {rebuild_factor}")
        self.oracle, self.k, self.tau, self.rng = oracle, int(k), float(tau), rng
        self.factor = float(rebuild_factor)
        self.levels: list[Level] = []
        self.rest: set[int] = set()  # survivors of every level: empty unless |S| = k
        self.state = oracle.empty_state()
        self.value = 0.0
        self.solution: list[int] = []
        self.rebuilds = 0
        self.rebuild_queries = 0

    def _rebuild(self, i: int, pool: set[int]) -> None:
        """(Re)construct levels i, i+1, ... from the pool R_i, keeping S_{<i}."""
        before = self.oracle.queries
        self.rebuilds += 1
        if i < len(self.levels):
            state, value = self.levels[i].start_state, self.levels[i].start_value
        else:
            state, value = self.state, self.value
        del self.levels[i:]
        chosen = [e for level in self.levels for e in level.picks]
        cand = np.array(sorted(pool), dtype=np.intp)
        while cand.size and len(chosen) < self.k:
            level = Level(set(cand.tolist()), state, value, int(cand.size))
            self.levels.append(level)
            target = cand.size / 2  # the level ends once its pool has halved
            while cand.size > target and len(chosen) < self.k:
                j = int(self.rng.integers(cand.size))  # a uniformly random pick
                e = int(cand[j])
                value += self.oracle.gain(state, e)
                state = self.oracle.add(state, e)
                level.picks.append(e)
                level.pick_set.add(e)
                chosen.append(e)
                cand = np.delete(cand, j)
                if cand.size:  # filter: keep the elements that still gain >= tau
                    cand = cand[self.oracle.gains(state, cand) >= self.tau]
        self.rest = set(cand.tolist())
        self.state, self.value, self.solution = state, value, chosen
        self.rebuild_queries += self.oracle.queries - before

    def insert(self, e: int) -> None:
        for i, level in enumerate(self.levels):
            if self.oracle.gain(level.start_state, e) < self.tau:
                return  # filtered out before level i
            level.pool.add(e)
            if len(level.pool) > self.factor * level.built:
                self._rebuild(i, level.pool)
                return
        if self.oracle.gain(self.state, e) < self.tau:
            return
        if len(self.solution) < self.k:  # the invariant says rest is empty: e starts a level
            self._rebuild(len(self.levels), self.rest | {e})
        else:
            self.rest.add(e)

    def delete(self, e: int) -> None:
        for i, level in enumerate(self.levels):
            if e not in level.pool:
                return  # pools are nested: e is in no later pool either
            level.pool.discard(e)
            if e in level.pick_set or len(level.pool) * self.factor < level.built:
                self._rebuild(i, level.pool)
                return
        self.rest.discard(e)


class DynamicSubmodular:
    """(1/2 - eps)-approximate fully dynamic algorithm: one :class:`ThresholdCopy` per guess
    of OPT on the grid :func:`opt_guesses` over ``opt_range``; the output is the best copy."""

    def __init__(self, oracle: OracleCounter, k: int, eps: float, opt_range: tuple[float, float],
                 rng: np.random.Generator, *, rebuild_factor: float = 2.0) -> None:  # fmt: skip
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        self.oracle, self.k, self.eps = oracle, int(k), float(eps)
        self.guesses = opt_guesses(*opt_range, eps)
        self.copies = [ThresholdCopy(oracle, k, g / (2 * k), rng, rebuild_factor=rebuild_factor)
                       for g in self.guesses]  # fmt: skip
        self.live: set[int] = set()

    def insert(self, e: int) -> None:
        e = int(e)
        if not 0 <= e < self.oracle.n_elements:
            raise ValueError(f"element {e} is not in the ground set [0, {self.oracle.n_elements})")
        if e in self.live:
            raise ValueError(f"element {e} is already present")
        self.live.add(e)
        for copy in self.copies:
            copy.insert(e)

    def delete(self, e: int) -> None:
        e = int(e)
        if e not in self.live:
            raise ValueError(f"element {e} is not present")
        self.live.discard(e)
        for copy in self.copies:
            copy.delete(e)

    def best_copy(self) -> ThresholdCopy:
        return max(self.copies, key=lambda c: c.value)

    def solution(self) -> tuple[list[int], float]:
        best = self.best_copy()
        return list(best.solution), float(best.value)

    @property
    def rebuilds(self) -> int:
        return sum(c.rebuilds for c in self.copies)

    @property
    def rebuild_queries(self) -> int:
        return sum(c.rebuild_queries for c in self.copies)

    @property
    def size(self) -> int:
        return len(self.live)
