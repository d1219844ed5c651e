"""Linear stability of GD and SGD at interpolating minima, on diagonal linear networks.

Wu & Su (2023), *The Implicit Regularization of Dynamical Stability in Stochastic Gradient
Descent*, Section 3 (stability) and the diagonal-linear-network part of their generalisation
analysis. For the square loss L(theta) = (1/2n) sum_i (f(x_i; theta) - y_i)^2 and a minimum
theta* that fits every sample, the Hessian is the Gauss-Newton matrix

    H = (1/n) sum_i h_i h_i^T = J^T J / n,   h_i = grad_theta f(x_i; theta*),

so tr(H) = ||J||_F^2 / n and lambda_max(H) = sigma_max(J)^2 / n come from the n x p Jacobian J.

Linearised around theta*, an SGD step on a batch xi of B samples moves the residuals
r = J (theta - theta*) by r <- (I - (eta/B) K S_xi) r, with K = J J^T the Gram matrix of the
per-sample gradients and S_xi the 0/1 diagonal selecting the batch. The loss is ||r||^2 / (2n),
and the minimum is linearly stable (in the mean-square sense) when E||r_t||^2 does not grow.
:func:`sgd_mean_square_growth` computes that growth factor exactly: the spectral radius of the
second-moment map Sigma -> E[A Sigma A^T]. Gradient descent (B = n) is stable iff
eta lambda_max(H) <= 2; single-sample SGD (B = 1) can only be stable if eta tr(H) <= 2.

The model is the diagonal linear network beta = u*u - v*v, f(x) = <beta, x> (Woodworth et al.
2020). Wu & Su write it f(x) = <a*b, x>; a = u + v, b = u - v maps one onto the other, doubling
the Hessian and halving the step that is equivalent, so eta*tr(H) and eta*lambda_max(H) are the
same in both forms. Here tr(H) = (4/n) sum_j (u_j^2 + v_j^2) sum_i x_ij^2
>= 4 sum_j |beta_j| m_j with m_j = (1/n) sum_i x_ij^2: the trace bounds a weighted l1 norm of the
predictor, which is how SGD's stability constraint turns into sparsity and generalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------------------------


@dataclass
class SparseRegression:
    """A noiseless sparse linear regression problem: y = X beta_star, x ~ N(0, I_d)."""

    X: np.ndarray
    y: np.ndarray
    beta_star: np.ndarray

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]


def sparse_regression(n: int, d: int, k: int, rng: np.random.Generator) -> SparseRegression:
    """n Gaussian samples in R^d with a k-sparse target of ones on random coordinates."""
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 samples and d >= 1 features, got n={n}, d={d}")
    if not (0 <= k <= d):
        raise ValueError(f"the sparsity k must be between 0 and d={d}, got {k}")
    X = rng.normal(size=(n, d))
    beta_star = np.zeros(d)
    beta_star[rng.choice(d, size=k, replace=False)] = 1.0
    return SparseRegression(X, X @ beta_star, beta_star)


def dln_beta(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The linear predictor of the diagonal linear network, beta = u*u - v*v."""
    return u * u - v * v


