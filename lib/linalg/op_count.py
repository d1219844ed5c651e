"""Counting the multiply-adds of the array operations a solver actually executes.

A cost claim such as "O(|Omega| k) per iteration" is about arithmetic, and the honest way to
measure arithmetic without hardware counters is to route every heavy operation through a
counter that reads the sizes of the operands it is handed *at run time*: a dense product of an
(a x b) by a (b x c) array is charged a b c multiply-adds, a sparse-times-dense product
nnz * c, a Householder QR of an (s x k) block the textbook s k^2 - k^3 / 3, and so on. The
solver never states its own cost: if it multiplies bigger arrays, or more often, the count
follows. Operations that are not routed through the counter (indexing, copies, additions of
vectors) are memory traffic, not multiply-adds, and are not charged.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp


def _batch_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


class MultiplyAdds:
    """A multiply-add counter with the operations it charges; ``total`` and ``by_label``.

    Every method computes the operation with numpy/scipy and charges it from the operands'
    shapes (and, for sparse matrices, their stored entries). ``label`` groups the charges, so a
    caller can see where the work goes (for instance "Gram" against "sketch" against "CG").
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.by_label: dict[str, float] = defaultdict(float)

    def charge(self, amount: float, label: str) -> None:
        if amount < 0:
            raise ValueError(f"a multiply-add count cannot be negative, got {amount}")
        self.total += float(amount)
        self.by_label[label] += float(amount)

    def matmul(self, A, B: np.ndarray, label: str = "matmul") -> np.ndarray:
        """A @ B for a scipy sparse or dense (possibly batched) A and a dense B.

        Sparse A: nnz(A) multiply-adds per column of B. Dense: the product of the batch size,
        the two outer dimensions and the inner one (numpy's broadcasting rules for the batch).
        """
        B = np.asarray(B)
        if sp.issparse(A):
            if A.shape[1] != B.shape[0]:
                raise ValueError(f"shapes {A.shape} and {B.shape} do not multiply")
            columns = 1 if B.ndim == 1 else _batch_size(B.shape[1:])
            self.charge(A.nnz * columns, label)
            return np.asarray(A @ B)
        A = np.asarray(A)
        out = A @ B
        inner = A.shape[-1]
        self.charge(out.size * inner, label)
        return out

    def rowdot(self, X: np.ndarray, Y: np.ndarray, label: str = "rowdot") -> np.ndarray:
        """The row-wise inner products sum_j X_ij Y_ij: one multiply-add per entry."""
        X, Y = np.asarray(X), np.asarray(Y)
        if X.shape != Y.shape:
            raise ValueError(f"row-wise dot needs equal shapes, got {X.shape} and {Y.shape}")
        self.charge(X.size, label)
        return np.einsum("...j,...j->...", X, Y)

    def scale_add(self, alpha: np.ndarray, X: np.ndarray, Y: np.ndarray,
                  label: str = "axpy") -> np.ndarray:
        """Y + alpha[:, None] X (a row-wise axpy): one multiply-add per entry of X."""
        X = np.asarray(X)
        self.charge(X.size, label)
        return Y + np.asarray(alpha)[..., None] * X

    def qr_r(self, A: np.ndarray, label: str = "QR") -> np.ndarray:
        """The triangular factor R of a (batched) (s x k) Householder QR, s >= k:
        s k^2 - k^3 / 3 multiply-adds per block (the LAPACK dgeqrf count, halved flops)."""
        A = np.asarray(A)
        s, k = A.shape[-2:]
        if s < k:
            raise ValueError(f"QR here needs at least as many rows as columns, got {s} x {k}")
        self.charge(_batch_size(A.shape[:-2]) * (s * k * k - k**3 / 3), label)
        return np.linalg.qr(A, mode="r")

    def solve(self, G: np.ndarray, b: np.ndarray, label: str = "solve") -> np.ndarray:
        """Solve a (batched) k x k system G x = b, b of shape (..., k), by LU with partial
        pivoting (numpy's gesv): k^3 / 3 + k^2 multiply-adds per system."""
        G, b = np.asarray(G), np.asarray(b)
        k = G.shape[-1]
        if G.shape[-2] != k or b.shape[-1] != k:
            raise ValueError(f"need square k x k systems and length-k right-hand sides, got "
                             f"{G.shape} and {b.shape}")
        self.charge(_batch_size(G.shape[:-2]) * (k**3 / 3 + k * k), label)
        return np.linalg.solve(G, b[..., None])[..., 0]

    def inverse(self, A: np.ndarray, label: str = "inverse") -> np.ndarray:
        """The inverse of a (batched) k x k matrix by LU (numpy's gesv on the identity):
        k^3 multiply-adds each."""
        A = np.asarray(A)
        k = A.shape[-1]
        if A.shape[-2] != k:
            raise ValueError(f"only square matrices have an inverse, got {A.shape}")
        self.charge(_batch_size(A.shape[:-2]) * k**3, label)
        return np.linalg.inv(A)
