"""Match periodic 2-D structures up to lattice shifts, permutations and the cell's symmetries.

The toy's stand-in for pymatgen's ``StructureMatcher``, which CDVAE uses for its reconstruction
match rate (stol = 0.5, ltol = 0.3, angle_tol = 10; Sec. 4.1 of the paper). Two structures
match when they have the same cell and composition and, after the best translation, one of the
8 symmetries of the square and the best type-preserving assignment of atoms (Hungarian, via
``scipy.optimize.linear_sum_assignment``), the root-mean-square minimum-image displacement,
divided by sqrt(cell area / N), is at most ``tol``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from lib.materials.periodic_toy import Structures, min_image

# the 8 symmetries of the square cell (rotations by 90 degrees and reflections)
SQUARE_SYMMETRIES = np.array([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]],
                              [[0, 1], [-1, 0]], [[1, 0], [0, -1]], [[-1, 0], [0, 1]],
                              [[0, 1], [1, 0]], [[0, -1], [-1, 0]]])


def _assign(a: np.ndarray, b: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray,
                                                                                       np.ndarray]:
    d = min_image(b[None, :, :] - a[:, None, :])
    cost = (d ** 2).sum(-1) + 1e6 * (ta[:, None] != tb[None, :])
    rows, cols = linear_sum_assignment(cost)
    return cols, d[rows, cols]


def rms_distance(a_frac: np.ndarray, a_types: np.ndarray, b_frac: np.ndarray,
                 b_types: np.ndarray, side: float) -> float:
    """Smallest normalised RMS displacement between two structures of one cell (fractional
    coordinates (N, 2), no padding), over translations, square symmetries and assignments.
    Returns inf when the compositions differ."""
    a_frac, b_frac = np.asarray(a_frac, float), np.asarray(b_frac, float)
    a_types, b_types = np.asarray(a_types), np.asarray(b_types)
    if a_frac.ndim != 2 or a_frac.shape[1] != 2 or b_frac.ndim != 2 or b_frac.shape[1] != 2:
        raise ValueError("coordinates must have shape (N, 2)")
    if len(a_frac) != len(a_types) or len(b_frac) != len(b_types):
        raise ValueError("one type per atom is needed")
    if len(a_frac) != len(b_frac) or sorted(a_types) != sorted(b_types):
        return float("inf")
    best = np.inf
    anchor = 0
    for g in SQUARE_SYMMETRIES:
        bg = (b_frac @ g.T) % 1.0
        for j in np.flatnonzero(b_types == a_types[anchor]):
            shift = a_frac[anchor] - bg[j]
            cand = (bg + shift) % 1.0
            for _ in range(3):  # assignment, then the translation that best fits it
                _, d = _assign(a_frac, cand, a_types, b_types)
                cand = (cand - np.mean(d, axis=0)) % 1.0
            _, d = _assign(a_frac, cand, a_types, b_types)
            best = min(best, float(np.sqrt((d ** 2).sum(-1).mean())))
    return best * side / np.sqrt(side ** 2 / len(a_frac))


def distances(a: Structures, b: Structures) -> np.ndarray:
    """Row-wise normalised RMS distances between two batches (inf where N, composition or the
    cell differ)."""
    if len(a) != len(b):
        raise ValueError(f"batches differ in length: {len(a)} vs {len(b)}")
    out = np.full(len(a), np.inf)
    for k in range(len(a)):
        if not np.isclose(a.side[k], b.side[k]):
            continue
        ma, mb = a.mask[k], b.mask[k]
        out[k] = rms_distance(a.frac[k][ma], a.types[k][ma], b.frac[k][mb], b.types[k][mb],
                              a.side[k])
    return out


def match_rate(a: Structures, b: Structures, tol: float = 0.3) -> float:
    """Fraction of rows whose structures match within ``tol`` (normalised RMS displacement)."""
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    return float(np.mean(distances(a, b) <= tol))
