"""Vector representations of multiparameter persistence decompositions (Loiseaux, Carrière and
Blumberg, "A Framework for Fast and Stable Representations of Multiparameter Persistent
Homology Decompositions", NeurIPS 2023, arXiv:2306.11170).

A two-parameter persistence module is approximated by a direct sum of interval modules
``M = M_1 + ... + M_m`` with MMA, the module approximation of the same authors (computed here by
``multipers.module_approximation``). Each summand ``M_i`` is stored as a staircase: its minimal
*birth corners* ``b`` and maximal *death corners* ``d``; its support is the union of the
rectangles ``[b, d]`` over comparable pairs ``b <= d``. The paper's framework (its Section 3)
turns such a decomposition into an image on a fixed grid of the parameter plane,

    V(M)(x) = sum_i w(M_i)^p K_sigma(x, M_i)  [/ sum_i w(M_i)^p when normalised],

with

* ``w(M_i)`` the summand's weight: the length of the longest diagonal segment inside its
  support (restricted to the box), i.e. twice its interleaving distance to the zero module;
* ``K_sigma(x, M_i)`` a kernel of the sup-norm distance from the pixel ``x`` to the support
  (Gaussian or exponential), or the "linear" local weight ``w(supp M_i cap B(x, sigma)) /
  (2 sigma)``, the share of the sup-norm ball around ``x`` that the summand fills diagonally.

The power ``p`` is what makes the representation stable: a summand whose weight tends to zero
contributes ``w^p -> 0`` when ``p > 0``, whereas with ``p = 0`` (all summands count the same)
a vanishingly small summand still adds a full kernel bump, so the image jumps.

Everything after the MMA call is numpy, written for this book: the weights, the exact sup-norm
distance to a staircase and the three kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.topology.filtrations import FunctionRips, import_multipers

KERNELS = ("gaussian", "exponential", "linear")


@dataclass(frozen=True)
class Summand:
    """One interval summand of a decomposition: birth corners ``(k, n)``, death corners
    ``(l, n)`` (entries may be +-inf), and the homological degree."""

    births: np.ndarray
    deaths: np.ndarray
    degree: int

    def rectangles(self) -> tuple[np.ndarray, np.ndarray]:
        """The support as a union of rectangles ``[lower_j, upper_j]``: all pairs of a birth
        corner and a death corner with ``birth <= death``; shapes ``(q, n)`` and ``(q, n)``."""
        b = self.births[:, None, :]
        d = self.deaths[None, :, :]
        comparable = np.all(b <= d, axis=-1)
        bi, di = np.nonzero(comparable)
        return self.births[bi], self.deaths[di]


@dataclass(frozen=True)
class Decomposition:
    """A candidate decomposition ``M = sum_i M_i`` of a module, with the box it was computed on."""

    summands: tuple[Summand, ...]
    box: np.ndarray

    def of_degree(self, degree: int) -> Decomposition:
        """The summands of one homological degree."""
        return Decomposition(tuple(s for s in self.summands if s.degree == degree), self.box)

    def __len__(self) -> int:
        return len(self.summands)


def _corners(raw: Any, n: int) -> np.ndarray:
    """multipers stores an all-infinite corner as a single value (``[[inf]]``); broadcast it."""
    arr = np.asarray(raw, dtype=float)
    arr = arr.reshape(len(arr), -1) if arr.size else np.empty((0, n))
    if arr.shape[1] != n:
        arr = np.repeat(arr[:, :1], n, axis=1)
    return arr


def _check_box(box: Any, n: int | None = None) -> np.ndarray:
    box = np.asarray(box, dtype=float)
    if n is None:
        n = box.shape[1] if box.ndim == 2 else 2
    if box.shape != (2, n):
        raise ValueError(f"box must be [[lower...], [upper...]] of shape (2, {n}), got {box.shape}")
    if not np.all(np.isfinite(box)) or not np.all(box[0] < box[1]):
        raise ValueError(f"box needs finite corners with lower < upper in every coordinate: {box}")
    return box


def decomposition_from_dump(dump: Any) -> Decomposition:
    """Read ``PyModule.dump()`` of multipers, ``(box, ((births, deaths, degree), ...))``; empty
    summands (a birth at +inf or a death at -inf) are dropped."""
    box = np.asarray(dump[0], dtype=float)
    n = box.shape[1]
    summands = []
    for births, deaths, degree in dump[1]:
        b, d = _corners(births, n), _corners(deaths, n)
        if len(b) == 0 or len(d) == 0 or np.all(b == np.inf) or np.all(d == -np.inf):
            continue
        summands.append(Summand(b, d, int(degree)))
    return Decomposition(tuple(summands), box)


def mma_decomposition(
    filtration: FunctionRips | Any,
    max_error: float = 0.02,
    box: np.ndarray | None = None,
    n_jobs: int = 1,
    collapse_to_dim: int | None = 2,
) -> Decomposition:
    """Approximate the persistence module of a bifiltration by interval summands with MMA
    (``multipers.module_approximation``), in every homological degree.

    ``max_error`` is MMA's precision: the spacing of the lines it slices the plane with and an
    upper bound of its error in bottleneck distance when the module is interval decomposable.
    ``filtration`` is a :class:`~lib.topology.filtrations.FunctionRips` (checked for finite
    grades before anything reaches the C++ code) or a ``multipers.SimplexTreeMulti``. A
    ``FunctionRips`` is edge-collapsed and re-expanded to ``collapse_to_dim`` first (same
    module, far fewer simplices; ``None`` inserts every simplex as given).
    """
    if not max_error > 0:
        raise ValueError(f"max_error must be positive, got {max_error}")
    if isinstance(filtration, FunctionRips):
        if len(filtration.simplices) == 0:
            raise ValueError("the bifiltration has no simplices")
        if not np.all(np.isfinite(filtration.values)):
            raise ValueError("the bifiltration has NaN or infinite grades")
        tree = filtration.to_simplex_tree_multi(collapse_to_dim=collapse_to_dim)
    else:
        tree = filtration
    mp = import_multipers()
    kwargs: dict[str, Any] = dict(max_error=float(max_error), n_jobs=n_jobs)
    if box is not None:
        kwargs["box"] = _check_box(box)
    module = mp.module_approximation(tree, **kwargs)
    return decomposition_from_dump(module.dump())


def _stack(decomposition: Decomposition) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All rectangles of all summands: lower ``(Q, n)``, upper ``(Q, n)``, owner index ``(Q,)``."""
    lows, ups, owner = [], [], []
    for i, s in enumerate(decomposition.summands):
        lo, up = s.rectangles()
        lows.append(lo)
        ups.append(up)
        owner.append(np.full(len(lo), i))
    n = decomposition.box.shape[1]
    if not lows:
        return np.empty((0, n)), np.empty((0, n)), np.empty(0, dtype=int), 0
    return np.vstack(lows), np.vstack(ups), np.concatenate(owner), len(decomposition.summands)


