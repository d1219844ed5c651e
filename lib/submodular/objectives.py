"""Facility-location objectives and an oracle that counts every value query.

The dynamic-submodular literature measures an algorithm by its *oracle queries*: evaluations
of f on a set. Every algorithm in :mod:`lib.submodular` reaches f only through an
:class:`OracleCounter`, which charges one query per marginal gain Delta(e | S) = f(S + e) - f(S)
(f(S) of the set an algorithm holds is known from the gains that built it) and one per
evaluation of f on a set that was not built that way.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class FacilityLocation:
    """f(S) = sum_i w_i max_{j in S} sim[i, j], with f(empty set) = 0.

    ``sim`` (clients x elements) must be non-negative, which makes f monotone and submodular;
    a 0/1 ``sim`` gives weighted coverage (client i is covered by the elements with a 1 in
    row i). The *state* of a set S is the vector of its clients' best similarities,
    ``max_{j in S} sim[:, j]``: gains, additions and values are computed from it.
    """

    def __init__(self, sim: np.ndarray, weights: np.ndarray | None = None) -> None:
        sim = np.asarray(sim, dtype=float)
        if sim.ndim != 2 or sim.size == 0:
            raise ValueError(f"sim must be a non-empty (clients, elements) matrix, got {sim.shape}")
        if not np.all(np.isfinite(sim)) or sim.min() < 0:
            raise ValueError("sim must be finite and non-negative (else f is not monotone)")
        if weights is None:
            weights = np.ones(sim.shape[0])
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (sim.shape[0],) or weights.min() < 0:
            raise ValueError(f"weights must be {sim.shape[0]} non-negative numbers")
        self.sim = np.ascontiguousarray(sim)
        self.weights = weights
        self.n_clients, self.n_elements = sim.shape
        self._columns = np.ascontiguousarray(sim.T)  # row e = column e of sim, contiguous
        self._empty = np.zeros(self.n_clients)
        self._empty.flags.writeable = False  # states are never changed in place
        self._singles = self._columns @ weights  # f({e}), a cache for gains on the empty set

    def _check(self, elements: np.ndarray) -> np.ndarray:
        elements = np.asarray(elements, dtype=np.intp).reshape(-1)
        if elements.size and (elements.min() < 0 or elements.max() >= self.n_elements):
            raise ValueError(f"elements must be in [0, {self.n_elements}), got {elements}")
        return elements

    def empty_state(self) -> np.ndarray:
        return self._empty

    def state_of(self, elements: Iterable[int]) -> np.ndarray:
        idx = self._check(np.fromiter(elements, dtype=np.intp))
        return self._columns[idx].max(axis=0) if idx.size else self.empty_state()

    def gains(self, state: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """Delta(e | S) for each e in ``elements``, S the set whose state is ``state``."""
        idx = self._check(elements)
        return np.maximum(self._columns[idx] - state, 0.0) @ self.weights

    def gain(self, state: np.ndarray, element: int) -> float:
        if not 0 <= element < self.n_elements:
            raise ValueError(f"element must be in [0, {self.n_elements}), got {element}")
        if state is self._empty:  # same number, computed once (still one query to a counter)
            return float(self._singles[element])
        return float(np.maximum(self._columns[element] - state, 0.0) @ self.weights)

    def add(self, state: np.ndarray, element: int) -> np.ndarray:
        return np.maximum(state, self._columns[element])

    def value(self, state: np.ndarray) -> float:
        return float(self.weights @ state)

    def evaluate(self, elements: Iterable[int]) -> float:
        return self.value(self.state_of(elements))


class OracleCounter:
    """Value-oracle access to a :class:`FacilityLocation` with a query counter.

    ``gains(state, E)`` charges ``len(E)`` queries, ``gain`` one, ``evaluate(S)`` and
    ``state_of(S)`` one (a fresh evaluation of f on S); ``add`` and ``value`` are free, since
    they only reuse what a charged gain already revealed.
    """

    def __init__(self, objective: FacilityLocation) -> None:
        self.objective = objective
        self.queries = 0

    @property
    def n_elements(self) -> int:
        return self.objective.n_elements

    def reset(self) -> None:
        self.queries = 0

    def empty_state(self) -> np.ndarray:
        return self.objective.empty_state()

    def gains(self, state: np.ndarray, elements: np.ndarray) -> np.ndarray:
        out = self.objective.gains(state, elements)
        self.queries += out.size
        return out

    def gain(self, state: np.ndarray, element: int) -> float:
        self.queries += 1
        return self.objective.gain(state, element)

    def state_of(self, elements: Iterable[int]) -> np.ndarray:
        self.queries += 1
        return self.objective.state_of(elements)

    def evaluate(self, elements: Iterable[int]) -> float:
        self.queries += 1
        return self.objective.evaluate(elements)

    def add(self, state: np.ndarray, element: int) -> np.ndarray:
        return self.objective.add(state, element)

    def value(self, state: np.ndarray) -> float:
        return self.objective.value(state)


def digits_facility_location(
    n_clients: int, rng: np.random.Generator, *, gamma: float | None = None
) -> tuple[FacilityLocation, np.ndarray, float]:
    """Facility location on scikit-learn's digits: all 1797 images (pixels / 16) are
    elements, a random sample of ``n_clients`` images are the clients, and
    sim = exp(-gamma |x - y|^2), the RBF kernel.

    ``gamma`` defaults to 1 / median squared distance between clients and elements. Returns
    the objective, the clients' image indices and gamma.
    """
    from sklearn.datasets import load_digits
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    X = load_digits().data
    if not 1 <= n_clients <= len(X):
        raise ValueError(f"n_clients must be in [1, {len(X)}], got {n_clients}")
    X = X / 16.0
    chosen = rng.choice(len(X), size=n_clients, replace=False)
    clients = X[chosen]
    if gamma is None:
        gamma = 1.0 / float(np.median(euclidean_distances(clients, X, squared=True)))
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return FacilityLocation(rbf_kernel(clients, X, gamma=gamma)), chosen, float(gamma)


def random_coverage(n_items: int, n_sets: int, density: float, rng: np.random.Generator,
                    *, weighted: bool = True) -> FacilityLocation:  # fmt: skip
    """Weighted coverage as a 0/1 facility location: set j covers item i with probability
    ``density`` (every set covers at least one item); item weights uniform on [0.5, 1.5]."""
    if n_items < 1 or n_sets < 1:
        raise ValueError(f"need n_items >= 1 and n_sets >= 1, got {n_items}, {n_sets}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    cover = rng.random((n_items, n_sets)) < density
    cover[rng.integers(n_items, size=n_sets), np.arange(n_sets)] = True
    weights = rng.uniform(0.5, 1.5, n_items) if weighted else np.ones(n_items)
    return FacilityLocation(cover.astype(float), weights)
