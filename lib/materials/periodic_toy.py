"""A 2-D periodic crystal toy: square cells holding a few atoms of two types.

A structure is a padded batch: fractional coordinates ``frac`` in [0, 1)^2 (B, N_max, 2),
atom types ``types`` in {0, 1} (B, N_max), a ``mask`` of real atoms (B, N_max) and the cell
side ``side`` (B,). All distances follow the minimum-image convention, the 2-D analogue of
the periodic multi-graph CDVAE builds (Xie et al., ICLR 2022, Sec. 3): each pair interacts
through the nearest of its periodic images.

The "stable" structures are local minima of a type-dependent Morse pair energy, found by
relaxing random placements; the cell side is a fixed function of the composition (the toy's
stand-in for CDVAE's lattice prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Morse parameters per type pair: equilibrium distance, well depth; one range for all.
R0 = np.array([[1.0, 1.15], [1.15, 1.3]])
DEPTH = np.array([[1.0, 1.25], [1.25, 0.8]])
RANGE = 4.0
AREA_PER_ATOM = np.sqrt(3) / 2 * np.diag(R0) ** 2  # hexagonal packing at the pair minimum


@dataclass
class Structures:
    """A padded batch of periodic 2-D structures (see the module docstring)."""

    frac: np.ndarray
    types: np.ndarray
    mask: np.ndarray
    side: np.ndarray

    def __post_init__(self) -> None:
        self.frac = np.asarray(self.frac, dtype=float)
        self.types = np.asarray(self.types, dtype=int)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.side = np.asarray(self.side, dtype=float)
        b, n = self.mask.shape
        if self.frac.shape != (b, n, 2) or self.types.shape != (b, n) or self.side.shape != (b,):
            raise ValueError(f"inconsistent shapes: frac {self.frac.shape}, types "
                             f"{self.types.shape}, mask {self.mask.shape}, side {self.side.shape}")
        if np.any(self.side <= 0):
            raise ValueError("cell sides must be positive")
        if np.any((self.types < 0) | (self.types > 1)):
            raise ValueError("atom types must be 0 or 1")

    def __len__(self) -> int:
        return len(self.side)

    @property
    def n_atoms(self) -> np.ndarray:
        return self.mask.sum(1)

    @property
    def n_b(self) -> np.ndarray:
        return ((self.types == 1) & self.mask).sum(1)

    def subset(self, index) -> Structures:
        return Structures(self.frac[index], self.types[index], self.mask[index], self.side[index])


def cell_side(n_a: np.ndarray | int, n_b: np.ndarray | int) -> np.ndarray:
    """Square cell side for a composition: the area hexagonal packing at the pair minima needs."""
    n_a, n_b = np.asarray(n_a), np.asarray(n_b)
    if np.any(n_a < 0) or np.any(n_b < 0) or np.any(n_a + n_b < 1):
        raise ValueError("a cell needs a non-negative number of each type and at least one atom")
    return np.sqrt(n_a * AREA_PER_ATOM[0] + n_b * AREA_PER_ATOM[1])


def min_image(dfrac: np.ndarray) -> np.ndarray:
    """Minimum-image fractional displacement: each component wrapped into [-1/2, 1/2)."""
    return dfrac - np.floor(dfrac + 0.5)


def pair_vectors(s: Structures, periodic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cartesian vectors d[b, i, j] = x_j - x_i (minimum image when ``periodic``) and lengths."""
    d = s.frac[:, None, :, :] - s.frac[:, :, None, :]
    if periodic:
        d = min_image(d)
    d = d * s.side[:, None, None, None]
    return d, np.linalg.norm(d, axis=-1)


