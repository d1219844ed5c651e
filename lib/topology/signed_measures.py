"""Signed barcodes as signed measures, and their two stable vectorisations.

Loiseaux, Scoccola, Carrière, Botnan and Oudot (NeurIPS 2023, arXiv:2306.03801) turn the
Hilbert function of a multiparameter persistence module (or the Euler characteristic of a
multifiltered complex) into a finite *signed point measure* ``mu = sum_a w_a delta_a`` on
``R^n`` whose cumulative sums give the invariant back (their Section 2), compare such measures
with the Kantorovich-Rubinstein (optimal transport) norm (Section 3), and vectorise them by
convolution with a kernel or through a sliced Wasserstein kernel (Section 4).

A signed measure is a pair ``(points, weights)``: ``points`` of shape ``(k, n)`` and integer or
float ``weights`` of shape ``(k,)``. Everything here is numpy, except that gudhi computes the
one-parameter persistence inside :func:`hilbert_function`, POT solves the transport problem in
:func:`kr_distance`, and ``multipers`` (by the paper's authors) serves as an independent
implementation in :func:`multipers_signed_measure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Measure = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- grids


def _check_values(values: np.ndarray, n_simplices: int | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"values must be an (n_simplices, n_parameters) array, got {values.shape}")
    if n_simplices is not None and values.shape[0] != n_simplices:
        raise ValueError(f"{n_simplices} simplices but {values.shape[0]} filtration values")
    if not np.all(np.isfinite(values)):
        raise ValueError("filtration values must be finite")
    return values


def _check_grid(grid: Sequence[np.ndarray], n_parameters: int | None = None) -> list[np.ndarray]:
    grid = [np.asarray(g, dtype=float) for g in grid]
    if n_parameters is not None and len(grid) != n_parameters:
        raise ValueError(f"the grid has {len(grid)} axes for {n_parameters} parameters")
    for k, g in enumerate(grid):
        if g.ndim != 1 or g.size < 1:
            raise ValueError(f"grid axis {k} must be a non-empty 1-d array, got shape {g.shape}")
        if np.any(np.diff(g) <= 0):
            raise ValueError(f"grid axis {k} must be strictly increasing")
    return grid


def regular_grid(values: np.ndarray, resolution: int | Sequence[int]) -> list[np.ndarray]:
    """A regular grid over the bounding box of the filtration ``values`` (one axis per parameter,
    ``resolution`` points each), the coarsening the paper uses before computing invariants."""
    values = _check_values(values)
    n = values.shape[1]
    res = [int(resolution)] * n if np.isscalar(resolution) else [int(r) for r in resolution]
    if len(res) != n or min(res) < 2:
        raise ValueError(f"resolution must be >= 2 for each of {n} parameters, got {resolution}")
    lo, hi = values.min(axis=0), values.max(axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return [np.linspace(lo[k], hi[k], res[k]) for k in range(n)]


def snap_up(values: np.ndarray, grid: Sequence[np.ndarray]) -> np.ndarray:
    """Round each coordinate *up* to the next grid value (``inf`` beyond the last one).

    Rounding up keeps the sublevel sets at grid points unchanged: a simplex is present at a grid
    point ``x`` after snapping exactly when it was before (``f(s) <= x`` iff ``snap(f(s)) <= x``),
    so the Hilbert function restricted to the grid is exact. Monotone, so a filtration stays one.
    """
    values = _check_values(values)
    grid = _check_grid(grid, values.shape[1])
    out = np.empty_like(values)
    for k, g in enumerate(grid):
        idx = np.searchsorted(g, values[:, k], side="left")
        out[:, k] = np.where(idx < g.size, g[np.minimum(idx, g.size - 1)], np.inf)
    return out


# ----------------------------------------------------------------------------- invariants


def hilbert_functions(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degrees: Sequence[int],
) -> np.ndarray:
    """Hilbert functions ``H_d(x) = dim H_d(S_x)`` of a two-parameter filtration on a grid, for
    each homology degree ``d`` in ``degrees``; shape ``(len(degrees), len(grid[0]), len(grid[1]))``.

    ``S_x`` is the sublevel complex ``{s : values[s] <= x}``. For each grid value ``y_j`` of the
    second parameter, the subcomplex ``{s : values[s, 1] <= y_j}`` filtered by the first
    parameter is a one-parameter filtration; gudhi computes its persistence once for all
    degrees, and the Betti number at ``x_i`` counts the half-open bars ``[birth, death)`` that
    contain ``x_i``. Filtration values are first snapped up to the grid (:func:`snap_up`),
    which leaves the function at grid points unchanged. This is the invariant of the paper's
    Section 2 whose Möbius inversion is the Hilbert signed barcode.
    """
    import gudhi

    values = _check_values(values, len(simplices))
    if values.shape[1] != 2:
        raise ValueError(f"hilbert_functions handles two parameters, got {values.shape[1]}")
    grid = _check_grid(grid, 2)
    degrees = [int(d) for d in degrees]
    if not degrees or min(degrees) < 0:
        raise ValueError(f"degrees must be non-negative homology degrees, got {degrees}")
    dims = np.array([len(s) - 1 for s in simplices])
    if dims.size and dims.min() < 0:
        raise ValueError("a simplex must have at least one vertex")
    snapped = snap_up(values, grid)
    keep = (dims <= max(degrees) + 1) & np.isfinite(snapped).all(axis=1)
    by_dim = []
    for d in range(max(degrees) + 2):
        rows = np.flatnonzero(keep & (dims == d))
        if rows.size:
            verts = np.array([simplices[i] for i in rows], dtype=np.int64).T
            by_dim.append((rows, verts))
    x_grid, y_grid = grid
    H = np.zeros((len(degrees), x_grid.size, y_grid.size), dtype=np.int64)
    for j, y in enumerate(y_grid):
        tree = gudhi.SimplexTree()
        for rows, verts in by_dim:
            present = snapped[rows, 1] <= y
            if present.any():
                tree.insert_batch(verts[:, present], snapped[rows[present], 0])
        if tree.num_simplices() == 0:
            continue
        tree.compute_persistence(persistence_dim_max=True)
        for a, d in enumerate(degrees):
            bars = np.asarray(tree.persistence_intervals_in_dimension(d)).reshape(-1, 2)
            if bars.size:
                alive = (bars[None, :, 0] <= x_grid[:, None]) & (x_grid[:, None] < bars[None, :, 1])
                H[a, :, j] = alive.sum(axis=1)
    return H


def hilbert_function(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degree: int,
) -> np.ndarray:
    """The Hilbert function of ``H_degree`` on the grid, shape ``(len(grid[0]), len(grid[1]))``
    (one degree of :func:`hilbert_functions`)."""
    return hilbert_functions(simplices, values, grid, [degree])[0]


def mobius_inversion(function_on_grid: np.ndarray, grid: Sequence[np.ndarray]) -> Measure:
    """The signed measure ``mu`` with ``function(x) = mu({a <= x})`` at every grid point.

    On a finite grid this is the Möbius inversion of the product order: an alternating
    finite difference along every axis (``mu[i, j] = H[i, j] - H[i-1, j] - H[i, j-1] +
    H[i-1, j-1]`` in two parameters, with ``H = 0`` before the grid). Its existence and
    uniqueness is the decomposition of the paper's Section 2 (the Hilbert decomposition signed
    measure); only non-zero atoms are returned, at their grid coordinates.
    """
    H = np.asarray(function_on_grid)
    grid = _check_grid(grid, H.ndim)
    if H.shape != tuple(g.size for g in grid):
        sizes = [g.size for g in grid]
        raise ValueError(f"function shape {H.shape} does not match the grid {sizes}")
    mu = H
    for axis in range(H.ndim):
        mu = np.diff(mu, axis=axis, prepend=0)
    idx = np.nonzero(mu)
    points = np.stack([grid[k][idx[k]] for k in range(H.ndim)], axis=1)
    return points.reshape(-1, H.ndim), mu[idx]


def measure_cdf(measure: Measure, grid: Sequence[np.ndarray]) -> np.ndarray:
    """Cumulative sums ``F(x) = sum_{a <= x} w_a`` of a signed measure at every grid point
    (the inverse of :func:`mobius_inversion`: the invariant the measure encodes)."""
    points, weights = _check_measure(measure)
    grid = _check_grid(grid, points.shape[1] if points.size else None)
    below = np.ones((points.shape[0],) + tuple(g.size for g in grid), dtype=bool)
    for k, g in enumerate(grid):
        shape = [1] * (len(grid) + 1)
        shape[k + 1] = g.size
        below &= (points[:, k].reshape(-1, *[1] * len(grid)) <= g.reshape(shape))
    return np.tensordot(weights, below.astype(weights.dtype), axes=1)


def hilbert_signed_measure(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degree: int,
) -> Measure:
    """The Hilbert signed barcode of ``H_degree`` restricted to ``grid``: the Möbius inversion
    (:func:`mobius_inversion`) of :func:`hilbert_function` (paper, Section 2)."""
    return hilbert_signed_measures(simplices, values, grid, [degree])[0]


def hilbert_signed_measures(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degrees: Sequence[int],
) -> list[Measure]:
    """:func:`hilbert_signed_measure` for several degrees, sharing one persistence computation
    per grid line."""
    grid = _check_grid(grid, 2)
    return [mobius_inversion(H, grid) for H in hilbert_functions(simplices, values, grid, degrees)]


def rank_invariant(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degree: int,
) -> np.ndarray:
    """The rank invariant ``rk(s, t) = rank(H_d(S_s) -> H_d(S_t))`` for grid points ``s <= t``.

    Returns an array of shape ``(nx, ny, nx, ny)``: entry ``[a, b, c, e]`` is the rank of the
    map induced by the inclusion of ``S_(x_a, y_b)`` into ``S_(x_c, y_e)``, zero unless
    ``a <= c`` and ``b <= e``; its diagonal ``s = t`` is the Hilbert function. This is the
    invariant whose Möbius inversion is the rank signed barcode the paper uses beside the
    Hilbert one (its Section 2, after Botnan, Oppermann and Oudot's rank decompositions).

    How (our own route, one gudhi persistence computation per ``(s, y_e)``): for fixed ``s`` and
    a second-parameter value ``y_e >= y_b``, filter the subcomplex ``{values[:, 1] <= y_e}`` by
    the first parameter, except that the simplices of ``S_s`` all enter first, at one value below
    the grid. Every nested sequence of complexes obeys the elder rule, so the rank from ``S_s``
    into ``S_(x_c, y_e)`` counts the bars born with ``S_s`` that are still alive at ``x_c``.
    Values are snapped up to the grid first (:func:`snap_up`).
    """
    import gudhi

    values = _check_values(values, len(simplices))
    if values.shape[1] != 2:
        raise ValueError(f"rank_invariant handles two parameters, got {values.shape[1]}")
    grid = _check_grid(grid, 2)
    if int(degree) != degree or degree < 0:
        raise ValueError(f"degree must be a non-negative homology degree, got {degree}")
    degree = int(degree)
    dims = np.array([len(s) - 1 for s in simplices])
    if dims.size and dims.min() < 0:
        raise ValueError("a simplex must have at least one vertex")
    snapped = snap_up(values, grid)
    keep = (dims <= degree + 1) & np.isfinite(snapped).all(axis=1)
    by_dim = []  # faces before cofaces: one vertex array per dimension
    for d in range(degree + 2):
        rows = np.flatnonzero(keep & (dims == d))
        if rows.size:
            by_dim.append((rows, np.array([simplices[i] for i in rows], dtype=np.int64).T))
    x_grid, y_grid = grid
    nx, ny = x_grid.size, y_grid.size
    first = x_grid[0] - 1.0  # the value at which S_s enters, below every grid value
    rk = np.zeros((nx, ny, nx, ny), dtype=np.int64)
    for a in range(nx):
        for b in range(ny):
            if not np.any(keep & (snapped[:, 0] <= x_grid[a]) & (snapped[:, 1] <= y_grid[b])):
                continue
            for e in range(b, ny):
                tree = gudhi.SimplexTree()
                for rows, verts in by_dim:
                    present = snapped[rows, 1] <= y_grid[e]
                    in_s = (snapped[rows, 0] <= x_grid[a]) & (snapped[rows, 1] <= y_grid[b])
                    if present.any():
                        tree.insert_batch(verts[:, present],
                                          np.where(in_s, first, snapped[rows, 0])[present])
                tree.compute_persistence(persistence_dim_max=True)
                bars = np.asarray(tree.persistence_intervals_in_dimension(degree)).reshape(-1, 2)
                deaths = bars[bars[:, 0] <= first, 1]
                rk[a, b, a:, e] = (deaths[None, :] > x_grid[a:, None]).sum(axis=1)
    return rk


def rank_mobius_inversion(rank: np.ndarray, grid: Sequence[np.ndarray]) -> Measure:
    """The rank signed barcode: signed rectangles ``[s, t]`` with ``rk = sum R(s, t) rk_[s, t]``.

    ``rk_[s, t](u, v) = 1`` when ``s <= u <= v <= t`` (the rank invariant of the rectangle
    module on the grid points of ``[s, t]``), so ``rk(u, v) = sum_{s <= u, t >= v} R(s, t)`` and
    the Möbius inversion is the alternating sum over the 16 corners

        R(s, t) = sum_{eps, del in {0, 1}^2} (-1)^(|eps| + |del|) rk(s - eps, t + del),

    with ``rk = 0`` off the grid (a rectangle reaching the grid's top edge is cut there). The
    rank decomposition is the paper's second signed barcode (Section 2). Returns atoms
    ``(s_x, s_y, t_x, t_y)`` with the *closed* upper corner ``t``, and their integer weights.
    """
    rk = np.asarray(rank)
    grid = _check_grid(grid, 2)
    nx, ny = grid[0].size, grid[1].size
    if rk.shape != (nx, ny, nx, ny):
        raise ValueError(f"rank invariant of shape {rk.shape} does not match the grid "
                         f"({nx}, {ny}, {nx}, {ny})")
    R = rk
    for axis in (0, 1):  # lower corner: differences towards smaller s
        R = np.diff(R, axis=axis, prepend=0)
    for axis in (2, 3):  # upper corner: differences towards larger t
        R = -np.diff(R, axis=axis, append=0)
    a, b, c, e = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nx), np.arange(ny),
                             indexing="ij")
    R = np.where((a <= c) & (b <= e), R, 0)  # only rectangles with s <= t exist
    idx = np.nonzero(R)
    points = np.stack([grid[0][idx[0]], grid[1][idx[1]], grid[0][idx[2]], grid[1][idx[3]]],
                      axis=1)
    return points.reshape(-1, 4), R[idx]


def rank_signed_measure(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degree: int,
) -> Measure:
    """The rank signed barcode of ``H_degree`` on ``grid``: :func:`rank_mobius_inversion` of
    :func:`rank_invariant` (paper, Section 2)."""
    grid = _check_grid(grid, 2)
    return rank_mobius_inversion(rank_invariant(simplices, values, grid, degree), grid)


def rectangles_rank(measure: Measure, grid: Sequence[np.ndarray]) -> np.ndarray:
    """The rank invariant a signed rectangle measure encodes: ``rk(u, v) = sum of R(s, t)``
    over rectangles with ``s <= u`` and ``v <= t`` (the inverse of
    :func:`rank_mobius_inversion`), shape ``(nx, ny, nx, ny)``, zero unless ``u <= v``."""
    points, weights = _check_measure(measure)
    grid = _check_grid(grid, 2)
    if points.shape[0] and points.shape[1] != 4:
        raise ValueError(f"a rectangle measure has 4 coordinates per atom, got {points.shape[1]}")
    gx, gy = grid
    lo = (points[:, 0, None] <= gx)[:, :, None] & (points[:, 1, None] <= gy)[:, None, :]
    hi = (points[:, 2, None] >= gx)[:, :, None] & (points[:, 3, None] >= gy)[:, None, :]
    rk = np.einsum("k,kab,kce->abce", weights.astype(np.int64), lo.astype(np.int64),
                   hi.astype(np.int64))
    u = np.arange(gx.size)[:, None, None, None] <= np.arange(gx.size)[None, None, :, None]
    v = np.arange(gy.size)[None, :, None, None] <= np.arange(gy.size)[None, None, None, :]
    return np.where(u & v, rk, 0)


def euler_signed_measure(simplices: Sequence[Sequence[int]], values: np.ndarray) -> Measure:
    """The Euler signed measure ``sum_s (-1)^dim(s) delta_{f(s)}`` of a multifiltered complex.

    Its cumulative sum at ``x`` is the Euler characteristic of the sublevel complex ``S_x``,
    so it is the Möbius inversion of the Euler characteristic function (paper, Section 2);
    atoms at equal grades are merged and cancelled.
    """
    values = _check_values(values, len(simplices))
    signs = np.array([(-1) ** (len(s) - 1) for s in simplices], dtype=np.int64)
    return merge_atoms((values, signs))


# ----------------------------------------------------------------------------- measures


def _check_measure(measure: Measure) -> Measure:
    try:
        points, weights = measure
    except (TypeError, ValueError):
        raise ValueError("a signed measure is a pair (points, weights)") from None
    points = np.asarray(points, dtype=float)
    weights = np.asarray(weights)
    if points.ndim != 2:
        raise ValueError(f"points must have shape (k, n_parameters), got {points.shape}")
    if weights.shape != (points.shape[0],):
        raise ValueError(f"{points.shape[0]} points but weights of shape {weights.shape}")
    if not (np.all(np.isfinite(points)) and np.all(np.isfinite(weights))):
        raise ValueError("points and weights of a signed measure must be finite")
    return points, weights


def merge_atoms(measure: Measure) -> Measure:
    """Add up the weights of atoms at identical points and drop atoms of weight zero."""
    points, weights = _check_measure(measure)
    if points.shape[0] == 0:
        return points, weights
    uniq, inverse = np.unique(points, axis=0, return_inverse=True)
    summed = np.zeros(uniq.shape[0], dtype=np.result_type(weights.dtype, np.int64))
    np.add.at(summed, inverse.ravel(), weights)
    nonzero = summed != 0
    return uniq[nonzero], summed[nonzero]


def total_mass(measure: Measure) -> float:
    """``mu(R^n)``, the sum of the weights."""
    return float(_check_measure(measure)[1].sum())


def with_zero_mass(measure: Measure, corner: Sequence[float]) -> Measure:
    """Add an atom of weight ``-mu(R^n)`` at ``corner`` so that the measure has total mass zero.

    This is the measure of the invariant zeroed outside the box ``{x <= corner}`` (multipers'
    ``mass_default``); choose one ``corner`` above every grade of every input so that measures
    of different inputs stay comparable (KR and sliced Wasserstein distances need equal mass).
    """
    points, weights = _check_measure(measure)
    corner = np.asarray(corner, dtype=float).reshape(1, -1)
    if points.shape[0] and corner.shape[1] != points.shape[1]:
        raise ValueError(f"corner has {corner.shape[1]} coordinates, points {points.shape[1]}")
    if points.shape[0] and np.any(points > corner):
        raise ValueError("corner must be above every atom of the measure")
    mass = weights.sum()
    if mass == 0:
        return points, weights
    return merge_atoms((np.vstack([points, corner]), np.append(weights, -mass)))


def positive_part(measure: Measure) -> Measure:
    """The positive part ``mu+`` of ``mu = mu+ - mu-`` (atoms of positive weight)."""
    points, weights = merge_atoms(measure)
    keep = weights > 0
    return points[keep], weights[keep]


def rescale(measure: Measure, box: np.ndarray) -> Measure:
    """Map the atoms affinely so that ``box = [[lo...], [hi...]]`` becomes the unit cube.

    The parameters of a bifiltration live on unrelated scales (a radius, a codensity); the
    vectorisations treat all axes alike, so measures are compared in a common unit box.
    """
    points, weights = _check_measure(measure)
    box = np.asarray(box, dtype=float)
    if box.shape != (2, points.shape[1]) or np.any(box[1] <= box[0]):
        raise ValueError(f"box must be [[lo...], [hi...]] with hi > lo, got {box.tolist()}")
    return (points - box[0]) / (box[1] - box[0]), weights


# ----------------------------------------------------------------------------- distances


def kr_distance(mu: Measure, nu: Measure) -> float:
    """Kantorovich-Rubinstein distance ``||mu - nu||_KR`` with the l1 ground metric (Section 3).

    With ``mu - nu = rho+ - rho-`` (atoms merged, so shared mass cancels), it is the optimal
    transport cost between the positive measures ``rho+`` and ``rho-``, which equals the cost
    between ``mu+ + nu-`` and ``nu+ + mu-``. Solved exactly with POT's network simplex.
    """
    import ot

    p_mu, w_mu = _check_measure(mu)
    p_nu, w_nu = _check_measure(nu)
    if p_mu.shape[0] and p_nu.shape[0] and p_mu.shape[1] != p_nu.shape[1]:
        raise ValueError("the two measures live in different dimensions")
    if not np.isclose(w_mu.sum(), w_nu.sum()):
        raise ValueError(
            f"the KR distance needs equal total masses, got {w_mu.sum()} and {w_nu.sum()}; "
            "use with_zero_mass on both measures"
        )
    dim = p_mu.shape[1] if p_mu.shape[0] else p_nu.shape[1]
    points = np.vstack([p_mu.reshape(-1, dim), p_nu.reshape(-1, dim)])
    diff = merge_atoms((points, np.concatenate([w_mu, -w_nu]).astype(float)))
    pos, neg = diff[1] > 0, diff[1] < 0
    if not pos.any():
        return 0.0
    cost = ot.dist(diff[0][pos], diff[0][neg], metric="cityblock")
    return float(ot.emd2(diff[1][pos], -diff[1][neg], cost))


def random_directions(n_directions: int, rng: np.random.Generator, dim: int = 2) -> np.ndarray:
    """Unit vectors drawn uniformly on the sphere ``S^{dim-1}``, shape ``(n_directions, dim)``."""
    if n_directions < 1 or dim < 1:
        raise ValueError(f"need n_directions >= 1 and dim >= 1, got {n_directions}, {dim}")
    v = rng.normal(size=(n_directions, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sliced_costs(points: np.ndarray, weights: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """1-d KR norms of the projections of signed measures onto each direction: the integral of
    the absolute value of the projected cumulative distribution function.

    ``points`` ``(..., k, n)``, ``weights`` ``(..., k)`` (zero-weight padding atoms are harmless),
    ``directions`` ``(D, n)``; returns ``(..., D)``.
    """
    proj = points @ directions.T  # (..., k, D)
    order = np.argsort(proj, axis=-2, kind="stable")
    p = np.take_along_axis(proj, order, axis=-2)
    w = np.take_along_axis(np.broadcast_to(weights[..., None], proj.shape), order, axis=-2)
    cdf = np.cumsum(w, axis=-2)
    return (np.abs(cdf[..., :-1, :]) * np.diff(p, axis=-2)).sum(axis=-2)


def sliced_wasserstein_distance(mu: Measure, nu: Measure, directions: np.ndarray) -> float:
    """Sliced Wasserstein distance between signed measures of equal mass (Section 4): the mean,
    over unit ``directions`` theta, of the 1-d KR norm of the projections ``<theta, .>`` of
    ``mu - nu``. Projections are 1-Lipschitz, so it never exceeds :func:`kr_distance`."""
    p_mu, w_mu = _check_measure(mu)
    p_nu, w_nu = _check_measure(nu)
    if not np.isclose(w_mu.sum(), w_nu.sum()):
        raise ValueError(
            f"sliced Wasserstein needs equal total masses, got {w_mu.sum()} and {w_nu.sum()}"
        )
    directions = np.asarray(directions, dtype=float)
    dim = p_mu.shape[1] if p_mu.shape[0] else p_nu.shape[1]
    if directions.ndim != 2 or directions.shape[1] != dim:
        raise ValueError(f"directions must have shape (D, {dim}), got {directions.shape}")
    points = np.vstack([p_mu.reshape(-1, dim), p_nu.reshape(-1, dim)])
    weights = np.concatenate([w_mu, -w_nu]).astype(float)
    if points.shape[0] < 2:
        return 0.0
    return float(_sliced_costs(points, weights, directions).mean())


def sliced_wasserstein_matrix(measures: Sequence[Measure], directions: np.ndarray) -> np.ndarray:
    """All pairwise :func:`sliced_wasserstein_distance` values, shape ``(N, N)``, exact and
    batched: measure ``i`` is compared with all later ones at once (atoms padded with weight 0).
    """
    checked = [_check_measure(m) for m in measures]
    n = len(checked)
    if n == 0:
        return np.zeros((0, 0))
    masses = np.array([w.sum() for _, w in checked], dtype=float)
    if not np.allclose(masses, masses[0]):
        raise ValueError("sliced Wasserstein needs equal total masses; use with_zero_mass")
    directions = np.asarray(directions, dtype=float)
    dim = directions.shape[1]
    k = max(1, max(p.shape[0] for p, _ in checked))
    P = np.zeros((n, k, dim))
    W = np.zeros((n, k))
    for i, (p, w) in enumerate(checked):
        if p.shape[0] and p.shape[1] != dim:
            raise ValueError(f"directions have dimension {dim}, measure {i} has {p.shape[1]}")
        P[i, : p.shape[0]] = p
        W[i, : p.shape[0]] = w
    D = np.zeros((n, n))
    for i in range(n - 1):
        pts = np.concatenate([np.broadcast_to(P[i], (n - i - 1, k, dim)), P[i + 1 :]], axis=1)
        wts = np.concatenate([np.broadcast_to(W[i], (n - i - 1, k)), -W[i + 1 :]], axis=1)
        D[i, i + 1 :] = _sliced_costs(pts, wts, directions).mean(axis=-1)
    return D + D.T


def sliced_wasserstein_kernel(distances: np.ndarray, sigma: float) -> np.ndarray:
    """The sliced Wasserstein kernel ``exp(-SW / (2 sigma^2))`` from a distance matrix
    (Section 4, after the sliced Wasserstein kernel for persistence diagrams)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    distances = np.asarray(distances, dtype=float)
    if np.any(distances < 0):
        raise ValueError("distances must be non-negative")
    return np.exp(-distances / (2 * sigma**2))


# ----------------------------------------------------------------------------- convolution


def gaussian_lipschitz(sigma: float) -> float:
    """Lipschitz constant ``exp(-1/2) / sigma`` of ``x -> exp(-|x|^2 / (2 sigma^2))`` (for the
    Euclidean norm, hence also for the larger l1 norm)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return float(np.exp(-0.5) / sigma)


def convolution_features(
    measure: Measure, grid: Sequence[np.ndarray], sigma: float
) -> np.ndarray:
    """The convolution ``(mu * K_sigma)(x) = sum_a w_a K_sigma(x - a)`` on a grid (Section 4).

    ``K_sigma(z) = exp(-|z|^2 / (2 sigma^2))``. For measures of equal mass the map is
    Lipschitz from the KR distance to the sup norm, with constant :func:`gaussian_lipschitz`:
    ``|mu * K - nu * K| <= Lip(K) ||mu - nu||_KR`` (integrate ``K(x - a) - K(x - b)`` against
    an optimal plan). Returns an array of shape ``tuple(len(g) for g in grid)``.
    """
    points, weights = _check_measure(measure)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = _check_grid(grid, points.shape[1] if points.size else None)
    mesh = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1).reshape(-1, len(grid))
    sq = ((mesh[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    image = np.exp(-sq / (2 * sigma**2)) @ weights.astype(float)
    return image.reshape(tuple(g.size for g in grid))


# ----------------------------------------------------------------------------- baselines


def one_parameter_features(
    diagram: np.ndarray, radii: np.ndarray, top_k: int = 5
) -> np.ndarray:
    """One-parameter baseline features of a persistence diagram: its Betti curve at ``radii``
    (the one-parameter Hilbert function) followed by the ``top_k`` largest bar lengths."""
    diagram = np.asarray(diagram, dtype=float).reshape(-1, 2)
    radii = np.asarray(radii, dtype=float)
    if top_k < 0:
        raise ValueError(f"top_k must be non-negative, got {top_k}")
    betti = ((diagram[None, :, 0] <= radii[:, None]) & (radii[:, None] < diagram[None, :, 1]))
    lengths = np.sort(diagram[:, 1] - diagram[:, 0])[::-1][:top_k]
    return np.concatenate([betti.sum(axis=1), np.pad(lengths, (0, top_k - lengths.size))])


# ----------------------------------------------------------------------------- multipers


def multipers_signed_measure(
    simplices: Sequence[Sequence[int]],
    values: np.ndarray,
    grid: Sequence[np.ndarray],
    degree: int | None,
    invariant: str = "hilbert",
) -> Measure:
    """The same signed measures computed by ``multipers`` (the paper authors' library): the
    Hilbert signed measure of ``H_degree`` on ``grid``, or the Euler one for ``degree=None``;
    ``invariant="rank"`` gives the rank signed barcode instead (rectangles, as in
    :func:`rank_mobius_inversion`). multipers reports a rectangle's upper corner as the first
    grid value past it (``inf`` past the grid's end); we convert it to the closed corner.

    Values are snapped up to the grid first (:func:`snap_up`), so multipers' own coarsening is
    the identity. The simplex tree is built by inserting simplices one by one: converting a
    gudhi simplex tree crashed with the pinned versions (the test suite runs this exact route in
    a subprocess, so a crash cannot pass unnoticed).
    """
    from lib.topology.filtrations import import_multipers

    values = _check_values(values, len(simplices))
    grid = _check_grid(grid, values.shape[1])
    snapped = snap_up(values, grid)
    keep = np.isfinite(snapped).all(axis=1)
    mp = import_multipers()
    tree = mp.SimplexTreeMulti(num_parameters=values.shape[1])
    for s, v, k in zip(simplices, snapped, keep):
        if k:
            tree.insert([int(i) for i in s], [float(c) for c in v])
    if invariant not in ("hilbert", "rank"):
        raise ValueError(f"invariant must be 'hilbert' or 'rank', got {invariant!r}")
    if invariant == "rank":
        if degree is None or values.shape[1] != 2:
            raise ValueError("the rank signed barcode needs a homology degree and 2 parameters")
        points, weights = mp.signed_measure(tree, degree=degree, invariant="rank", grid=grid)[0]
        points = np.array(points, dtype=float).reshape(-1, 4)
        for col, g in ((2, grid[0]), (3, grid[1])):  # first grid value past -> closed corner
            idx = np.searchsorted(g, points[:, col], side="left")  # inf -> len(g)
            points[:, col] = g[idx - 1]
        return merge_atoms((points, np.asarray(weights).astype(np.int64)))
    if degree is None:
        points, weights = mp.signed_measure(tree, degree=None, invariant="euler", grid=grid)[0]
    else:
        points, weights = mp.signed_measure(tree, degree=degree, invariant="hilbert", grid=grid)[0]
    return merge_atoms((np.asarray(points, dtype=float), np.asarray(weights).astype(np.int64)))
