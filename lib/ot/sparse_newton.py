"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm start, then Newton steps on a sparsified Hessian.

Tang et al. (2024), Algorithm 1. The Hessian of the Lyapunov potential f is
-eta [[diag(P 1), P], [P^T, diag(P^T 1)]]; near the solution most of P's mass sits on O(n)
entries (Section 5), so keeping the diagonal blocks exactly and only the largest entries of P
gives a sparse matrix whose Newton system conjugate gradient solves in O(nnz) per iteration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from lib.ot.entropic import (
    OTTrace,
    lyapunov_gradient,
    marginal_error,
    sinkhorn,
    transport_plan,
    validate_problem,
)


def sparsify_plan(P: np.ndarray, rho: float) -> sp.csr_matrix:
    """Keep the ceil(rho * n * m) largest entries of P, zero the rest (Algorithm 1, Sparsify).

    ``rho=1`` keeps everything; the paper's experiments keep O(n) entries (``rho`` of order
    1/n). Entries tied with the smallest kept value are all kept. Dropping entries of a
    non-negative P leaves the sparsified Hessian diagonally dominant, hence still negative
    semi-definite.

    The selection is exact. To avoid partitioning all n * m entries, a lower bound on the
    threshold is read off a fixed subsample (its order statistic at about twice the kept
    fraction, less a margin); only the entries above that bound are partitioned, and the full
    partition is the fallback when they are too few.
    """
    if not (0 < rho <= 1):
        raise ValueError(f"rho, the kept fraction of the plan, must be in (0, 1], got {rho}")
    n, m = P.shape
    size = n * m
    keep = min(size, max(1, math.ceil(rho * size * (1 - 1e-12))))  # 1e-12: rho = k / n exactly
    if keep == size:
        return sp.csr_matrix(P)
    flat = P.ravel()
    candidates = None
    if keep * 20 < size:
        sample = flat[np.random.default_rng(0).integers(0, size, _SPARSIFY_SAMPLE)]
        rank = min(sample.size, 2 * math.ceil(sample.size * keep / size) + 64)
        bound = np.partition(sample, sample.size - rank)[sample.size - rank]
        candidates = np.flatnonzero(flat >= bound)
        if candidates.size < keep:
            candidates = None
    if candidates is None:
        candidates = np.arange(size)
    values = flat[candidates]
    threshold = np.partition(values, values.size - keep)[values.size - keep]
    chosen = candidates[values >= threshold]  # increasing flat index: row-major, the CSR layout
    rows, cols = np.divmod(chosen, m)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return sp.csr_matrix((flat[chosen], cols, indptr), shape=(n, m))


#: Size of the subsample that bounds the sparsification threshold from below.
_SPARSIFY_SAMPLE = 20_000


def _newton_matvec(P: np.ndarray, kept: sp.csr_matrix | None) -> Callable[[np.ndarray], np.ndarray]:
    """v -> M v for M = -H / eta = [[diag(P 1), K], [K^T, diag(P^T 1)]], K the kept plan.

    The diagonal blocks always come from the full plan (dropping them would break
    semi-definiteness). With a kept plan, M is assembled once as a sparse matrix with
    n + m + 2 nnz(K) entries, so a product costs O(nnz); ``kept=None`` (dense Newton, K = P)
    is applied matrix-free with two dense matrix-vector products.
    """
    n, m = P.shape
    row, col = P.sum(axis=1), P.sum(axis=0)
    if kept is not None:
        M = sp.bmat([[sp.diags(row), kept], [kept.T, sp.diags(col)]], format="csr")
        return M.dot

    def matvec(v: np.ndarray) -> np.ndarray:
        a, b = v[:n], v[n:]
        return np.concatenate([row * a + P @ b, P.T @ a + col * b])

    return matvec


def _conjugate_gradient(
    matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, rtol: float, maxiter: int
) -> tuple[np.ndarray, int]:
    """Plain conjugate gradient for M x = b, M symmetric positive semi-definite, from x = 0.

    Stops when ||b - M x|| <= rtol ||b|| or after ``maxiter`` iterations; returns (x, the
    number of iterations). On a singular but consistent system (b orthogonal to M's null space)
    the iterates stay orthogonal to the null space. A short loop of our own rather than
    scipy's ``cg``: its per-iteration overhead is larger than a sparse product here.
    """
    x = np.zeros_like(b)
    residual = b.copy()
    direction = residual.copy()
    rr = float(residual @ residual)
    stop = (rtol**2) * rr
    for k in range(maxiter):
        if rr <= stop:
            return x, k
        q = matvec(direction)
        curvature = float(direction @ q)
        if curvature <= 0:  # only rounding is left along this direction
            return x, k
        step = rr / curvature
        x += step * direction
        residual -= step * q
        rr_new = float(residual @ residual)
        direction *= rr_new / rr
        direction += residual
        rr = rr_new
    return x, maxiter


