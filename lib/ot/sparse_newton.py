"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm start, then Newton steps on a sparsified Hessian.

Tang et al. (2024), Algorithm 1. The Hessian of the Lyapunov potential f is
-eta [[diag(P 1), P], [P^T, diag(P^T 1)]]; near the solution most of P's mass sits on O(n)
entries (Section 5), so keeping the diagonal blocks exactly and only the largest entries of P
gives a sparse matrix whose Newton system conjugate gradient solves in O(nnz) per iteration.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg

from lib.ot.entropic import (
    OTTrace,
    lyapunov,
    lyapunov_gradient,
    marginal_error,
    sinkhorn,
    transport_plan,
    validate_problem,
)


def sparsify_plan(P: np.ndarray, rho: float) -> sp.csr_matrix:
    """Keep the ceil(rho * n * m) largest entries of P, zero the rest (Algorithm 1, Sparsify).

    ``rho=1`` keeps everything. Dropping entries of a non-negative P leaves the sparsified
    Hessian diagonally dominant, hence still negative semi-definite.
    """
    if not (0 < rho <= 1):
        raise ValueError(f"rho, the kept fraction of the plan, must be in (0, 1], got {rho}")
    n, m = P.shape
    keep = min(n * m, max(1, math.ceil(rho * n * m)))
    if keep == n * m:
        return sp.csr_matrix(P)
    # The keep-th largest value is the threshold; ties at it are all kept (a few extra entries).
    threshold = np.partition(P, n * m - keep, axis=None)[n * m - keep]
    mask = P >= threshold
    rows, cols = np.nonzero(mask)  # row-major order: already the CSR layout
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    return sp.csr_matrix((P[rows, cols], cols, indptr), shape=(n, m))


def _newton_operator(P: np.ndarray, kept: sp.csr_matrix | None) -> LinearOperator:
    """M = -H / eta = [[diag(P 1), K], [K^T, diag(P^T 1)]] as an operator, K the kept plan.

    The diagonal blocks always come from the full plan (dropping them would break
    semi-definiteness); ``kept=None`` uses K = P (dense Newton). Neither form is assembled:
    a product costs two (sparse) matrix-vector products.
    """
    n, m = P.shape
    row, col = P.sum(axis=1), P.sum(axis=0)
    K = P if kept is None else kept
    KT = K.T  # a free view (dense) or CSC (sparse); no copy

    def matvec(v: np.ndarray) -> np.ndarray:
        v = v.ravel()
        a, b = v[:n], v[n:]
        return np.concatenate([row * a + K @ b, KT @ a + col * b])

    return LinearOperator((n + m, n + m), matvec=matvec, dtype=np.float64)


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
    max_log_change: float = 20.0,
) -> OTTrace:
    """Sinkhorn warm start followed by (sparse) Newton steps on the Lyapunov potential.

    Stage 1 runs ``warm_start`` Sinkhorn sweeps (N1 in Algorithm 1). Stage 2 repeats until the
    marginal error is at most ``tol``: P = P(z); g = grad f(z); M = Sparsify(-H/eta, rho);
    solve eta M dz = g by conjugate gradient (the system is singular along (1, -1) but
    consistent, since g sums to zero against it, which CG handles); backtrack on f from step
    size 1 (Armijo). ``rho=None`` is dense Newton: the full Hessian, applied matrix-free.

    In float64, f stops resolving its own increase once the marginal error nears 1e-12;
    the line search then also accepts a step that lowers the marginal error.
    """
    C, r, c = (np.asarray(a, dtype=np.float64) for a in (C, r, c))
    validate_problem(C, r, c, eta)
    if warm_start < 0 or max_newton < 0:
        raise ValueError(f"warm_start and max_newton must be >= 0, got {warm_start}, {max_newton}")
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
    f = lyapunov(C, r, c, eta, x, y)
    kept_fractions = []
    counter = {"n": 0}  # conjugate-gradient iterations of the current Newton step

    def count(_xk: np.ndarray) -> None:
        counter["n"] += 1

    for _ in range(max_newton if err > tol else 0):
        g = lyapunov_gradient(P, r, c)
        kept = None if rho is None else sparsify_plan(P, rho)
        kept_fractions.append(1.0 if kept is None else kept.nnz / P.size)
        M = _newton_operator(P, kept)
        counter["n"] = 0
        # Remove g's rounding-level component along the null direction (1, -1): the system is
        # then consistent to machine precision and CG cannot stall on it.
        null = np.concatenate([np.ones(n), -np.ones(C.shape[1])])
        g -= (g @ null) / (null @ null) * null
        dz, _info = cg(M, g / eta, rtol=cg_rtol, atol=0.0, maxiter=cg_maxiter, callback=count)
        dx, dy = dz[:n], dz[n:]
        slope = float(g @ dz)  # directional derivative of f along dz (> 0 for an ascent step)
        # Start the search where no entry of P changes by more than a factor e^20: near-flat
        # directions of the sparsified Hessian can otherwise propose steps that overflow.
        alpha = min(1.0, max_log_change / max(eta * float(np.abs(dz).max()), 1e-300))
        accepted = False
        for _halving in range(40):
            x_new, y_new = x + alpha * dx, y + alpha * dy
            with np.errstate(over="ignore", invalid="ignore"):  # a too-long trial step may overflow
                P_new = transport_plan(C, eta, x_new, y_new)
                f_new = float(-P_new.sum() / eta + r @ x_new + c @ y_new)  # f (Sec. 3) from P_new
                err_new = marginal_error(P_new, r, c)
            if np.isfinite(f_new) and (
                f_new >= f + armijo * alpha * slope or err_new < err
            ):
                accepted = True
                break
            alpha *= 0.5
        if not accepted:  # no ascent along dz: the sparsified Hessian is too poor a model here
            break
        x, y, P, f, err = x_new, y_new, P_new, f_new, err_new
        trace.errors.append(err)
        trace.seconds.append(time.perf_counter() - start)
        trace.kinds.append("newton")
        trace.cg_iterations.append(counter["n"])
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
