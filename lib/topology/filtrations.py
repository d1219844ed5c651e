"""Filtrations of point clouds: one-parameter Rips persistence and function-Rips bifiltrations.

A *function-Rips bifiltration* of a point cloud ``X`` with a function ``f`` on its points
filters the Rips complex by two parameters at once: a simplex enters at
``(diameter, max of f over its vertices)``. With ``f`` a *codensity* (low where points are
dense) the second parameter lets a later analysis ignore sparse outliers, which a
one-parameter Rips filtration cannot do. This is the bifiltration used for point clouds by
Loiseaux, Carrière and Blumberg (NeurIPS 2023, Section 5) and by most multiparameter
persistence papers; it is kept general here (any vertex function, any complex given by its
simplices) so that other chapters can reuse it.

``multipers`` is imported through :func:`import_multipers` only: importing it prints a
"[KeOps] Warning" line on stdout (pykeops looks for CUDA), which must not reach a chapter.
Building a ``multipers.SimplexTreeMulti`` from a gudhi simplex tree, and multipers'
``RipsCodensity`` filtration, crashed the interpreter with the pinned versions (gudhi 3.13,
multipers 2.3.2); :meth:`FunctionRips.to_simplex_tree_multi` therefore inserts simplices one
by one, a route covered by a subprocess test in ``tests/test_topology_mma.py``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from typing import Any

import numpy as np

SHAPES = ("circle", "two circles", "blob")


@cache
def import_multipers() -> Any:
    """Import ``multipers`` once, with its import-time chatter kept off the chapter's output.

    pykeops (imported by multipers) prints "[KeOps] Warning : CUDA libraries not found" with
    ``print`` on machines without CUDA; we capture that stdout text and drop it.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        import multipers
    return multipers


def _check_points(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"X must be an (n_points, dim) array with n_points >= 2, got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite coordinates")
    return X


def codensity(X: np.ndarray, bandwidth: float) -> np.ndarray:
    """Codensity ``-log p(x)`` of each point under a Gaussian kernel density estimate of ``X``.

    ``p`` is scikit-learn's ``KernelDensity`` fitted on ``X`` itself; low values mark dense
    regions, high values outliers. This is the second filtration parameter of a
    Rips-codensity bifiltration.
    """
    from sklearn.neighbors import KernelDensity

    X = _check_points(X)
    if not bandwidth > 0:
        raise ValueError(f"the KDE bandwidth must be positive, got {bandwidth}")
    return -KernelDensity(bandwidth=bandwidth).fit(X).score_samples(X)


def rips_simplices(X: np.ndarray, r_max: float, max_dim: int = 2) -> list[tuple[int, ...]]:
    """Simplices of the Rips complex of ``X`` up to diameter ``r_max`` and dimension ``max_dim``,
    faces before cofaces (computed with gudhi)."""
    import gudhi

    X = _check_points(X)
    if not r_max > 0:
        raise ValueError(f"r_max must be positive, got {r_max}")
    if max_dim < 0:
        raise ValueError(f"max_dim must be non-negative, got {max_dim}")
    tree = gudhi.RipsComplex(points=X, max_edge_length=r_max).create_simplex_tree(
        max_dimension=max_dim
    )
    simplices = [tuple(s) for s, _ in tree.get_simplices()]
    return sorted(simplices, key=len)


@dataclass(frozen=True)
class FunctionRips:
    """A function-Rips bifiltration: each simplex with its (diameter, max f) grade.

    ``simplices`` lists vertex tuples with faces before cofaces; ``values[i]`` is the grade
    of ``simplices[i]`` in R^2 (first parameter the Rips scale, second the function).
    """

    simplices: list[tuple[int, ...]]
    values: np.ndarray

    def to_simplex_tree_multi(self, collapse_to_dim: int | None = None) -> Any:
        """The bifiltration as a ``multipers.SimplexTreeMulti`` (simplices inserted one by one,
        the route that works with the pinned gudhi and multipers).

        With ``collapse_to_dim=k`` only vertices and edges are inserted, the edges are pruned
        by multipers' two-parameter edge collapse (Alonso, Kerber and Pritam, "Filtration-
        domination in bifiltered graphs", 2023), which keeps the persistence module of the
        clique bifiltration up to isomorphism, and the flag complex is expanded back to
        dimension ``k``. Valid because a function-Rips grade is determined by the edges:
        diameter and max f of a simplex are the maxima over its edges.
        """
        mp = import_multipers()
        tree = mp.SimplexTreeMulti(num_parameters=2)
        for simplex, grade in zip(self.simplices, self.values):
            if collapse_to_dim is not None and len(simplex) > 2:
                break  # simplices are sorted by size: the 1-skeleton is complete
            tree.insert(list(simplex), [float(grade[0]), float(grade[1])])
        if collapse_to_dim is not None:
            if collapse_to_dim < 1:
                raise ValueError(f"collapse_to_dim must be at least 1, got {collapse_to_dim}")
            if tree.num_vertices > 1:
                tree.collapse_edges(-1)
            tree.expansion(collapse_to_dim)
        return tree

    def bounds(self) -> np.ndarray:
        """The smallest box ``[[lo_r, lo_f], [hi_r, hi_f]]`` containing every grade."""
        return np.array([self.values.min(axis=0), self.values.max(axis=0)])


