"""Static baselines: greedy, lazy greedy, and brute-force OPT for tiny instances.

Greedy (Nemhauser, Wolsey and Fisher, 1978) adds, k times, the element of largest marginal
gain; it is a (1 - 1/e)-approximation. Lazy greedy (Minoux, 1978) returns the same set with
fewer queries: by submodularity a stale gain is an upper bound on the current one, so an
element whose refreshed gain still tops every other bound is the greedy choice.
"""

from __future__ import annotations

import heapq
from itertools import combinations

import numpy as np

from lib.submodular.objectives import FacilityLocation, OracleCounter


def _elements(elements, k: int) -> np.ndarray:
    if int(k) != k or k < 1:
        raise ValueError(f"the cardinality constraint k must be a positive integer, got {k}")
    arr = np.asarray(sorted(set(int(e) for e in elements)), dtype=np.intp)
    return arr


def greedy(oracle: OracleCounter, elements, k: int) -> tuple[list[int], float]:
    """Plain greedy over ``elements``: k rounds, each querying the gain of every remaining
    element (ties go to the smallest index). Returns the chosen list and f of it."""
    remaining = _elements(elements, k)
    state, chosen, value = oracle.empty_state(), [], 0.0
    for _ in range(min(k, remaining.size)):
        g = oracle.gains(state, remaining)
        best = int(np.argmax(g))
        e = int(remaining[best])
        chosen.append(e)
        value += float(g[best])
        state = oracle.add(state, e)
        remaining = np.delete(remaining, best)
    return chosen, value


def greedy_query_count(n_live: int, k: int) -> int:
    """Queries plain greedy spends on ``n_live`` elements: sum_{j < min(k, n)} (n - j)."""
    if n_live < 0 or k < 1:
        raise ValueError(f"need n_live >= 0 and k >= 1, got {n_live}, {k}")
    rounds = min(k, n_live)
    return rounds * n_live - rounds * (rounds - 1) // 2


def lazy_greedy(oracle: OracleCounter, elements, k: int) -> tuple[list[int], float]:
    """Lazy greedy (Minoux's accelerated greedy): one query per element for the initial
    bounds, then one per refreshed bound. Ties go to the smallest index, as in :func:`greedy`.
    """
    pool = _elements(elements, k)
    state, chosen, value = oracle.empty_state(), [], 0.0
    if pool.size == 0:
        return chosen, value
    g0 = oracle.gains(state, pool)
    heap = [(-float(g), int(e), 0) for g, e in zip(g0, pool)]  # (-bound, element, round)
    heapq.heapify(heap)
    while heap and len(chosen) < k:
        neg, e, rnd = heapq.heappop(heap)
        if rnd == len(chosen):  # the bound is fresh: e is the greedy choice
            chosen.append(e)
            value += -neg
            state = oracle.add(state, e)
            continue
        g = oracle.gain(state, e)
        heapq.heappush(heap, (-g, e, len(chosen)))
    return chosen, value


def brute_force_opt(
    objective: FacilityLocation, elements, k: int, *, chunk: int = 20_000
) -> tuple[float, tuple[int, ...]]:
    """OPT = max_{|S| <= k} f(S) by enumerating every set of size min(k, |V|) (f is monotone,
    so a largest set is optimal). Uncounted: it is the referee, not a competitor."""
    pool = _elements(elements, k)
    size = min(k, pool.size)
    if size == 0:
        return 0.0, ()
    best, best_set = -np.inf, ()
    combos = combinations(pool.tolist(), size)
    sim, w = objective.sim, objective.weights
    while True:
        block = np.array([c for _, c in zip(range(chunk), combos)], dtype=np.intp)
        if block.size == 0:
            break
        values = w @ sim[:, block].max(axis=2)
        i = int(np.argmax(values))
        if values[i] > best:
            best, best_set = float(values[i]), tuple(int(e) for e in block[i])
    return best, best_set
