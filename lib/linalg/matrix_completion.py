"""Low-rank matrix completion by alternating minimization, with exact or approximate row solves.

Gu, Song, Yin and Zhang (ICLR 2024, arXiv:2302.11068) revisit the alternating minimization of
Jain, Netrapalli and Sanghavi (2013): start from the top-k singular vectors of the rescaled
observed matrix P_Omega(M) / p, with large rows trimmed, then alternate the two least-squares
problems

    V <- argmin_V ||P_Omega(U V^T - M)||_F^2,    U <- argmin_U ||P_Omega(U V^T - M)||_F^2,

orthonormalising each factor by QR. Each problem splits into one k-dimensional weighted
regression per row (or column) of M. Solving them exactly costs O(|Omega| k^2) per iteration;
the paper shows that the iteration tolerates *approximate* solves (its robust analysis of the
alternating updates), so that a fast high-accuracy regression solver (a sketch-based
preconditioner followed by a few iterations) brings the cost to O~(|Omega| k).

This module implements the problem generator (incoherent rank-k ground truth, Bernoulli mask),
the trimmed spectral initialisation, the alternating minimization with three row solvers
(exact normal equations; warm-started conjugate gradient; CountSketch-preconditioned conjugate
gradient, the paper's solver), an optional injected per-step error of relative size ``delta``.
Every multiplication the solvers perform goes through :class:`lib.linalg.op_count.MultiplyAdds`,
which charges it from the operands' sizes at run time: the solvers never state their own cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lib.linalg.op_count import MultiplyAdds

SOLVERS = ("exact", "cg", "sketch")


@dataclass
class CompletionProblem:
    """A rank-k matrix M = U* diag(sigma) V*^T and the observed pattern Omega.

    ``rows``, ``cols`` and ``values`` list the observed entries (i, j, M_ij), sorted by row;
    ``p`` is the sampling rate used to draw them; ``mu`` is the incoherence of M (the larger of
    the two factors' mu(U) = (m / k) max_i ||U_i||^2).
    """

    M: np.ndarray
    U_star: np.ndarray
    V_star: np.ndarray
    sigma: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    p: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.M.shape

    @property
    def rank(self) -> int:
        return self.sigma.size

    @property
    def n_observed(self) -> int:
        """|Omega|, the number of observed entries."""
        return self.rows.size

    @property
    def mu(self) -> float:
        return max(incoherence(self.U_star), incoherence(self.V_star))


@dataclass
class AltMinTrace:
    """What one run of :func:`altmin` produced, one entry per full iteration (V then U)."""

    solver: str
    errors: list[float] = field(default_factory=list)  # ||U V^T - M||_F / ||M||_F
    solve_errors: list[float] = field(default_factory=list)  # same, before the injected error
    madds: list[float] = field(default_factory=list)  # multiply-adds of that iteration's solves
    seconds: list[float] = field(default_factory=list)  # wall time of that iteration's solves
    init_error: float = float("nan")
    U: np.ndarray | None = None
    V: np.ndarray | None = None


def incoherence(U: np.ndarray) -> float:
    """mu(U) = (m / k) max_i ||e_i^T Q||^2 for an orthonormal basis Q of U's column span.

    It lies in [1, m / k]: 1 when the mass is spread evenly over rows, m / k when one row
    carries a whole direction. Matrix completion needs it small (the incoherence assumption).
    """
    U = np.asarray(U, dtype=np.float64)
    if U.ndim != 2 or U.shape[1] < 1 or U.shape[0] < U.shape[1]:
        raise ValueError(f"U must be m x k with m >= k >= 1, got shape {U.shape}")
    Q, _ = np.linalg.qr(U)
    m, k = Q.shape
    return float(m / k * (Q**2).sum(axis=1).max())


def make_problem(
    m: int,
    n: int,
    k: int,
    p: float,
    rng: np.random.Generator,
    *,
    condition: float = 2.0,
) -> CompletionProblem:
    """A random incoherent rank-k matrix and a Bernoulli(p) sample Omega of its entries.

    The factors are orthonormalised Gaussian matrices (incoherent with high probability: mu is
    O(log m) rather than m / k); the singular values run linearly from sqrt(m n) down to
    sqrt(m n) / ``condition``, so the entries are of order one and kappa = ``condition``.
    """
    if min(m, n) < 1 or k < 1 or k > min(m, n):
        raise ValueError(f"need 1 <= k <= min(m, n), got m={m}, n={n}, k={k}")
    if not (0 < p <= 1):
        raise ValueError(f"the sampling rate p must be in (0, 1], got {p}")
    if condition < 1:
        raise ValueError(f"the condition number must be >= 1, got {condition}")
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    sigma = np.sqrt(m * n) * np.linspace(1.0, 1.0 / condition, k)
    M = (U * sigma) @ V.T
    mask = rng.random((m, n)) < p
    rows, cols = np.nonzero(mask)  # row-major: sorted by row
    return CompletionProblem(M, U, V, sigma, rows, cols, M[rows, cols], float(p))


def relative_error(U: np.ndarray, V: np.ndarray, M: np.ndarray) -> float:
    """||U V^T - M||_F / ||M||_F, the recovery error on all entries (observed or not)."""
    return float(np.linalg.norm(U @ V.T - M) / np.linalg.norm(M))


# ---------------------------------------------------------------------------------------------
# One side of the alternation: a k-dimensional weighted regression per output row.
# ---------------------------------------------------------------------------------------------


class RowRegressions:
    """The regressions min_x sum_{(a, b) in Omega} (B_b . x_a - y_ab)^2, one per output row a.

    For the V-update of matrix completion, a runs over the columns of M and B = U; for the
    U-update, a runs over the rows and B = V. The pattern (which b each a observes) is fixed;
    the design B changes every half-iteration. Entries are stored sorted by a, as a CSR matrix
    whose ``data`` is overwritten in place, so applying the stacked design A (x_a -> B_b . x_a
    on each observed (a, b)) and its transpose costs |Omega| k multiply-adds each.
    """

    def __init__(self, out_index: np.ndarray, in_index: np.ndarray, values: np.ndarray,
                 n_out: int, n_in: int) -> None:
        out_index, in_index = np.asarray(out_index), np.asarray(in_index)
        if out_index.shape != in_index.shape or out_index.shape != np.shape(values):
            raise ValueError("out_index, in_index and values must have the same length")
        if out_index.size and (out_index.min() < 0 or out_index.max() >= n_out
                               or in_index.min() < 0 or in_index.max() >= n_in):
            raise ValueError(f"indices must lie in [0, {n_out}) x [0, {n_in})")
        order = np.lexsort((in_index, out_index))
        self.a = out_index[order]
        self.b = in_index[order]
        self.y = np.asarray(values, dtype=np.float64)[order]
        self.n_out, self.n_in = n_out, n_in
        self.counts = np.bincount(self.a, minlength=n_out)
        self.indptr = np.concatenate([[0], np.cumsum(self.counts)])
        self._csr = sp.csr_matrix((self.y.copy(), self.b, self.indptr), shape=(n_out, n_in))

    @property
    def nnz(self) -> int:
        return self.a.size

    def apply(self, B: np.ndarray, X: np.ndarray, counter: MultiplyAdds) -> np.ndarray:
        """The predictions B_b . x_a on every observed entry (the stacked design times X).

        Computed in chunks of entries through two reused buffers (the gathered rows B_b and
        x_a stay in cache): |Omega| k multiply-adds in all.
        """
        k = X.shape[1]
        out = np.empty(self.nnz)
        chunk = max(1, 2**16 // max(1, k))
        size = min(chunk, self.nnz)
        buf_b, buf_x = np.empty((size, k)), np.empty((size, k))
        for lo in range(0, self.nnz, chunk):
            hi = min(lo + chunk, self.nnz)
            rows_b = np.take(B, self.b[lo:hi], axis=0, out=buf_b[: hi - lo])
            rows_x = np.take(X, self.a[lo:hi], axis=0, out=buf_x[: hi - lo])
            out[lo:hi] = counter.rowdot(rows_b, rows_x, "apply design")
        return out

    def apply_t(self, B: np.ndarray, r: np.ndarray, counter: MultiplyAdds) -> np.ndarray:
        """sum_b r_ab B_b for every output row a (the transposed design times residuals r)."""
        self._csr.data[:] = r
        return counter.matmul(self._csr, B, "apply transpose")


def exact_solve(reg: RowRegressions, B: np.ndarray, counter: MultiplyAdds) -> np.ndarray:
    """Exact row solves: form each Gram matrix B_Omega_a^T B_Omega_a and solve it.

    This is the update of Jain et al. (2013) that the paper starts from. The Gram matrices
    take |Omega| k^2 multiply-adds (the 0/1 pattern times the outer products B_b B_b^T), the
    right-hand sides |Omega| k, and the n_out k x k solves n_out (k^3 / 3 + k^2):
    O(|Omega| k^2) per half-iteration. A row with fewer than k observations (a singular Gram
    matrix) gets the minimum-norm least-squares solution.
    """
    n, k = reg.n_out, B.shape[1]
    rhs = reg.apply_t(B, reg.y, counter)
    outer = counter.matmul(B[:, :, None], B[:, None, :], "Gram").reshape(reg.n_in, k * k)
    pattern = sp.csr_matrix((np.ones(reg.nnz), reg.b, reg.indptr), shape=(n, reg.n_in))
    G = counter.matmul(pattern, outer, "Gram").reshape(n, k, k)
    deficient = reg.counts < k
    G[deficient] = np.eye(k)
    X = counter.solve(G, rhs, "k x k solves")
    for a in np.flatnonzero(deficient):
        lo, hi = reg.indptr[a], reg.indptr[a + 1]
        X[a] = np.linalg.lstsq(B[reg.b[lo:hi]], reg.y[lo:hi], rcond=None)[0] if hi > lo else 0.0
    return X


def cg_solve(
    reg: RowRegressions,
    B: np.ndarray,
    X0: np.ndarray,
    steps: int,
    counter: MultiplyAdds,
    *,
    precondition: np.ndarray | None = None,
    tol: float | None = None,
    history: list[float] | None = None,
) -> np.ndarray:
    """Up to ``steps`` (preconditioned) conjugate-gradient steps on every row's normal
    equations B_a^T B_a x_a = B_a^T y_a, all rows at once, warm-started at ``X0``.

    Each step applies the design and its transpose once (2 |Omega| k multiply-adds) plus
    O(n k) row-wise vector work: nothing costs k^2. ``precondition``, an (n, k, k) stack of
    matrices P_a (see :func:`sketch_preconditioner`), runs the iteration with the
    preconditioner P_a P_a^T, which adds 2 n k^2 per step. Rows whose residual is already zero
    stop moving. With ``tol``, stops as soon as every row's normal-equations residual
    ||B_a^T (y_a - B_a x_a)|| is at most ``tol`` ||B_a^T y_a||; ``history`` (a list) receives
    the largest such relative residual before the first step and after each step.
    """
    if steps < 0:
        raise ValueError(f"the number of CG steps must be >= 0, got {steps}")
    if tol is not None and not tol > 0:
        raise ValueError(f"the tolerance must be positive, got {tol}")
    n, k = X0.shape
    X = X0.copy()
    R = reg.apply_t(B, reg.y - reg.apply(B, X, counter), counter)  # B^T (y - B x)
    scale = None
    if tol is not None or history is not None:
        scale = np.maximum(np.linalg.norm(reg.apply_t(B, reg.y, MultiplyAdds()), axis=1),
                           np.finfo(np.float64).tiny)  # uncharged: only for the stopping test

    def converged() -> bool:
        if scale is None:
            return False
        worst = float(np.max(np.linalg.norm(R, axis=1) / scale))
        if history is not None:
            history.append(worst)
        return tol is not None and worst <= tol

    def prec(Rm: np.ndarray) -> np.ndarray:
        if precondition is None:
            return Rm
        half = counter.matmul(np.swapaxes(precondition, 1, 2), Rm[:, :, None],
                              "apply preconditioner")  # P_a^T r_a
        return counter.matmul(precondition, half, "apply preconditioner")[:, :, 0]

    Z = prec(R)
    D = Z.copy()
    rz = counter.rowdot(R, Z, "CG vector work")
    tiny = np.finfo(np.float64).tiny
    for _ in range(steps):
        if converged():
            break
        Q = reg.apply_t(B, reg.apply(B, D, counter), counter)
        dq = counter.rowdot(D, Q, "CG vector work")
        alpha = np.where(dq > tiny, rz / np.maximum(dq, tiny), 0.0)
        X = counter.scale_add(alpha, D, X, "CG vector work")
        R = counter.scale_add(-alpha, Q, R, "CG vector work")
        Z = prec(R)
        rz_new = counter.rowdot(R, Z, "CG vector work")
        beta = np.where(rz > tiny, rz_new / np.maximum(rz, tiny), 0.0)
        D = counter.scale_add(beta, D, Z, "CG vector work")
        rz = rz_new
    else:
        converged()
    return X


def count_sketch(reg: RowRegressions, size: int,
                 rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A block-diagonal CountSketch, one independent S_a per output row a: row a's
    observations are hashed into ``size`` buckets with random signs.

    Returned already composed with the row selection, as the sparse (n_out * size) x n_in
    matrix whose block a maps B to S_a B_Omega_a; it has one +-1 per observed entry, so
    sketching every row's design costs |Omega| k multiply-adds. (Entries of one row have
    distinct b, so no two land on the same position of the matrix.) Also returns, per observed
    entry, the sketch row it lands in (a * size + bucket) and its sign, to sketch the values.
    """
    if size < 1:
        raise ValueError(f"the sketch size must be >= 1, got {size}")
    bucket = rng.integers(0, size, size=reg.nnz)
    sign = 2.0 * rng.integers(0, 2, size=reg.nnz) - 1.0
    target = reg.a * size + bucket
    S = sp.csr_matrix((sign, (target, reg.b)), shape=(reg.n_out * size, reg.n_in))
    return S, target, sign


def sketch_preconditioner(
    reg: RowRegressions,
    B: np.ndarray,
    rng: np.random.Generator,
    counter: MultiplyAdds,
    *,
    oversample: int = 4,
    return_sketch: bool = False,
):
    """Per-row inverse triangular factors R_a^{-1} from a CountSketch of each row's design.

    Row a's design B_Omega_a (|Omega_a| x k) is hashed into s = ``oversample`` * k buckets
    (:func:`count_sketch`, |Omega_a| k multiply-adds); the QR factor R_a of the small sketch
    S_a B_Omega_a (s x k) makes B_Omega_a R_a^{-1} well conditioned with high probability.
    This is the sketch-and-precondition step of the paper's fast regression solver. Cost:
    |Omega| k (sketch) + n_out (s k^2 - k^3 / 3) (QR) + n_out k^3 (inverse): the per-row
    k^3 terms do not depend on |Omega_a|, so they are lower order once |Omega_a| >> k^2.
    With ``return_sketch`` also returns the sketches (S_a B_Omega_a, S_a y_a) of every row,
    shapes (n_out, s, k) and (n_out, s), for a sketch-and-solve start.
    """
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    n, k = reg.n_out, B.shape[1]
    s = oversample * k
    S, target, sign = count_sketch(reg, s, rng)
    SB = counter.matmul(S, B, "sketch").reshape(n, s, k)
    R = counter.qr_r(SB, "QR of the sketch")
    # A row observed fewer than k times has a singular R: regularise it so the inverse exists
    # (the preconditioned iteration then returns a least-squares solution on that row).
    scale = np.abs(R).max(axis=(1, 2), keepdims=True) + 1.0
    R = R + 1e-10 * scale * np.eye(k)
    Rinv = counter.inverse(R, "invert R")
    if not return_sketch:
        return Rinv
    # S_a y_a for every row: the same hashing applied to the observed values
    Sy = np.bincount(target, weights=sign * reg.y, minlength=n * s).reshape(n, s)
    counter.charge(reg.nnz, "sketch")
    return Rinv, SB, Sy


def sketch_solve(
    reg: RowRegressions,
    B: np.ndarray,
    X0: np.ndarray | None,
    steps: int,
    rng: np.random.Generator,
    counter: MultiplyAdds,
    *,
    oversample: int = 4,
    tol: float | None = None,
    history: list[float] | None = None,
) -> np.ndarray:
    """The paper's high-accuracy regression solver: sketch-and-precondition, then ``steps``
    preconditioned conjugate-gradient steps (see :func:`sketch_preconditioner` and
    :func:`cg_solve`). With the preconditioner each step contracts the error by a constant
    factor whatever the conditioning of B_Omega_a, so O(log(1 / eps)) steps reach accuracy
    eps. ``X0=None`` starts from the sketch-and-solve solution argmin_x ||S_a (B_a x - y_a)||
    (|Omega| + n_out (s k + 2 k^2) multiply-adds); otherwise the iteration is warm-started.
    Total: O(steps |Omega| k + n_out k^3), against O(|Omega| k^2) for :func:`exact_solve`.
    ``tol`` and ``history`` are passed to :func:`cg_solve` (stop at a relative residual).
    """
    Rinv, SB, Sy = sketch_preconditioner(reg, B, rng, counter, oversample=oversample,
                                         return_sketch=True)
    if X0 is None:
        g = counter.matmul(np.swapaxes(SB, 1, 2), Sy[:, :, None], "sketch-and-solve")
        half = counter.matmul(np.swapaxes(Rinv, 1, 2), g, "sketch-and-solve")
        X0 = counter.matmul(Rinv, half, "sketch-and-solve")[:, :, 0]
    return cg_solve(reg, B, X0, steps, counter, precondition=Rinv, tol=tol, history=history)


# ---------------------------------------------------------------------------------------------
# Initialisation and the alternating minimization.
# ---------------------------------------------------------------------------------------------


def spectral_init(
    problem: CompletionProblem, k: int, *, clip_mu: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed spectral initialisation (Jain et al. 2013, used unchanged by the paper).

    U0 = top-k left singular vectors of P_Omega(M) / p; rows of U0 with norm above
    2 mu sqrt(k / m) are set to zero (keeping U0 incoherent) and U0 is re-orthonormalised.
    ``clip_mu`` is the incoherence parameter mu of the theory (default: the problem's own,
    which the analysis assumes known). Returns (U0, V0) with V0 = (P_Omega(M) / p)^T U0, the
    right factor that makes U0 V0^T the rank-k estimate (a warm start for iterative solvers).
    """
    m, n = problem.shape
    if not (1 <= k <= min(m, n) - 1):
        raise ValueError(f"the rank k must be in [1, min(m, n) - 1], got {k}")
    from scipy.sparse.linalg import svds

    Y = sp.csr_matrix((problem.values / problem.p, (problem.rows, problem.cols)), shape=(m, n))
    U0, _, _ = svds(Y, k=k, random_state=0)
    mu = problem.mu if clip_mu is None else float(clip_mu)
    if mu <= 0:
        raise ValueError(f"clip_mu must be positive, got {mu}")
    norms = np.linalg.norm(U0, axis=1)
    U0 = np.where((norms > 2 * mu * np.sqrt(k / m))[:, None], 0.0, U0)
    U0, _ = np.linalg.qr(U0)
    V0 = np.asarray(Y.T @ U0)
    return U0, V0


def perturb(X: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """X + delta ||X||_F G / ||G||_F with G Gaussian: an update that is off by a relative delta.

    This models an approximate regression solve whose error is a fixed fraction of the
    iterate's scale, the kind of per-step error the paper's robust analysis allows.
    """
    if delta < 0:
        raise ValueError(f"the injected error delta must be >= 0, got {delta}")
    if delta == 0:
        return X
    G = rng.standard_normal(X.shape)
    return X + delta * np.linalg.norm(X) * G / np.linalg.norm(G)


def altmin(
    problem: CompletionProblem,
    k: int | None = None,
    *,
    solver: str = "exact",
    iterations: int = 25,
    steps: int = 3,
    delta: float = 0.0,
    seed: int = 0,
    clip_mu: float | None = None,
    oversample: int = 4,
) -> AltMinTrace:
    """Alternating minimization for matrix completion (the paper's main algorithm, after
    Jain et al. 2013), with exact or approximate row solves and an optional injected error.

    One iteration: V <- solve(U) [+ error], V <- QR(V); U <- solve(V) [+ error]. Two errors
    ||U V^T - M||_F / ||M||_F are recorded before U is orthonormalised by QR: ``solve_errors``
    for the U-update as the solver returned it (the error the iteration itself has converged
    to, given a V that carries the previous injected error) and ``errors`` for the iterate
    carried on (after the injected error of this half-step; the same when ``delta`` = 0).

    ``solver``: ``"exact"`` (normal equations per row, O(|Omega| k^2)), ``"cg"`` (``steps``
    warm-started conjugate-gradient steps, O(|Omega| k) per step) or ``"sketch"`` (CountSketch
    preconditioner plus ``steps`` preconditioned CG steps, the paper's solver). Iterative solvers
    are warm-started at the current estimate expressed in the new basis. ``delta`` > 0 adds a
    relative error of size delta to every solve (:func:`perturb`). The same Omega is reused at
    every iteration (the analysis draws fresh samples; practice does not).
    """
    k = problem.rank if k is None else int(k)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if solver != "exact" and steps < 1:
        raise ValueError(f"an iterative solver needs steps >= 1, got {steps}")
    if delta < 0:
        raise ValueError(f"the injected error delta must be >= 0, got {delta}")
    m, n = problem.shape
    rng = np.random.default_rng(seed)
    by_col = RowRegressions(problem.cols, problem.rows, problem.values, n, m)  # V-update
    by_row = RowRegressions(problem.rows, problem.cols, problem.values, m, n)  # U-update
    U, V_warm = spectral_init(problem, k, clip_mu=clip_mu)
    trace = AltMinTrace(solver=solver, init_error=relative_error(U, V_warm, problem.M))

    def solve(reg: RowRegressions, B: np.ndarray, X0: np.ndarray,
              counter: MultiplyAdds) -> np.ndarray:
        if solver == "exact":
            return exact_solve(reg, B, counter)
        if solver == "cg":
            return cg_solve(reg, B, X0, steps, counter)
        return sketch_solve(reg, B, X0, steps, rng, counter, oversample=oversample)

    for _ in range(iterations):
        counter = MultiplyAdds()
        start = time.perf_counter()
        V_hat = perturb(solve(by_col, U, V_warm, counter), delta, rng)
        V, Rv = np.linalg.qr(V_hat)
        # warm start: the current estimate U V_hat^T written in the new basis V
        U_solved = solve(by_row, V, U @ Rv.T, counter)
        trace.seconds.append(time.perf_counter() - start)
        trace.madds.append(counter.total)
        trace.solve_errors.append(relative_error(U_solved, V, problem.M))
        U_hat = perturb(U_solved, delta, rng)
        trace.errors.append(relative_error(U_hat, V, problem.M) if delta > 0
                            else trace.solve_errors[-1])
        U, Ru = np.linalg.qr(U_hat)
        V_warm = V @ Ru.T
    trace.U, trace.V = U, V_warm
    return trace