def function_rips_values(
    X: np.ndarray, f: np.ndarray, simplices: list[tuple[int, ...]]
) -> np.ndarray:
    """Grades ``(diameter(s), max_{v in s} f(v))`` of the given simplices, shape ``(m, 2)``.

    The diameter is the longest Euclidean edge (0 for a vertex), as in gudhi's Rips complex;
    the second coordinate is the lower-star filtration of ``f``. Both are monotone under
    taking faces, so the grades define a bifiltration of any simplicial complex on ``X``.
    """
    X = _check_points(X)
    f = np.asarray(f, dtype=float)
    if f.shape != (X.shape[0],):
        raise ValueError(f"f must have one value per point, shape ({X.shape[0]},), got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("f contains NaN or infinite values")
    values = np.zeros((len(simplices), 2))
    dist = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(simplices):
        if len(s) == 0 or min(s) < 0 or max(s) >= X.shape[0]:
            raise ValueError(f"simplex {s} is empty or has a vertex outside 0..{X.shape[0] - 1}")
        by_size.setdefault(len(s), []).append(i)
    for size, rows in by_size.items():
        verts = np.array([simplices[i] for i in rows])
        diam = np.zeros(len(rows))
        for a, b in combinations(range(size), 2):
            diam = np.maximum(diam, dist[verts[:, a], verts[:, b]])
        values[rows, 0] = diam
        values[rows, 1] = f[verts].max(axis=1)
    return values


def function_rips_bifiltration(
    X: np.ndarray,
    f: np.ndarray,
    r_max: float,
    max_dim: int = 2,
    simplices: list[tuple[int, ...]] | None = None,
) -> FunctionRips:
    """The function-Rips bifiltration of ``(X, f)``: the Rips complex up to ``r_max`` (or the
    given ``simplices``, e.g. those of an unperturbed cloud) graded by (diameter, max f)."""
    if simplices is None:
        simplices = rips_simplices(X, r_max, max_dim)
    simplices = sorted((tuple(s) for s in simplices), key=len)
    return FunctionRips(simplices, function_rips_values(X, f, simplices))


def rips_diagrams(
    X: np.ndarray, r_max: float, degrees: tuple[int, ...] = (0, 1)
) -> dict[int, np.ndarray]:
    """One-parameter Rips persistence diagrams of ``X`` (gudhi), ``{degree: (k, 2) array}``;
    deaths beyond ``r_max`` (essential classes) are set to ``r_max``."""
    import gudhi

    X = _check_points(X)
    if not r_max > 0:
        raise ValueError(f"r_max must be positive, got {r_max}")
    tree = gudhi.RipsComplex(points=X, max_edge_length=r_max).create_simplex_tree(
        max_dimension=max(degrees) + 1
    )
    tree.compute_persistence()
    out = {}
    for d in degrees:
        dgm = np.asarray(tree.persistence_intervals_in_dimension(d), dtype=float).reshape(-1, 2)
        out[d] = np.minimum(dgm, r_max)
    return out


def sample_shape_cloud(
    shape: str,
    n_points: int,
    outlier_fraction: float,
    rng: np.random.Generator,
    noise: float = 0.05,
    half_width: float = 1.5,
    scale: float = 1.0,
) -> np.ndarray:
    """A noisy planar point cloud: ``shape`` ("circle" of radius 1, "two circles" of radius 0.5
    centred at (+-0.75, 0), or a Gaussian "blob" of scale 0.35; all lengths times ``scale``)
    sampled with Gaussian noise, with a fraction of the points replaced by outliers uniform
    on ``[-half_width, half_width]^2``.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    if not (scale > 0 and half_width > 0 and noise >= 0):
        raise ValueError(
            f"need scale > 0, half_width > 0 and noise >= 0, got {scale}, {half_width}, {noise}"
        )
    if not 0 <= outlier_fraction < 1:
        raise ValueError(f"outlier_fraction must be in [0, 1), got {outlier_fraction}")
    n_out = int(round(outlier_fraction * n_points))
    n_in = n_points - n_out
    if shape == "blob":
        inliers = 0.35 * rng.normal(size=(n_in, 2))
    else:
        angle = rng.uniform(0, 2 * np.pi, n_in)
        unit = np.c_[np.cos(angle), np.sin(angle)]
        if shape == "circle":
            inliers = unit
        else:
            side = np.where(rng.random(n_in) < 0.5, -0.75, 0.75)
            inliers = 0.5 * unit + np.c_[side, np.zeros(n_in)]
        inliers = inliers + noise * rng.normal(size=(n_in, 2))
    inliers = scale * inliers
    outliers = rng.uniform(-half_width, half_width, size=(n_out, 2))
    return np.vstack([inliers, outliers])


def shape_cloud_dataset(
    n_per_class: int,
    n_points: int,
    outlier_fraction: float,
    rng: np.random.Generator,
    **shape_kwargs: float,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``n_per_class`` clouds of each shape in :data:`SHAPES` (keywords go to
    :func:`sample_shape_cloud`); returns (clouds, labels 0..2)."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    clouds, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(n_per_class):
            cloud = sample_shape_cloud(shape, n_points, outlier_fraction, rng, **shape_kwargs)
            clouds.append(cloud)
            labels.append(label)
    return clouds, np.array(labels)
