"""Finite-sum operators F = (1/n) sum_i F_i with an oracle-call counter.

Variance-reduced methods are compared by how many *component evaluations* F_i(u) they spend,
not by iterations: a full evaluation F(u) costs n, a mini-batch of b components costs b, and a
difference F_i(u) - F_i(v) costs 2 (two evaluations of the same component). Every method in
``lib.optim`` draws operator values only through a :class:`FiniteSumOperator`, so the counter
is charged the same way for all of them. Residuals measured for plots and stopping tests go
through :meth:`FiniteSumOperator.exact`, which is not charged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: ``components(u, idx)`` returns the rows F_i(u) for i in ``idx``, shape (len(idx), dim).
Components = Callable[[np.ndarray, np.ndarray], np.ndarray]


class FiniteSumOperator:
    """F(u) = (1/n) sum_{i<n} F_i(u) on R^dim, counting component evaluations in ``calls``.

    Parameters
    ----------
    components:
        ``components(u, idx) -> array (len(idx), dim)``: the component values F_i(u), i in idx.
    n, dim:
        Number of components and dimension of u.
    batch_mean:
        Optional ``batch_mean(u, idx) -> (1/len(idx)) sum_{i in idx} F_i(u)``, a faster way to
        the same average (no (len(idx), dim) intermediate); charged exactly like the default.
    mean:
        Optional fast evaluation of the full mean F(u) (for example H u - c with a precomputed
        H for a linear operator). :meth:`exact` uses it uncharged, for residuals; :meth:`full`
        uses it too but still charges n calls: the counter models the oracle cost of the
        finite sum, whatever shortcut computes the value.
    lipschitz:
        A constant L with ||F(u) - F(v)|| <= L ||u - v|| (for cocoercive F: F is 1/L-cocoercive).
    mean_square_lipschitz:
        A constant L_Q with (1/n) sum_i ||F_i(u) - F_i(v)||^2 <= L_Q^2 ||u - v||^2, the
        "on average" constant that governs the variance of mini-batch estimators.
    """

    def __init__(
        self,
        components: Components,
        n: int,
        dim: int,
        *,
        batch_mean: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        mean: Callable[[np.ndarray], np.ndarray] | None = None,
        lipschitz: float | None = None,
        mean_square_lipschitz: float | None = None,
    ) -> None:
        if int(n) != n or n < 1:
            raise ValueError(f"a finite sum needs n >= 1 components, got n={n}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"the dimension must be a positive integer, got dim={dim}")
        for name, value in (("lipschitz", lipschitz),
                            ("mean_square_lipschitz", mean_square_lipschitz)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._components = components
        self._batch_mean = batch_mean or (lambda u, idx: components(u, idx).mean(axis=0))
        self._mean = mean
        self.n, self.dim = int(n), int(dim)
        self.lipschitz = lipschitz
        self.mean_square_lipschitz = mean_square_lipschitz
        self.calls = 0

    # -- charged evaluations -------------------------------------------------------------
    def full(self, u: np.ndarray) -> np.ndarray:
        """F(u), all n components: charges n calls."""
        self._check_point(u)
        self.calls += self.n
        if self._mean is not None:  # same value, faster route; the charge is still n
            return self._mean(u)
        return self._batch_mean(u, np.arange(self.n))

    def batch(self, u: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(1/b) sum_{i in idx} F_i(u): charges b = len(idx) calls (indices may repeat)."""
        self._check_point(u)
        idx = self._check_indices(idx)
        self.calls += idx.size
        return self._batch_mean(u, idx)

    def batch_difference(self, u: np.ndarray, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(1/b) sum_{i in idx} [F_i(u) - F_i(v)]: charges 2 b calls."""
        self._check_point(u)
        self._check_point(v)
        idx = self._check_indices(idx)
        self.calls += 2 * idx.size
        return self._batch_mean(u, idx) - self._batch_mean(v, idx)

    # -- uncharged measurements ------------------------------------------------------------
    def exact(self, u: np.ndarray) -> np.ndarray:
        """F(u) for measuring residuals: *not* charged to the counter."""
        self._check_point(u)
        if self._mean is not None:
            return self._mean(u)
        return self._components(u, np.arange(self.n)).mean(axis=0)

    def reset(self) -> None:
        """Set the oracle-call counter back to zero."""
        self.calls = 0

    def _check_point(self, u: np.ndarray) -> None:
        if np.shape(u) != (self.dim,):
            raise ValueError(f"expected a point of shape ({self.dim},), got {np.shape(u)}")

    def _check_indices(self, idx: np.ndarray) -> np.ndarray:
        return check_indices(idx, self.n, "component")


def check_indices(idx: np.ndarray, n: int, noun: str = "component") -> np.ndarray:
    """``idx`` as an array, after checking it is a non-empty 1-d integer array in [0, n)."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{noun} indices must be a non-empty 1-d integer array")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{noun} indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
    return idx


