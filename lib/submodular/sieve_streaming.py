"""SieveStreaming (Badanidiyuru, Mirzasoleiman, Karbasi and Krause, KDD 2014): an
insertion-only (1/2 - eps) streaming algorithm, used here as the naive dynamic baseline.

It keeps one candidate set S_v per guess v of OPT on the grid (1 + eps)^i within
[m, 2 k m], m the largest singleton value seen so far, and adds an arriving element e to S_v
when Delta(e | S_v) >= (v / 2 - f(S_v)) / (k - |S_v|). Elements it does not keep are
forgotten, so a deletion can only *remove* an element from the sets that hold it: nothing
refills them. That is the point of the baseline: insertion-only guarantees do not survive
deletions.
"""

from __future__ import annotations

import math

from lib.submodular.objectives import OracleCounter


class SieveStreaming:
    """Insertion-only sieve streaming with deletions handled by removal only."""

    def __init__(self, oracle: OracleCounter, k: int, eps: float) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.oracle, self.k, self.eps = oracle, int(k), float(eps)
        self.max_singleton = 0.0
        self.sieves: dict[int, dict] = {}  # exponent i -> {"set", "state", "value"}
        self.live: set[int] = set()

    def _grid(self) -> range:
        if self.max_singleton <= 0:
            return range(0)
        base = math.log1p(self.eps)
        lo = math.ceil(math.log(self.max_singleton) / base - 1e-12)
        hi = math.floor(math.log(2 * self.k * self.max_singleton) / base + 1e-12)
        return range(lo, hi + 1)

    def insert(self, e: int) -> None:
        if e in self.live:
            raise ValueError(f"element {e} is already present")
        self.live.add(e)
        empty = self.oracle.empty_state()
        self.max_singleton = max(self.max_singleton, self.oracle.gain(empty, e))
        grid = self._grid()
        for i in [i for i in self.sieves if i not in grid]:
            del self.sieves[i]
        for i in grid:
            sieve = self.sieves.setdefault(i, {"set": [], "state": empty, "value": 0.0})
            size = len(sieve["set"])
            if size >= self.k:
                continue
            g = self.oracle.gain(sieve["state"], e)
            if g >= ((1 + self.eps) ** i / 2 - sieve["value"]) / (self.k - size):
                sieve["set"].append(e)
                sieve["state"] = self.oracle.add(sieve["state"], e)
                sieve["value"] += g

    def delete(self, e: int) -> None:
        if e not in self.live:
            raise ValueError(f"element {e} is not present")
        self.live.discard(e)
        for sieve in self.sieves.values():
            if e in sieve["set"]:
                sieve["set"].remove(e)
                sieve["state"] = self.oracle.state_of(sieve["set"])  # one fresh query
                sieve["value"] = self.oracle.value(sieve["state"])

    def solution(self) -> tuple[list[int], float]:
        if not self.sieves:
            return [], 0.0
        best = max(self.sieves.values(), key=lambda s: s["value"])
        return list(best["set"]), float(best["value"])

    @property
    def size(self) -> int:
        return len(self.live)


__all__ = ["SieveStreaming"]