def _backtrack(
    P: np.ndarray,
    r: np.ndarray,
    c: np.ndarray,
    eta: float,
    dx: np.ndarray,
    dy: np.ndarray,
    slope: float,
    armijo: float,
    max_halvings: int,
) -> tuple[float, np.ndarray | None, float]:
    """Backtracking line search on f along (dx, dy) (Algorithm 1, Line_search).

    Tries alpha = 1, 1/2, 1/4, ... and accepts the first step with the Armijo sufficient
    increase f(z + alpha dz) - f(z) >= armijo * alpha * slope. Returns (alpha, P at the new
    point, the increase of f), or (0, None, 0) when ``max_halvings`` halvings all fail.

    The increase is evaluated as a sum of small terms rather than as a difference of two values
    of f (an identity, not an approximation):

        f(z + alpha dz) - f(z)
            = alpha (r.dx + c.dy) - (1/eta) sum_ij P_ij expm1(eta alpha (dx_i + dy_j)),

    because near the solution the increase falls below the rounding error of f itself (about
    1e-16 |f|) while the terms here keep their relative accuracy; the test stays meaningful
    down to machine-accuracy marginal errors.
    """
    linear = float(r @ dx + c @ dy)
    alpha = 1.0
    for _ in range(max_halvings + 1):
        with np.errstate(over="ignore", invalid="ignore"):  # a too-long trial step may overflow
            change = P * np.expm1(eta * alpha * (dx[:, None] + dy[None, :]))
            gain = alpha * linear - float(change.sum()) / eta
        if np.isfinite(gain) and gain >= armijo * alpha * slope:
            return alpha, P + change, gain
        alpha *= 0.5
    return 0.0, None, 0.0


def newton_ot(
    C: np.ndarray,
    r: np.ndarray,
    c: np.ndarray,
    eta: float,
    *,
    rho: float | None = 0.2,
    warm_start: int = 20,
    tol: float = 1e-9,
    max_newton: int = 100,
    cg_rtol: float = 1e-6,
    cg_maxiter: int | None = None,
    armijo: float = 1e-4,
    max_halvings: int = 40,
) -> OTTrace:
    """Sinkhorn warm start followed by (sparse) Newton steps on the Lyapunov potential.

    Stage 1 runs ``warm_start`` Sinkhorn sweeps (N1 in Algorithm 1). Stage 2 repeats until the
    marginal error is at most ``tol``: P = P(z); g = grad f(z); M = Sparsify(-H/eta, rho);
    solve eta M dz = g by conjugate gradient (the system is singular along (1, -1) but
    consistent, since g sums to zero against it, which CG handles); alpha = Line_search(f, z,
    dz): backtracking on f from the unit step, halving until the Armijo sufficient-increase
    test holds (``_backtrack``). ``rho=None`` is dense Newton: the full Hessian, applied
    matrix-free. ``rho`` is the kept fraction of P's n * m entries (the paper's target sparsity;
    its experiments keep O(n) entries, i.e. ``rho`` of order 1/n).

    The Newton stage stops early (``converged=False``) when no halving passes the test.
    """
    C, r, c = (np.asarray(a, dtype=np.float64) for a in (C, r, c))
    validate_problem(C, r, c, eta)
    if warm_start < 0 or max_newton < 0 or max_halvings < 0:
        raise ValueError(
            f"warm_start, max_newton and max_halvings must be >= 0, "
            f"got {warm_start}, {max_newton}, {max_halvings}"
        )
    if rho is not None and not (0 < rho <= 1):
        raise ValueError(f"rho must be in (0, 1] (or None for dense Newton), got {rho}")
    start = time.perf_counter()
    if warm_start:
        trace = sinkhorn(C, r, c, eta, tol=tol, max_iter=warm_start)
        x, y = trace.x, trace.y
    else:
        x, y = np.zeros(C.shape[0]), np.zeros(C.shape[1])
        trace = OTTrace(x=x, y=y, plan=transport_plan(C, eta, x, y))
    n = C.shape[0]
    P = transport_plan(C, eta, x, y)
    err = marginal_error(P, r, c)
    kept_fractions = []
    cg_iterations = 0  # of the current Newton step
    null = np.concatenate([np.ones(n), -np.ones(C.shape[1])])  # H (1, -1) = 0
    cg_limit = cg_maxiter if cg_maxiter is not None else 10 * null.size
    for _ in range(max_newton if err > tol else 0):
        g = lyapunov_gradient(P, r, c)
        kept = None if rho is None else sparsify_plan(P, rho)
        kept_fractions.append(1.0 if kept is None else kept.nnz / P.size)
        # Remove g's rounding-level component along the null direction (1, -1): the system is
        # then consistent to machine precision and CG cannot stall on it.
        g -= (g @ null) / (null @ null) * null
        dz, cg_iterations = _conjugate_gradient(_newton_matvec(P, kept), g / eta, cg_rtol, cg_limit)
        dx, dy = dz[:n], dz[n:]
        slope = float(g @ dz)  # directional derivative of f along dz (> 0 for an ascent step)
        alpha, P_new, _gain = _backtrack(P, r, c, eta, dx, dy, slope, armijo, max_halvings)
        if P_new is None:  # no ascent along dz: the sparsified Hessian is too poor a model here
            break
        x, y, P = x + alpha * dx, y + alpha * dy, P_new
        err = marginal_error(P, r, c)
        trace.errors.append(err)
        trace.seconds.append(time.perf_counter() - start)
        trace.kinds.append("newton")
        trace.cg_iterations.append(cg_iterations)
        trace.step_sizes.append(alpha)
        if err <= tol:
            break
    trace.x, trace.y, trace.plan = x, y, P
    trace.kept_fraction = float(np.mean(kept_fractions)) if kept_fractions else 1.0
    trace.converged = bool(err <= tol)
    return trace


def sinkhorn_newton_sparse(
    C: np.ndarray,
    r: np.ndarray,
    c: np.ndarray,
    eta: float,
    *,
    rho: float = 0.2,
    warm_start: int = 20,
    tol: float = 1e-9,
    max_newton: int = 100,
    **kwargs: float,
) -> OTTrace:
    """SNS (Tang et al. 2024, Algorithm 1): ``newton_ot`` with the Hessian sparsified to ``rho``."""
    return newton_ot(
        C, r, c, eta, rho=rho, warm_start=warm_start, tol=tol, max_newton=max_newton, **kwargs
    )