def linear_operator(M: np.ndarray, q: np.ndarray) -> FiniteSumOperator:
    """The finite sum of affine components F_i(u) = M_i u - q_i, M of shape (n, dim, dim).

    Covers, for instance, bilinear games (M_i = [[0, A_i], [-A_i^T, 0]]). The constants are
    L = ||mean_i M_i||_2 (a Lipschitz constant of F) and L_Q^2 = ||(1/n) sum_i M_i^T M_i||_2.
    """
    M, q = np.asarray(M, dtype=float), np.asarray(q, dtype=float)
    if M.ndim != 3 or M.shape[1] != M.shape[2]:
        raise ValueError(f"M must have shape (n, dim, dim), got {M.shape}")
    if q.shape != M.shape[:2]:
        raise ValueError(f"q must have shape {M.shape[:2]}, got {q.shape}")
    M_mean, q_mean = M.mean(axis=0), q.mean(axis=0)
    L = float(np.linalg.norm(M_mean, 2))
    LQ = float(np.sqrt(np.linalg.eigvalsh(np.einsum("nij,nik->jk", M, M) / M.shape[0])[-1]))
    if not L > 0:
        raise ValueError("every M_i is zero on average: F is constant, nothing to solve")
    return FiniteSumOperator(
        lambda u, idx: M[idx] @ u - q[idx],
        M.shape[0], M.shape[1],
        mean=lambda u: M_mean @ u - q_mean, lipschitz=L, mean_square_lipschitz=LQ,
    )


def least_squares_operator(A: np.ndarray, b: np.ndarray) -> FiniteSumOperator:
    """Gradients of f(u) = (1/2n) ||A u - b||^2 as a finite sum: F_i(u) = a_i (a_i^T u - b_i).

    F is monotone and 1/L-cocoercive with L = lambda_max(A^T A / n) (Baillon-Haddad: the
    gradient of a convex L-smooth function), and each component is 1/||a_i||^2-cocoercive. The
    mean-square constant is L_Q^2 = lambda_max((1/n) sum_i ||a_i||^2 a_i a_i^T). The full mean
    H u - c with H = A^T A / n, c = A^T b / n is precomputed, so uncharged residuals cost O(d^2).
    """
    A, b = np.asarray(A, dtype=float), np.asarray(b, dtype=float)
    if A.ndim != 2:
        raise ValueError(f"A must be a matrix (n, d), got shape {A.shape}")
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},), got {b.shape}")
    n = A.shape[0]
    H, c = A.T @ A / n, A.T @ b / n
    row_sq = np.einsum("ij,ij->i", A, A)
    L = float(np.linalg.eigvalsh(H)[-1])
    LQ = float(np.sqrt(np.linalg.eigvalsh((A * row_sq[:, None]).T @ A / n)[-1]))
    if not L > 0:
        raise ValueError("A is zero: the operator is constant and there is nothing to solve")

    def components(u: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = A[idx]
        return rows * (rows @ u - b[idx])[:, None]

    def batch_mean(u: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = A[idx]
        return rows.T @ (rows @ u - b[idx]) / idx.size

    return FiniteSumOperator(components, n, A.shape[1], batch_mean=batch_mean,
                             mean=lambda u: H @ u - c, lipschitz=L, mean_square_lipschitz=LQ)


def random_least_squares(
    n: int, d: int, rng: np.random.Generator, *, smallest_scale: float = 1e-2, noise: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """An ill-conditioned least-squares instance (A, b): Gaussian rows with column scales
    geometric from 1 down to ``smallest_scale``, b = A w + noise.

    The Hessian A^T A / n then has eigenvalues spread over about 1 to smallest_scale^2, so at
    practical tolerances the problem behaves as merely monotone (cocoercive), not strongly so.
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 rows and d >= 1 columns, got n={n}, d={d}")
    if not 0 < smallest_scale <= 1:
        raise ValueError(f"smallest_scale must be in (0, 1], got {smallest_scale}")
    A = rng.standard_normal((n, d)) * np.geomspace(1.0, smallest_scale, d)
    b = A @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    return A, b


def bilinear_game(
    n: int, d: int, rng: np.random.Generator, *, smallest_singular: float = 0.1,
    spread: float = 0.5,
) -> FiniteSumOperator:
    """A finite-sum bilinear game min_x max_y (1/n) sum_i [x^T A_i y - b_i^T x + c_i^T y]:
    F_i(x, y) = (A_i y - b_i, c_i - A_i^T x), monotone and Lipschitz but *not* cocoercive
    (F is skew: <F(u) - F(v), u - v> = 0), the setting of the paper's Algorithm 2.

    The mean A = (1/n) sum_i A_i has singular values geometric from 1 down to
    ``smallest_singular`` (random orthogonal factors); each A_i = A + ``spread`` G_i / sqrt(d)
    with Gaussian G_i centred to average zero; the offsets b_i, c_i are standard normal, shifted
    so that the unique solution u* = (x*, y*) is a standard normal vector (so ||u_0 - u*|| stays
    moderate however small the smallest singular value).
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 components and dimension d >= 1, got n={n}, d={d}")
    if not 0 < smallest_singular <= 1:
        raise ValueError(f"smallest_singular must be in (0, 1], got {smallest_singular}")
    if spread < 0:
        raise ValueError(f"spread must be non-negative, got {spread}")
    Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (Q1 * np.geomspace(1.0, smallest_singular, d)) @ Q2.T
    G = rng.standard_normal((n, d, d))
    A_i = A + spread * (G - G.mean(axis=0)) / np.sqrt(d)
    zero = np.zeros((n, d, d))
    M = np.block([[zero, A_i], [-A_i.transpose(0, 2, 1), zero]])
    q = rng.standard_normal((n, 2 * d))
    # shift the offsets so that the solution is a standard normal vector u* (M_mean u* = q_mean)
    u_star = rng.standard_normal(2 * d)
    q += M.mean(axis=0) @ u_star - q.mean(axis=0)
    return linear_operator(M, q)
