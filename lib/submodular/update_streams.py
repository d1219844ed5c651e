"""Update sequences for dynamic algorithms, and a runner that records oracle queries.

An *oblivious* adversary fixes the whole sequence before the algorithm runs (the setting of
the dynamic-submodular guarantees): :func:`oblivious_stream` draws it from a seed alone. The
*adaptive* runner of :func:`run_updates` (``adaptive_deletions=True``) instead deletes an
element of the algorithm's current solution at each deletion step: outside the theory, it
shows what the randomness of the solution protects against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Update:
    kind: str  # "insert" or "delete"
    element: int


def oblivious_stream(pool: Sequence[int], n_updates: int, delete_fraction: float,
                     rng: np.random.Generator) -> list[Update]:  # fmt: skip
    """``n_updates`` updates over ``pool``: each step deletes a uniformly random present
    element with probability ``delete_fraction`` (never from an empty set), else inserts a
    uniformly random absent pool element (deleting instead when all are present)."""
    pool = [int(e) for e in pool]
    if len(set(pool)) != len(pool) or not pool:
        raise ValueError("pool must be a non-empty list of distinct elements")
    if int(n_updates) != n_updates or n_updates < 1:
        raise ValueError(f"n_updates must be a positive integer, got {n_updates}")
    if not 0 <= delete_fraction < 1:
        raise ValueError(f"delete_fraction must be in [0, 1), got {delete_fraction}")
    present: list[int] = []
    absent = list(pool)
    updates = []
    for _ in range(int(n_updates)):
        delete = bool(present) and (not absent or rng.random() < delete_fraction)
        source, target = (present, absent) if delete else (absent, present)
        j = int(rng.integers(len(source)))
        e = source[j]
        source[j] = source[-1]
        source.pop()
        target.append(e)
        updates.append(Update("delete" if delete else "insert", e))
    return updates


def run_updates(algorithm, updates: Sequence[Update], *,
                after: Callable[[int, object], None] | None = None,
                adaptive_deletions: bool = False,
                rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """Feed ``updates`` to ``algorithm`` (``insert``, ``delete``, ``solution``, ``oracle``);
    returns the oracle queries spent on each update. ``after(t, algorithm)`` runs after update
    t, uncharged. With ``adaptive_deletions`` each deletion removes a random element of the
    current solution instead (a random present element when the solution is empty), and
    insertions whose element is already present are skipped (counted as zero queries)."""
    if adaptive_deletions and rng is None:
        raise ValueError("adaptive deletions need an rng")
    spent = np.zeros(len(updates), dtype=np.int64)
    for t, u in enumerate(updates):
        before = algorithm.oracle.queries
        if u.kind == "insert":
            if not (adaptive_deletions and u.element in algorithm.live):
                algorithm.insert(u.element)
        elif u.kind == "delete":
            e = u.element
            if adaptive_deletions:
                targets = [x for x in algorithm.solution()[0] if x in algorithm.live]
                targets = targets or sorted(algorithm.live)
                e = targets[int(rng.integers(len(targets)))] if targets else None
            if e is not None and (not adaptive_deletions or e in algorithm.live):
                algorithm.delete(e)
        else:
            raise ValueError(f"unknown update kind {u.kind!r}")
        spent[t] = algorithm.oracle.queries - before
        if after is not None:
            after(t, algorithm)
    return spent
