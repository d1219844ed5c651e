"""Projection onto a Euclidean ball in the norm of a positive semi-definite matrix.

Online Newton steps (Hazan, Agarwal and Kale, 2007) and the exp-concave variant of optimistic
OMD (Chen et al., 2023) project in the norm ||z||_U = sqrt(z^T U z) of their regulariser:

    Pi^U(y) = argmin_{||x|| <= radius} (x - y)^T U (x - y).

With U = Q diag(lam) Q^T the KKT conditions give x(nu) = Q diag(lam / (lam + nu)) Q^T y for a
multiplier nu >= 0 with ||x(nu)|| = radius (nu = 0 when y is already in the ball). The norm of
x(nu) decreases in nu, and 1 / ||x(nu)|| is concave in nu, so Newton's method on the secular
equation 1 / radius - 1 / ||x(nu)|| = 0 started at nu = 0 increases monotonically to the root
(the trust-region argument of More and Sorensen, 1983). Everything is batched.
"""

from __future__ import annotations

import numpy as np


def project_ball_metric(
    y: np.ndarray,
    metric: np.ndarray,
    radius: float = 1.0,
    *,
    diagonal: bool = False,
) -> np.ndarray:
    """Pi^U(y) = argmin_{||x|| <= radius} (x - y)^T U (x - y), batched over leading axes.

    ``y`` has shape (..., d). ``metric`` is a full matrix U of shape (..., d, d) (symmetric
    positive semi-definite) or, with ``diagonal=True``, its diagonal, shape (..., d); leading
    axes broadcast against ``y``'s. Directions in the null space of U cost nothing; the
    minimiser returned is then the one with no component along them. Returns an array of
    ``y``'s shape.
    """
    y = np.asarray(y, dtype=float)
    metric = np.asarray(metric, dtype=float)
    if y.ndim < 1:
        raise ValueError("y must have at least one axis (the dimension d)")
    d = y.shape[-1]
    if diagonal:
        if metric.shape[-1:] != (d,):
            raise ValueError(f"a diagonal metric must have shape (..., {d}), got {metric.shape}")
        lam = np.broadcast_to(metric, np.broadcast_shapes(metric.shape, y.shape))
        return project_ball_eigen(np.broadcast_to(y, lam.shape), lam, None, radius)
    if metric.shape[-2:] != (d, d):
        raise ValueError(f"metric must have shape (..., {d}, {d}), got {metric.shape}")
    lam, basis = np.linalg.eigh(metric)
    lead = np.broadcast_shapes(lam.shape[:-1], y.shape[:-1])
    return project_ball_eigen(np.broadcast_to(y, (*lead, d)), np.broadcast_to(lam, (*lead, d)),
                              np.broadcast_to(basis, (*lead, d, d)), radius)


def project_ball_eigen(
    y: np.ndarray,
    eigenvalues: np.ndarray,
    basis: np.ndarray | None,
    radius: float = 1.0,
    *,
    iterations: int = 60,
    tol: float = 1e-11,
) -> np.ndarray:
    """:func:`project_ball_metric` for U = Q diag(eigenvalues) Q^T given by its eigenpairs.

    ``y`` and ``eigenvalues`` have shape (..., d), ``basis`` Q (..., d, d) with the
    eigenvectors as columns, or None for a diagonal U (Q = I). Online Newton steps reuse one
    eigendecomposition for several projections in the same norm.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    lam = np.asarray(eigenvalues, dtype=float)
    if np.any(lam < -1e-10 * np.maximum(1.0, np.abs(lam).max(initial=0.0))):
        raise ValueError("metric must be positive semi-definite")
    lam = np.maximum(lam, 0.0)
    z = y if basis is None else np.einsum("...ji,...j->...i", basis, y)
    a = np.where(lam > 0, z, 0.0)  # x(0) in the eigenbasis (null-space part dropped)
    norm0 = np.sqrt((a**2).sum(-1))
    nu = np.zeros(norm0.shape)
    active = norm0 > radius
    if active.any():
        w = (lam * z)[active]
        la = np.where(lam[active] > 0, lam[active], np.inf)  # null directions: w = 0 there
        n_a = nu[active]
        for _ in range(iterations):
            den = la + n_a[:, None]
            ratio2 = (w / den) ** 2
            phi = np.sqrt(ratio2.sum(-1))
            if np.all(np.abs(phi - radius) <= tol * radius):
                break
            # Newton on psi(nu) = 1 / radius - 1 / phi(nu); phi^2 has derivative -2 sum ratio2/den
            n_a = n_a + (1.0 / radius - 1.0 / phi) * phi**3 / (ratio2 / den).sum(-1)
        nu[active] = n_a
    den = lam + nu[..., None]
    x_eig = np.where(lam > 0, lam / np.where(den > 0, den, 1.0), 0.0) * z
    x = x_eig if basis is None else np.einsum("...ij,...j->...i", basis, x_eig)
    # guard the last rounding error so that x is feasible
    norms = np.sqrt((x**2).sum(-1, keepdims=True))
    return x * np.minimum(1.0, radius / np.maximum(norms, 1e-300))