def _reduce_by_owner(
    values: np.ndarray, owner: np.ndarray, m: int, reduce: np.ufunc, fill: float
) -> np.ndarray:
    """Reduce the rectangle axis (last) of ``values`` to one value per summand with ``reduce``
    (``np.minimum`` or ``np.maximum``); summands without rectangles get ``fill``."""
    out = np.full(values.shape[:-1] + (m,), fill)
    has = np.bincount(owner, minlength=m) > 0
    if has.any():
        order = np.argsort(owner, kind="stable")
        starts = np.searchsorted(owner[order], np.flatnonzero(has))
        out[..., has] = reduce.reduceat(values[..., order], starts, axis=-1)
    return out


def summand_weights(decomposition: Decomposition, box: np.ndarray | None = None) -> np.ndarray:
    """The weight ``w(M_i)`` of every summand: the longest diagonal segment (sup-norm length)
    inside its support intersected with ``box`` (default: the decomposition's box).

    For a rectangle ``[b, d]`` clipped to the box this is ``min_k (d_k - b_k)``; for a staircase,
    the largest value over its rectangles; 0 for a summand that misses the box. It is twice
    the interleaving distance from the summand to the zero module.
    """
    box = _check_box(decomposition.box if box is None else box, decomposition.box.shape[1])
    lo, up, owner, m = _stack(decomposition)
    if m == 0:
        return np.zeros(0)
    side = np.minimum(up, box[1]) - np.maximum(lo, box[0])
    per_rect = np.clip(side.min(axis=1), 0, None)
    return _reduce_by_owner(per_rect, owner, m, np.maximum, 0.0)


def diagonal_line_span(box: np.ndarray, origin: np.ndarray) -> tuple[float, float]:
    """The parameters ``t_lo < t_hi`` between which the diagonal line ``origin + t (1, ..., 1)``
    lies inside ``box``; raises if the line misses the box's interior."""
    box = _check_box(box)
    origin = np.asarray(origin, dtype=float).ravel()
    if origin.shape != (box.shape[1],) or not np.all(np.isfinite(origin)):
        raise ValueError(f"origin must be a finite point of R^{box.shape[1]}, got {origin}")
    t_lo, t_hi = float(np.max(box[0] - origin)), float(np.min(box[1] - origin))
    if not t_lo < t_hi:
        raise ValueError(f"the diagonal line through {origin} misses the box {box.tolist()}")
    return t_lo, t_hi


