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
gradient), an optional injected per-step error of relative size ``delta``, and a floating-point
operation counter charged by every solver with the work it actually performs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

SOLVERS = ("exact", "cg", "sketch")


@dataclass
class OpCounter:
    """Floating-point operations charged by the row solvers (a multiply-add counts as 2)."""

    flops: float = 0.0

    def add(self, flops: float) -> None:
        self.flops += float(flops)


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
    flops: list[float] = field(default_factory=list)  # solver operations in that iteration
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
    on each observed (a, b)) and its transpose costs 2 |Omega| k flops each.
    """

    def __init__(self, out_index: np.ndarray, in_index: np.ndarray, values: np.ndarray,
                 n_out: int, n_in: int) -> None:
        order = np.lexsort((in_index, out_index))
        self.a = np.asarray(out_index)[order]
        self.b = np.asarray(in_index)[order]
        self.y = np.asarray(values, dtype=np.float64)[order]
        self.n_out, self.n_in = n_out, n_in
        self.counts = np.bincount(self.a, minlength=n_out)
        self.indptr = np.concatenate([[0], np.cumsum(self.counts)])
        self._csr = sp.csr_matrix((self.y.copy(), self.b, self.indptr), shape=(n_out, n_in))

    @property
    def nnz(self) -> int:
        return self.a.size

    def apply(self, B: np.ndarray, X: np.ndarray, counter: OpCounter) -> np.ndarray:
        """The predictions B_b . x_a on every observed entry (the stacked design times X)."""
        counter.add(2 * self.nnz * B.shape[1])
        return np.einsum("ij,ij->i", B[self.b], X[self.a])

    def apply_t(self, B: np.ndarray, r: np.ndarray, counter: OpCounter) -> np.ndarray:
        """sum_b r_ab B_b for every output row a (the transposed design times residuals r)."""
        counter.add(2 * self.nnz * B.shape[1])
        self._csr.data[:] = r
        return np.asarray(self._csr @ B)


def exact_solve(reg: RowRegressions, B: np.ndarray, counter: OpCounter) -> np.ndarray:
    """Exact row solves: form each Gram matrix B_Omega_a^T B_Omega_a and solve (Cholesky).

    This is the update of Jain et al. (2013) that the paper starts from. Forming the Gram
    matrices costs 2 |Omega| k^2 flops, the right-hand sides 2 |Omega| k, and the n
    factorisations n (k^3 / 3 + 2 k^2): O(|Omega| k^2) per half-iteration. A row with fewer
    than k observations (a singular Gram matrix) gets the minimum-norm least-squares solution.
    """
    n, k = reg.n_out, B.shape[1]
    rhs = reg.apply_t(B, reg.y, counter)
    # All Gram matrices at once: the 0/1 pattern (n x n_in) times the rows' outer products
    # B_b B_b^T (n_in x k^2) touches each observed entry once with k^2 work.
    pattern = sp.csr_matrix((np.ones(reg.nnz), reg.b, reg.indptr), shape=(n, reg.n_in))
    G = np.asarray(pattern @ (B[:, :, None] * B[:, None, :]).reshape(reg.n_in, k * k))
    G = G.reshape(n, k, k)
    try:
        L = np.linalg.cholesky(G)
        X = np.linalg.solve(L.transpose(0, 2, 1), np.linalg.solve(L, rhs[:, :, None]))[..., 0]
    except np.linalg.LinAlgError:  # some row has fewer than k observations: go row by row
        X = np.zeros((n, k))
        for a in range(n):
            lo, hi = reg.indptr[a], reg.indptr[a + 1]
            if hi > lo:
                X[a] = np.linalg.lstsq(B[reg.b[lo:hi]], reg.y[lo:hi], rcond=None)[0]
    counter.add(2 * reg.nnz * k * k + reg.n_out * (k**3 / 3 + 2 * k * k))
    return X


def _rowdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", A, B)


def cg_solve(
    reg: RowRegressions,
    B: np.ndarray,
    X0: np.ndarray,
    steps: int,
    counter: OpCounter,
    *,
    precondition: np.ndarray | None = None,
) -> np.ndarray:
    """A fixed number of (preconditioned) conjugate-gradient steps on every row's normal
    equations B_a^T B_a x_a = B_a^T y_a, all rows at once, warm-started at ``X0``.

    Each step applies the design and its transpose once (4 |Omega| k flops) plus O(n k)
    row-wise vector work: the cost is linear in k. ``precondition``, an (n, k, k) stack of
    matrices P_a, runs the iteration with the preconditioner P_a P_a^T (each application adds
    4 n k^2 flops); see :func:`sketch_solve`. Rows whose residual is already zero stop moving.
    """
    if steps < 0:
        raise ValueError(f"the number of CG steps must be >= 0, got {steps}")
    n, k = X0.shape
    X = X0.copy()
    R = reg.apply_t(B, reg.y - reg.apply(B, X, counter), counter)  # B^T (y - B x)
    counter.add(reg.nnz)

    def prec(Rm: np.ndarray) -> np.ndarray:
        if precondition is None:
            return Rm
        counter.add(4 * n * k * k)
        half = np.einsum("akj,ak->aj", precondition, Rm)  # P_a^T r_a
        return np.einsum("aij,aj->ai", precondition, half)  # P_a P_a^T r_a

    Z = prec(R)
    D = Z.copy()
    rz = _rowdot(R, Z)
    tiny = np.finfo(np.float64).tiny
    for _ in range(steps):
        Q = reg.apply_t(B, reg.apply(B, D, counter), counter)
        dq = _rowdot(D, Q)
        alpha = np.where(dq > tiny, rz / np.maximum(dq, tiny), 0.0)
        X += alpha[:, None] * D
        R -= alpha[:, None] * Q
        Z = prec(R)
        rz_new = _rowdot(R, Z)
        beta = np.where(rz > tiny, rz_new / np.maximum(rz, tiny), 0.0)
        D = Z + beta[:, None] * D
        rz = rz_new
        counter.add(12 * n * k)
    return X


def sketch_preconditioner(
    reg: RowRegressions,
    B: np.ndarray,
    rng: np.random.Generator,
    counter: OpCounter,
    *,
    oversample: int = 4,
) -> np.ndarray:
    """Per-row inverse triangular factors R_a^{-1} from a CountSketch of each row's design.

    Row a's design B_Omega_a (|Omega_a| x k) is hashed into s = ``oversample`` * k buckets with
    random signs (a CountSketch S_a, cost |Omega_a| k); the QR factor R_a of S_a B_Omega_a
    makes B_Omega_a R_a^{-1} well conditioned with high probability (a subspace embedding).
    This is the sketch-and-precondition step of the paper's fast regression solver. Cost:
    |Omega| k (sketch) + n (2 s k^2 + k^3 / 3) (QR and inversion), independent of |Omega_a|
    apart from the sketch itself.
    """
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    n, k = reg.n_out, B.shape[1]
    s = oversample * k
    bucket = rng.integers(0, s, size=reg.nnz)
    sign = rng.choice((-1.0, 1.0), size=reg.nnz)
    S = sp.csr_matrix((sign, (reg.a * s + bucket, np.arange(reg.nnz))), shape=(n * s, reg.nnz))
    SB = np.asarray(S @ B[reg.b]).reshape(n, s, k)
    counter.add(2 * reg.nnz * k)
    R = np.linalg.qr(SB, mode="r")
    # A row observed fewer than k times has a singular R: regularise it so the inverse exists
    # (the preconditioned iteration then returns a least-squares solution on that row).
    scale = np.abs(R).max(axis=(1, 2), keepdims=True) + 1.0
    R = R + 1e-10 * scale * np.eye(k)
    Rinv = np.linalg.inv(R)
    counter.add(n * (2 * s * k * k + k**3 / 3))
    return Rinv


def sketch_solve(
    reg: RowRegressions,
    B: np.ndarray,
    X0: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    counter: OpCounter,
    *,
    oversample: int = 4,
) -> np.ndarray:
    """The paper's high-accuracy regression solver in miniature: sketch-and-precondition, then
    a few warm-started preconditioned conjugate-gradient steps (see :func:`sketch_preconditioner`
    and :func:`cg_solve`). With the preconditioner each step contracts the error by a constant
    factor whatever the conditioning of B_Omega_a, so O(log(1 / eps)) steps reach accuracy eps.
    """
    Rinv = sketch_preconditioner(reg, B, rng, counter, oversample=oversample)
    return cg_solve(reg, B, X0, steps, counter, precondition=Rinv)


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

    One iteration: V <- solve(U) [+ error], V <- QR(V); U <- solve(V) [+ error], and the error
    ||U V^T - M||_F / ||M||_F is recorded before U is orthonormalised by QR.

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

    def solve(reg: RowRegressions, B: np.ndarray, X0: np.ndarray, counter: OpCounter):
        if solver == "exact":
            X = exact_solve(reg, B, counter)
        elif solver == "cg":
            X = cg_solve(reg, B, X0, steps, counter)
        else:
            X = sketch_solve(reg, B, X0, steps, rng, counter, oversample=oversample)
        return perturb(X, delta, rng)

    for _ in range(iterations):
        counter = OpCounter()
        start = time.perf_counter()
        V_hat = solve(by_col, U, V_warm, counter)  # U V_hat^T is the current estimate
        V, Rv = np.linalg.qr(V_hat)
        U_hat = solve(by_row, V, U @ Rv.T, counter)  # warm start: the same estimate, new basis
        trace.seconds.append(time.perf_counter() - start)
        trace.flops.append(counter.flops)
        trace.errors.append(relative_error(U_hat, V, problem.M))
        U, Ru = np.linalg.qr(U_hat)
        V_warm = V @ Ru.T
    trace.U, trace.V = U, V_warm
    return trace