def _pair_table(s: Structures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ti, tj = s.types[:, :, None], s.types[:, None, :]
    valid = s.mask[:, :, None] & s.mask[:, None, :] & ~np.eye(s.mask.shape[1], dtype=bool)
    return R0[ti, tj], DEPTH[ti, tj], valid


def pair_energy(s: Structures, periodic: bool = True) -> np.ndarray:
    """Energy per atom, (1/N) sum_{i<j} D_ij [(1 - exp(-a (r_ij - r0_ij)))^2 - 1], r_ij the
    minimum-image distance (plain Euclidean in the cell when ``periodic`` is False)."""
    _, r = pair_vectors(s, periodic)
    r0, depth, valid = _pair_table(s)
    v = depth * ((1 - np.exp(-RANGE * (r - r0))) ** 2 - 1)
    return 0.5 * np.where(valid, v, 0.0).sum((1, 2)) / s.n_atoms


def energy_gradient(s: Structures) -> np.ndarray:
    """Gradient of the total (not per-atom) energy with respect to Cartesian positions,
    (B, N_max, 2); zero on padded atoms."""
    d, r = pair_vectors(s)
    r0, depth, valid = _pair_table(s)
    e = np.exp(-RANGE * (r - r0))
    dv_dr = 2 * depth * RANGE * (1 - e) * e
    unit = d / np.where(valid, r, 1.0)[..., None]
    # d r_ij / d x_i = -unit_ij; both orders of the pair are in the sum, hence no factor 1/2
    return -np.where(valid, dv_dr, 0.0)[..., None].__mul__(unit).sum(2)


def min_distance_ratio(s: Structures) -> np.ndarray:
    """Smallest pair distance relative to that pair's equilibrium distance r0 (per structure)."""
    _, r = pair_vectors(s)
    r0, _, valid = _pair_table(s)
    return np.where(valid, r / r0, np.inf).min((1, 2))


def structural_validity(s: Structures, threshold: float = 0.7) -> np.ndarray:
    """CDVAE's structural validity (no pair closer than a cutoff; 0.5 A there), here relative
    to the pair potential: valid when every pair is at least ``threshold`` x its r0 apart."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return min_distance_ratio(s) >= threshold


def random_compositions(n: int, rng: np.random.Generator, n_atoms: tuple[int, int] = (4, 6)
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Draw (N, n_B) uniformly: N in the closed range ``n_atoms``, 1 <= n_B <= N - 1."""
    lo, hi = n_atoms
    if lo < 2 or hi < lo:
        raise ValueError(f"n_atoms must be a range (lo, hi) with 2 <= lo <= hi, got {n_atoms}")
    counts = rng.integers(lo, hi + 1, size=n)
    n_b = np.array([rng.integers(1, c) for c in counts])
    return counts, n_b


def place_atoms(counts: np.ndarray, n_b: np.ndarray, n_max: int,
                rng: np.random.Generator) -> Structures:
    """Uniform random placement (the random-placement baseline, and the relaxation's start):
    atoms 0..N-n_B-1 of type 0, the next n_B of type 1, the rest padding."""
    counts, n_b = np.asarray(counts), np.asarray(n_b)
    if np.any(counts > n_max) or np.any(n_b > counts) or np.any(n_b < 0):
        raise ValueError("need 0 <= n_B <= N <= n_max for every structure")
    idx = np.arange(n_max)[None, :]
    mask = idx < counts[:, None]
    types = ((idx >= (counts - n_b)[:, None]) & mask).astype(int)
    frac = rng.random((len(counts), n_max, 2))
    return Structures(frac, types, mask, cell_side(counts - n_b, n_b))


def relax(s: Structures, steps: int = 400, lr: float = 0.004, max_move: float = 0.05,
          tol: float = 1e-4) -> tuple[Structures, np.ndarray]:
    """Gradient descent on the total energy, each structure with its own step size (grown by
    10 % after a step that lowers its energy, halved and undone after one that raises it) and
    each atom's move capped at ``max_move``. Returns the relaxed structures (wrapped into the
    cell) and a flag per structure that the largest force fell below ``tol``."""
    if steps < 1 or lr <= 0 or max_move <= 0:
        raise ValueError("steps, lr and max_move must be positive")
    cur = Structures(s.frac.copy(), s.types, s.mask, s.side)
    rate = np.full(len(cur), lr)
    energy = pair_energy(cur) * cur.n_atoms
    grad = energy_gradient(cur)
    for _ in range(steps):
        step = -rate[:, None, None] * grad
        norm = np.linalg.norm(step, axis=-1, keepdims=True)
        step *= np.minimum(1.0, max_move / np.maximum(norm, 1e-12))
        trial = Structures((cur.frac + step / cur.side[:, None, None]) % 1.0, cur.types,
                           cur.mask, cur.side)
        trial_energy = pair_energy(trial) * cur.n_atoms
        better = trial_energy <= energy
        cur.frac[better] = trial.frac[better]
        energy[better] = trial_energy[better]
        rate = np.where(better, rate * 1.1, rate * 0.5)
        grad = energy_gradient(cur)
    force = np.linalg.norm(grad, axis=-1).max(1)
    return cur, force < tol


def make_periodic_toy(n: int, seed: int, n_atoms: tuple[int, int] = (4, 6)) -> Structures:
    """``n`` stable toy crystals: random compositions and placements relaxed to local minima of
    the pair energy (structures that do not converge are redrawn)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    n_max = n_atoms[1]
    kept: list[Structures] = []
    have = 0
    while have < n:
        want = int(1.3 * (n - have)) + 8
        counts, n_b = random_compositions(want, rng, n_atoms)
        relaxed, ok = relax(place_atoms(counts, n_b, n_max, rng))
        kept.append(relaxed.subset(ok))
        have += int(ok.sum())
    out = concat(kept)
    return out.subset(np.arange(n))


def concat(parts: list[Structures]) -> Structures:
    """Stack batches with the same N_max."""
    return Structures(*(np.concatenate([getattr(p, k) for p in parts])
                        for k in ("frac", "types", "mask", "side")))