def barcode_on_line(decomposition: Decomposition, origin: np.ndarray, degree: int) -> np.ndarray:
    """The one-parameter barcode that the decomposition gives on the diagonal line
    ``l(t) = origin + t (1, ..., 1)``, restricted to the decomposition's box: one bar
    ``[t_birth, t_death]`` per summand of ``degree`` that the line meets, shape ``(k, 2)``.

    A rectangle ``[b, d]`` meets the line for ``max_k (b_k - o_k) <= t <= min_k (d_k - o_k)``;
    the support of an interval summand (a staircase) is convex along a monotone line, so
    its trace is the hull of its rectangles' traces. MMA builds its summands by matching bars
    on such lines (Loiseaux, Carrière and Blumberg's module approximation), so on any diagonal
    line this barcode should be the line's own persistence barcode, up to MMA's ``max_error``
    when the module is interval decomposable.
    """
    t_lo, t_hi = diagonal_line_span(decomposition.box, origin)
    origin = np.asarray(origin, dtype=float).ravel()
    bars = []
    for summand in decomposition.summands:
        if summand.degree != degree:
            continue
        lo, up = summand.rectangles()
        if len(lo) == 0:
            continue
        enter, leave = np.max(lo - origin, axis=1), np.min(up - origin, axis=1)
        meets = enter < leave
        if meets.any():
            a, b = max(enter[meets].min(), t_lo), min(leave[meets].max(), t_hi)
            if a < b:
                bars.append((a, b))
    return np.array(bars, dtype=float).reshape(-1, 2)


def _check_points(points: np.ndarray, n: int) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim == 1:
        points = points[None]
    if points.ndim != 2 or points.shape[1] != n or not np.all(np.isfinite(points)):
        raise ValueError(f"points must be a finite (n_points, {n}) array, got shape {points.shape}")
    return points


def distances_to_summands(points: np.ndarray, decomposition: Decomposition) -> np.ndarray:
    """Sup-norm distance from each point to the support of each summand, ``(n_points, m)``.

    The support is the union of its rectangles, and the sup-norm distance from ``x`` to
    ``[b, d]`` is ``max_k max(b_k - x_k, x_k - d_k, 0)``; the distance to the support is the
    minimum over rectangles (exact, also for staircases whose nearest birth and death corners
    are not comparable). It is 0 inside the support and 1-Lipschitz in ``x``.
    """
    n = decomposition.box.shape[1]
    points = _check_points(points, n)
    lo, up, owner, m = _stack(decomposition)
    if m == 0:
        return np.zeros((len(points), 0))
    x = points[:, None, :]
    gap = np.maximum(np.maximum(lo[None] - x, x - up[None]), 0).max(axis=-1)  # (P, Q)
    return _reduce_by_owner(gap, owner, m, np.minimum, np.inf)


def local_weights(points: np.ndarray, decomposition: Decomposition, delta: float) -> np.ndarray:
    """The "linear" kernel: ``w(supp M_i cap B(x, delta)) / (2 delta)`` for each point ``x`` and
    summand, ``(n_points, m)``, with ``B(x, delta)`` the sup-norm ball (a square of side
    ``2 delta``). It lies in [0, 1]: 1 when the summand fills the ball's diagonal, 0 when it
    misses the ball, and it never exceeds ``w(M_i) / (2 delta)``."""
    if not delta > 0:
        raise ValueError(f"the bandwidth delta must be positive, got {delta}")
    n = decomposition.box.shape[1]
    points = _check_points(points, n)
    lo, up, owner, m = _stack(decomposition)
    if m == 0:
        return np.zeros((len(points), 0))
    x = points[:, None, :]
    side = np.minimum(up[None], x + delta) - np.maximum(lo[None], x - delta)
    per_rect = np.clip(side.min(axis=-1), 0, None)  # (P, Q)
    return _reduce_by_owner(per_rect, owner, m, np.maximum, 0.0) / (2 * delta)