def dln_jacobian(u: np.ndarray, v: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Per-sample gradients of f(x_i) = <u*u - v*v, x_i> in (u, v): the n x 2d Jacobian."""
    if u.shape != v.shape or u.ndim != 1 or X.ndim != 2 or X.shape[1] != u.size:
        raise ValueError(f"shapes do not match: u {u.shape}, v {v.shape}, X {X.shape}")
    return np.concatenate([2 * X * u, -2 * X * v], axis=1)


def dln_trace_closed_form(u: np.ndarray, v: np.ndarray, X: np.ndarray) -> float:
    """tr(H) = (4/n) sum_j (u_j^2 + v_j^2) sum_i x_ij^2 at an interpolating minimum."""
    return float(4 * np.mean(X**2, axis=0) @ (u**2 + v**2))


def weighted_l1(beta: np.ndarray, X: np.ndarray) -> float:
    """sum_j |beta_j| m_j with m_j = (1/n) sum_i x_ij^2: the norm that tr(H)/4 bounds."""
    return float(np.mean(X**2, axis=0) @ np.abs(beta))


# ---------------------------------------------------------------------------------------------
# Sharpness from the Jacobian (Gauss-Newton form of the Hessian at an interpolating minimum)
# ---------------------------------------------------------------------------------------------


def _check_jacobian(J: np.ndarray) -> np.ndarray:
    J = np.asarray(J, dtype=float)
    if J.ndim != 2 or min(J.shape) < 1:
        raise ValueError(f"J must be an (n samples) x (p parameters) matrix, got shape {J.shape}")
    if not np.all(np.isfinite(J)):
        raise ValueError("J has non-finite entries (did the run diverge?)")
    return J


def gauss_newton_trace(J: np.ndarray) -> float:
    """tr(H) = ||J||_F^2 / n for H = J^T J / n (the Hessian at an interpolating minimum)."""
    J = _check_jacobian(J)
    return float(np.sum(J * J) / J.shape[0])


def gauss_newton_top_eig(J: np.ndarray) -> float:
    """lambda_max(H) for H = J^T J / n, from the n x n Gram matrix (cheap when n < p)."""
    J = _check_jacobian(J)
    K = J @ J.T if J.shape[0] <= J.shape[1] else J.T @ J
    return float(np.linalg.eigvalsh(K)[-1] / J.shape[0])


def gauss_newton_frobenius(J: np.ndarray) -> float:
    """||H||_F for H = J^T J / n (equal to ||J J^T||_F / n)."""
    J = _check_jacobian(J)
    return float(np.linalg.norm(J @ J.T) / J.shape[0])


# ---------------------------------------------------------------------------------------------
# Linear stability of the (S)GD map (Section 3 of the paper)
# ---------------------------------------------------------------------------------------------


def _check_step(eta: float, batch_size: int, n: int) -> None:
    if not eta > 0:
        raise ValueError(f"the learning rate eta must be positive, got {eta}")
    if not (1 <= batch_size <= n):
        raise ValueError(f"batch_size must be between 1 and n={n}, got {batch_size}")


def sgd_second_moment_map(
    K: np.ndarray, eta: float, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Sigma -> E[A Sigma A^T], A = I - (eta/B) K S_xi: one SGD step on the residuals' moments.

    Batches are B distinct samples drawn uniformly at each step, so E[S] = (B/n) I and
    E[S Sigma S] has diagonal (B/n) Sigma_ii and off-diagonal B(B-1)/(n(n-1)) Sigma_ij. With
    D = S/B this gives E[A Sigma A^T] = Sigma - (eta/n)(K Sigma + Sigma K) + eta^2 K E[D Sigma D] K.
    B = n is gradient descent.
    """
    K = np.asarray(K, dtype=float)
    n = K.shape[0]
    if K.shape != (n, n):
        raise ValueError(f"K must be square (the n x n Gram matrix J J^T), got {K.shape}")
    _check_step(eta, batch_size, n)
    B = batch_size
    diag_w = 1.0 / (B * n)
    off_w = (B - 1) / (B * n * (n - 1)) if n > 1 else 0.0

    def apply(S: np.ndarray) -> np.ndarray:
        DSD = off_w * S
        DSD[np.diag_indices(n)] = diag_w * np.diag(S)
        KS = K @ S
        return S - (eta / n) * (KS + KS.T) + eta**2 * (K @ DSD @ K)

    return apply


def sgd_mean_square_growth(J: np.ndarray, eta: float, batch_size: int = 1) -> float:
    """Per-step growth factor of E||r_t||^2 (so of the expected loss) under linearised SGD.

    The spectral radius of :func:`sgd_second_moment_map`: a value <= 1 means the minimum with
    Jacobian J is linearly stable for SGD with this eta and batch size. For B = 1 that forces
    eta * tr(H) <= 2 (Wu & Su 2023, Section 3); for B = n it is exactly eta * lambda_max(H) <= 2.

    Computation: residuals live in range(K), K = J J^T = Q L Q^T (nonzero part). Writing
    Sigma = W Psi W with W = K^(1/2) turns the map into Psi -> Psi - (eta/n)(L Psi + Psi L)
    + eta^2 E[G Psi G], G = L^(1/2) Q^T D Q L^(1/2), which is self-adjoint for the Frobenius
    inner product; it preserves the PSD cone, so its spectral radius is its largest eigenvalue,
    found by Lanczos (``scipy.sparse.linalg.eigsh``).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    J = _check_jacobian(J)
    n = J.shape[0]
    _check_step(eta, batch_size, n)
    lam, Q = np.linalg.eigh(J @ J.T)
    keep = lam > 1e-12 * max(lam[-1], 1e-300)
    if not keep.any():
        return 1.0  # H = 0: nothing moves
    lam, Q = lam[keep], Q[:, keep]
    if batch_size == n:  # deterministic: the eigenvalues of I - eta K / n, squared
        return float(np.max((1 - eta * lam / n) ** 2))
    B, m = batch_size, lam.size
    diag_w = 1.0 / (B * n)
    off_w = (B - 1) / (B * n * (n - 1))
    root = np.sqrt(lam)
    F = Q * root  # K^(1/2) restricted to range(K), as n x m

    def apply(psi_flat: np.ndarray) -> np.ndarray:
        psi = psi_flat.reshape(m, m)
        phi = F @ psi @ F.T  # Sigma in sample coordinates
        dsd = off_w * phi
        dsd[np.diag_indices(n)] = diag_w * np.diag(phi)
        out = psi - (eta / n) * (lam[:, None] * psi + psi * lam[None, :])
        out += eta**2 * (F.T @ dsd @ F)
        return out.reshape(-1)

    if m <= 12:  # tiny: dense symmetric eigenproblem
        M = np.stack([apply(e) for e in np.eye(m * m)], axis=1)
        return float(np.linalg.eigvalsh(0.5 * (M + M.T))[-1])
    op = LinearOperator((m * m, m * m), matvec=apply, dtype=float)
    v0 = np.eye(m).reshape(-1)
    return float(eigsh(op, k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0])


def critical_learning_rate(
    J: np.ndarray, batch_size: int = 1, *, rel_tol: float = 1e-6
) -> float:
    """The largest eta at which the minimum with Jacobian J is still linearly stable for SGD.

    Bisection on :func:`sgd_mean_square_growth` (growth <= 1 is stable); for B = n this is
    2 / lambda_max(H).
    """
    J = _check_jacobian(J)
    n = J.shape[0]
    _check_step(1.0, batch_size, n)
    lam = gauss_newton_top_eig(J)
    if lam <= 0:
        raise ValueError("H = 0: every learning rate is stable")
    if batch_size == n:
        return 2.0 / lam
    lo, hi = 0.0, 2.0 / lam  # SGD is never more stable than GD at the same eta
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if sgd_mean_square_growth(J, mid, batch_size) <= 1 + 1e-12:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------
# Training: GD and SGD on the diagonal linear network, many independent runs at once
# ---------------------------------------------------------------------------------------------


@dataclass
class DLNRuns:
    """Final parameters and training traces of R independent runs (one per problem)."""

    u: np.ndarray  # (R, d)
    v: np.ndarray  # (R, d)
    eta: float
    batch_size: int
    steps: np.ndarray  # (R,) steps taken
    diverged: np.ndarray  # (R,) bool
    record_steps: np.ndarray  # (T,) steps at which the traces were recorded
    train_loss: np.ndarray  # (R, T)
    trace: np.ndarray  # (R, T) Gauss-Newton trace tr(J^T J / n) along the run
    extra: dict = field(default_factory=dict)

    @property
    def beta(self) -> np.ndarray:
        return dln_beta(self.u, self.v)


def _losses(X: np.ndarray, y: np.ndarray, beta: np.ndarray) -> np.ndarray:
    res = np.einsum("rnd,rd->rn", X, beta) - y
    return 0.5 * np.mean(res**2, axis=1)


def train_dln(
    X: np.ndarray,
    y: np.ndarray,
    *,
    eta: float,
    batch_size: int,
    alpha: float,
    steps: int,
    rng: np.random.Generator,
    loss_tol: float = 1e-10,
    record_every: int = 250,
    divergence_loss: float = 1e6,
    clip: float | None = None,
) -> DLNRuns:
    """Run (S)GD on beta = u*u - v*v from u = v = alpha * 1, for R problems in parallel.

    ``X`` is (R, n, d) (or (n, d) for one problem), ``y`` is (R, n). Each step draws, for every
    run, a batch of ``batch_size`` distinct samples uniformly at random and takes the step
    eta * gradient of (1/2B) sum_batch (f(x_i) - y_i)^2; ``batch_size = n`` is full-batch GD. A
    run stops when its training loss falls below ``loss_tol`` (checked every ``record_every``
    steps), or is marked diverged when the loss exceeds ``divergence_loss`` or is not finite.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim == 2:
        X, y = X[None], y[None]
    if X.ndim != 3 or y.shape != X.shape[:2]:
        raise ValueError(f"X must be (R, n, d) and y (R, n); got {X.shape} and {y.shape}")
    R, n, d = X.shape
    _check_step(eta, batch_size, n)
    if alpha <= 0:
        raise ValueError(f"the initialisation scale alpha must be positive, got {alpha}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive (or None), got {clip}")
    if steps < 1 or record_every < 1:
        raise ValueError(f"steps and record_every must be positive, got {steps}, {record_every}")
    u = np.full((R, d), float(alpha))
    v = np.full((R, d), float(alpha))
    active = np.ones(R, dtype=bool)
    diverged = np.zeros(R, dtype=bool)
    taken = np.zeros(R, dtype=int)
    col_sq = np.mean(X**2, axis=1)  # (R, d): tr(H) = 4 col_sq . (u^2 + v^2)
    rec_steps, rec_loss, rec_trace = [], [], []
    rows = np.arange(R)[:, None]
    full = batch_size == n
    n_clipped = np.zeros(R, dtype=int)
    last_clipped = np.zeros(R, dtype=int)

    def record(t: int) -> None:
        beta = u * u - v * v
        rec_steps.append(t)
        rec_loss.append(_losses(X, y, beta))
        rec_trace.append(4 * np.sum(col_sq * (u * u + v * v), axis=1))

    record(0)
    t = 0
    # A run past its stability limit overflows before the divergence check sees it; those
    # floating-point warnings are the expected symptom, recorded in ``diverged`` instead.
    with np.errstate(over="ignore", invalid="ignore"):
        while t < steps and active.any():
            chunk = min(record_every, steps - t)
            if not full:
                if batch_size == 1:
                    idx = rng.integers(0, n, size=(chunk, R, 1))
                else:
                    idx = np.argsort(rng.random((chunk, R, n)), axis=-1)[..., :batch_size]
            for s in range(chunk):
                beta = u * u - v * v
                if full:
                    res = np.einsum("rnd,rd->rn", X, beta) - y
                    g = np.einsum("rnd,rn->rd", X, res) / n
                else:
                    xb = X[rows, idx[s]]  # (R, B, d)
                    res = np.einsum("rbd,rd->rb", xb, beta) - y[rows, idx[s]]
                    g = np.einsum("rbd,rb->rd", xb, res) / batch_size
                g[~active] = 0.0
                scale = eta
                if clip is not None:  # ||grad_(u,v)|| = 2 ||(u g, v g)||
                    norm = 2 * np.sqrt(np.sum((u * u + v * v) * g * g, axis=1))
                    over = norm > clip
                    if over.any():
                        n_clipped += over
                        last_clipped[over] = t + s + 1
                        scale = eta * np.minimum(1.0, clip / np.maximum(norm, 1e-300))[:, None]
                u -= 2 * scale * u * g
                v += 2 * scale * v * g
            t += chunk
            taken[active] = t
            record(t)
            loss = rec_loss[-1]
            bad = ~np.isfinite(loss) | (loss > divergence_loss)
            newly = bad & active
            diverged |= newly
            active &= ~bad & (loss >= loss_tol)
            u[newly] = np.nan  # a diverged run has no end point
            v[newly] = np.nan
    return DLNRuns(
        u=u, v=v, eta=float(eta), batch_size=int(batch_size), steps=taken, diverged=diverged,
        record_steps=np.array(rec_steps), train_loss=np.array(rec_loss).T,
        trace=np.array(rec_trace).T,
        extra={"n_clipped": n_clipped, "last_clipped": last_clipped},
    )


@dataclass
class MinimumReport:
    """Sharpness, stability and generalisation of the minima R runs reached."""

    train_loss: np.ndarray
    trace: np.ndarray  # tr(H)
    lambda_max: np.ndarray  # lambda_max(H)
    sgd_growth: np.ndarray  # mean-square growth factor for single-sample SGD at the same eta
    test_mse: np.ndarray  # E_x (f(x) - f*(x))^2 = ||beta - beta*||^2 for x ~ N(0, I)
    l1: np.ndarray  # ||beta||_1
    weighted_l1: np.ndarray  # sum_j |beta_j| m_j


def report_minima(runs: DLNRuns, X: np.ndarray, y: np.ndarray,
                  beta_star: np.ndarray) -> MinimumReport:
    """Measure each run's end point: eta-free sharpness, SGD stability at runs.eta, test error.

    The test error is the population risk for x ~ N(0, I_d), which is exactly
    ||beta - beta*||^2 (no test sample needed).
    """
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        X, y, beta_star = X[None], np.asarray(y)[None], np.asarray(beta_star)[None]
    R = X.shape[0]
    if runs.u.shape[0] != R or beta_star.shape != runs.u.shape:
        raise ValueError("runs, X and beta_star describe different numbers of problems")
    out = {k: np.empty(R) for k in MinimumReport.__dataclass_fields__}
    beta = runs.beta
    for r in range(R):
        if runs.diverged[r]:
            for values in out.values():
                values[r] = np.nan
            continue
        J = dln_jacobian(runs.u[r], runs.v[r], X[r])
        out["train_loss"][r] = _losses(X[r : r + 1], y[r : r + 1], beta[r : r + 1])[0]
        out["trace"][r] = gauss_newton_trace(J)
        out["lambda_max"][r] = gauss_newton_top_eig(J)
        out["sgd_growth"][r] = sgd_mean_square_growth(J, runs.eta, 1)
        out["test_mse"][r] = float(np.sum((beta[r] - beta_star[r]) ** 2))
        out["l1"][r] = float(np.abs(beta[r]).sum())
        out["weighted_l1"][r] = weighted_l1(beta[r], X[r])
    return MinimumReport(**out)