def kernel_matrix(
    points: np.ndarray, decomposition: Decomposition, bandwidth: float, kernel: str = "gaussian"
) -> np.ndarray:
    """``K_sigma(x, M_i)`` for every point and summand, ``(n_points, m)``: ``exp(-d^2 / (2
    sigma^2))`` ("gaussian"), ``exp(-d / sigma)`` ("exponential") of the sup-norm distance
    ``d`` from ``x`` to the support, or the local weight of :func:`local_weights` ("linear")."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not bandwidth > 0:
        raise ValueError(f"the bandwidth must be positive, got {bandwidth}")
    if kernel == "linear":
        return local_weights(points, decomposition, bandwidth)
    d = distances_to_summands(points, decomposition)
    if kernel == "gaussian":
        return np.exp(-0.5 * (d / bandwidth) ** 2)
    return np.exp(-d / bandwidth)


def pixel_grid(box: np.ndarray, resolution: int | Sequence[int]) -> tuple[np.ndarray, ...]:
    """The evenly spaced axes of a grid over ``box`` (first parameter first)."""
    box = _check_box(box)
    n = box.shape[1]
    res = [int(resolution)] * n if np.isscalar(resolution) else [int(r) for r in resolution]
    if len(res) != n or min(res) < 2:
        raise ValueError(f"resolution must be at least 2 pixels per axis, got {resolution}")
    return tuple(np.linspace(box[0, k], box[1, k], res[k]) for k in range(n))


def decomposition_image(
    decomposition: Decomposition,
    *,
    box: np.ndarray,
    resolution: int | Sequence[int] = 30,
    bandwidth: float = 0.05,
    p: float = 1.0,
    kernel: str = "gaussian",
    normalize: bool = False,
) -> np.ndarray:
    """The paper's representation of a decomposition on a fixed grid (Section 3):

        V(M)(x) = sum_i w(M_i)^p K_sigma(x, M_i)    (divided by sum_i w(M_i)^p if ``normalize``)

    with the weights of :func:`summand_weights` (restricted to ``box``) and the kernels of
    :func:`kernel_matrix`. Summands of zero weight in the box are left out, so ``p = 0``
    counts every summand that meets the box once, whatever its size. Returns an array of
    shape ``resolution``, indexed ``[i, j]`` = (first parameter i, second parameter j). Use
    the same ``box`` for every sample, or the images are not comparable.
    """
    if p < 0:
        raise ValueError(f"the weight power p must be non-negative, got {p}")
    axes = pixel_grid(box, resolution)
    shape = tuple(len(a) for a in axes)
    weights = summand_weights(decomposition, box)
    keep = weights > 0
    if not keep.any():
        return np.zeros(shape)
    kept = Decomposition(
        tuple(s for s, k in zip(decomposition.summands, keep) if k), decomposition.box
    )
    w = weights[keep] ** p
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    values = kernel_matrix(mesh, kept, bandwidth, kernel) @ w
    if normalize:
        values = values / w.sum()
    return values.reshape(shape)


def decomposition_features(
    decomposition: Decomposition, degrees: Sequence[int] = (0, 1), **image_kwargs: Any
) -> np.ndarray:
    """Degree-wise images of :func:`decomposition_image`, flattened and concatenated: the
    feature vector a standard classifier sees."""
    if len(degrees) == 0:
        raise ValueError("degrees must name at least one homological degree")
    return np.concatenate(
        [decomposition_image(decomposition.of_degree(d), **image_kwargs).ravel() for d in degrees]
    )


def plot_decomposition(
    decomposition: Decomposition,
    box: np.ndarray,
    ax: Any,
    degree: int = 1,
    min_weight: float = 0.0,
    cmap: str = "tab10",
    alpha: float = 0.35,
) -> int:
    """Draw the summands of one degree as coloured staircases clipped to ``box`` (each summand
    is the union of its rectangles); returns how many summands were drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    box = _check_box(box)
    part = decomposition.of_degree(degree)
    weights = summand_weights(part, box)
    colors = plt.get_cmap(cmap)
    drawn = 0
    for s, w in sorted(zip(part.summands, weights), key=lambda t: -t[1]):
        if w <= min_weight:
            continue
        lo, up = s.rectangles()
        lo, up = np.maximum(lo, box[0]), np.minimum(up, box[1])
        color = colors(drawn % colors.N)
        for a, b in zip(lo, up):
            if np.all(b > a):
                ax.add_patch(Rectangle(a, *(b - a), facecolor=color, edgecolor="none",
                                       alpha=alpha))
        drawn += 1
    ax.set_xlim(box[0, 0], box[1, 0])
    ax.set_ylim(box[0, 1], box[1, 1])
    return drawn
