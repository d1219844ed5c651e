"""Neural collapse with features tied to an input matrix (Tirer, Huang & Niles-Weed, 2023).

The unconstrained features model (UFM) treats the deepest features ``H`` (d x Kn) as free
variables; its minimisers collapse exactly. The paper ties ``H`` to a given input features
matrix ``H0`` (the features of a shallower layer) and studies (the model of its Section 2)

    f(W, H; H0) = 1/(2Kn) ||W H - Y||_F^2 + lam_W/(2K) ||W||_F^2
                  + lam_H/(2Kn) ||H||_F^2 + beta/(2Kn) ||H - H0||_F^2,

with ``Y = I_K kron 1_n^T`` (balanced classes, columns ordered by class). This module holds

* the collapse metrics: NC1 = Tr(Sigma_W Sigma_B^+)/K, the paper's trace ratio
  NC1~ = Tr(Sigma_W)/Tr(Sigma_B) (Section 3) and NC2 (distance to a simplex ETF, Section 5);
* the minimiser of ``f`` by alternating its two closed-form block minimisers;
* the gradient flow on the "central path" W = W*(H) (Section 3), explicit Euler;
* the collapsed UFM minimiser (the theorem the paper quotes from Tirer & Bruna, 2022) and the
  first-order perturbation operator of the near-collapse analysis (Section 4: the Schur
  complement form of its first theorem and the large-beta expansion that follows it).

Vectorisation is column-stacking (Fortran order), as in the paper, so the ``dn`` entries of
class ``k`` in ``vec(H)`` are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- data layout


def _check_layout(H: np.ndarray, K: int) -> int:
    """Validate a d x Kn features matrix organised by class; return n (samples per class)."""
    H = np.asarray(H)
    if H.ndim != 2:
        raise ValueError(f"features must be a d x Kn matrix, got shape {H.shape}")
    if not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"the number of classes K must be an integer >= 2, got {K!r}")
    if H.shape[1] % K or H.shape[1] == 0:
        raise ValueError(
            f"features have {H.shape[1]} columns, not a positive multiple of K = {K} "
            "(the model needs n samples per class, columns ordered by class)"
        )
    if not np.all(np.isfinite(H)):
        raise ValueError("features contain NaN or infinite entries")
    return H.shape[1] // K


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def one_hot_targets(K: int, n: int) -> np.ndarray:
    """The target matrix Y = I_K kron 1_n^T (K x Kn) of the paper's Section 2."""
    if K < 2 or n < 1:
        raise ValueError(f"need K >= 2 classes and n >= 1 samples per class, got K={K}, n={n}")
    return np.kron(np.eye(K), np.ones((1, n)))


def balanced_by_class(
    X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` random rows of each class of ``(X, y)`` and return them ordered by class.

    Returns ``(X_ordered, y_ordered)`` with ``X_ordered`` of shape (Kn, p): the balanced,
    class-sorted layout the model assumes (transpose it to get a d x Kn features matrix).
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"need X of shape (N, p) and labels y of shape (N,), got {X.shape}, {y.shape}"
        )
    classes = np.unique(y)
    rows = []
    for c in classes:
        members = np.flatnonzero(y == c)
        if members.size < n:
            raise ValueError(f"class {c} has {members.size} samples, fewer than n = {n}")
        rows.append(np.sort(rng.choice(members, size=n, replace=False)))
    order = np.concatenate(rows)
    return X[order], y[order]


# ----------------------------------------------------------------------------- metrics


def class_covariances(H: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Within- and between-class covariances Sigma_W, Sigma_B (d x d) of Section 3."""
    n = _check_layout(H, K)
    d = H.shape[0]
    blocks = H.reshape(d, K, n)
    means = blocks.mean(axis=2)  # d x K, the class means
    centred = blocks - means[:, :, None]
    flat = centred.reshape(d, K * n)
    sigma_w = flat @ flat.T / (K * n)
    between = means - means.mean(axis=1, keepdims=True)
    sigma_b = between @ between.T / K
    return sigma_w, sigma_b


def nc1(H: np.ndarray, K: int) -> float:
    """NC1 = Tr(Sigma_W Sigma_B^+) / K, the metric of Papyan et al. the paper's Section 5 uses.

    ``Sigma_B^+`` is the Moore-Penrose pseudo-inverse (rank at most K - 1).
    """
    sigma_w, sigma_b = class_covariances(H, K)
    return float(np.sum(sigma_w * between_pinv(sigma_b, K)) / K)


def between_pinv(sigma_b: np.ndarray, K: int) -> np.ndarray:
    """Pseudo-inverse of Sigma_B on its range, which has dimension at most K - 1.

    Only the K - 1 leading eigenpairs are inverted (and of those, only eigenvalues above
    1e-12 times the largest): a generic ``pinv`` would also invert the rounding-level
    eigenvalues of the null space and blow NC1 up.
    """
    vals, vecs = np.linalg.eigh(sigma_b)
    keep = vals[::-1][: K - 1]
    basis = vecs[:, ::-1][:, : K - 1]
    ok = keep > 1e-12 * max(keep.max(initial=0.0), 1e-300)
    return (basis[:, ok] / keep[ok]) @ basis[:, ok].T


def nc1_tilde(H: np.ndarray, K: int) -> float:
    """The paper's trace-ratio metric NC1~ = Tr(Sigma_W) / Tr(Sigma_B) (Section 3).

    This is the quantity its central-path theorem shows decreasing.
    """
    sigma_w, sigma_b = class_covariances(H, K)
    tb = np.trace(sigma_b)
    if tb <= 0:
        raise ValueError("the class means coincide (Tr Sigma_B = 0): NC1~ is undefined")
    return float(np.trace(sigma_w) / tb)


def nc2(H: np.ndarray, K: int) -> float:
    """NC2 of the paper's Section 5: Frobenius distance between the normalised Gram matrix of
    the centred class means and the unit-norm simplex ETF Gram (I_K - 11^T/K)/sqrt(K-1)."""
    n = _check_layout(H, K)
    means = H.reshape(H.shape[0], K, n).mean(axis=2)
    M = means - means.mean(axis=1, keepdims=True)
    G = M.T @ M
    norm = np.linalg.norm(G)
    if norm == 0:
        raise ValueError("the class means coincide: NC2 is undefined")
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    return float(np.linalg.norm(G / norm - etf))


# ----------------------------------------------------------------------------- the model


def objective(
    W: np.ndarray, H: np.ndarray, H0: np.ndarray, K: int,
    lam_W: float, lam_H: float, beta: float,
) -> float:
    """The model's objective f(W, H; H0) (Section 2), with its 1/(2Kn) and 1/(2K) scalings."""
    n = _check_layout(H, K)
    Y = one_hot_targets(K, n)
    Kn = K * n
    return float(
        np.sum((W @ H - Y) ** 2) / (2 * Kn)
        + lam_W * np.sum(W**2) / (2 * K)
        + lam_H * np.sum(H**2) / (2 * Kn)
        + beta * np.sum((H - H0) ** 2) / (2 * Kn)
    )


def objective_gradients(
    W: np.ndarray, H: np.ndarray, H0: np.ndarray, K: int,
    lam_W: float, lam_H: float, beta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients (dF/dW, dF/dH) of the objective f of Section 2."""
    n = _check_layout(H, K)
    Kn = K * n
    R = W @ H - one_hot_targets(K, n)
    gW = R @ H.T / Kn + lam_W * W / K
    gH = (W.T @ R + lam_H * H + beta * (H - H0)) / Kn
    return gW, gH


def optimal_classifier(H: np.ndarray, K: int, lam_W: float) -> np.ndarray:
    """The ridge classifier W*(H) = Y H^T (H H^T + n lam_W I_d)^{-1} (Section 3).

    It minimises f over W for fixed H (only the first two terms of f depend on W).
    """
    n = _check_layout(H, K)
    _check_positive(lam_W=lam_W)
    if lam_W == 0:
        raise ValueError("lam_W must be > 0 (the classifier's ridge term makes W*(H) unique)")
    d = H.shape[0]
    Y = one_hot_targets(K, n)
    gram = H @ H.T + n * lam_W * np.eye(d)
    return np.linalg.solve(gram, H @ Y.T).T


def optimal_features(
    W: np.ndarray, H0: np.ndarray, K: int, lam_H: float, beta: float
) -> np.ndarray:
    """The feature update H*(W) = (W^T W + (lam_H + beta) I_d)^{-1} (W^T Y + beta H0).

    Setting the H-gradient of f to zero for fixed W gives this closed form.
    """
    n = _check_layout(H0, K)
    _check_positive(lam_H=lam_H, beta=beta)
    if lam_H + beta == 0:
        raise ValueError("lam_H + beta must be > 0 for the feature update to be unique")
    d = H0.shape[0]
    Y = one_hot_targets(K, n)
    return np.linalg.solve(W.T @ W + (lam_H + beta) * np.eye(d), W.T @ Y + beta * H0)


@dataclass
class TiedSolution:
    """Result of :func:`tied_features_solve`: the minimiser and how it was reached."""

    W: np.ndarray
    H: np.ndarray
    iterations: int
    converged: bool
    objectives: list[float] = field(default_factory=list)


def tied_features_solve(
    H0: np.ndarray,
    K: int,
    lam_W: float,
    lam_H: float,
    beta: float,
    *,
    H_init: np.ndarray | None = None,
    tol: float = 1e-12,
    max_iter: int = 5000,
    polish: int = 500,
    gtol: float = 1e-14,
) -> TiedSolution:
    """Minimise the model f(W, H; H0) of Section 2.

    For fixed W the optimal features are the closed form H*(W) (:func:`optimal_features`), so
    the problem reduces to g(W) = f(W, H*(W)) over the K x d classifier alone, whose gradient is
    dF/dW at H = H*(W) (envelope theorem). Since H*(W) = P Z with Z = [Y; H0] and
    P = (W^T W + (lam_H + beta) I)^{-1} [W^T, beta I], every term of g only needs the Gram
    matrix Z Z^T, so an evaluation costs O((K + d)^2 d) whatever the number of samples.

    We minimise g with L-BFGS (scipy), starting from the ridge classifier W*(H_init) (default
    H_init = H0, the natural start for a feature map near the identity), then polish with exact
    alternating sweeps W = W*(H), H = H*(W), which never increase f, until the relative change of
    H is below ``tol`` (at most ``polish`` sweeps; ``converged`` says whether it got there).
    ``gtol`` is L-BFGS's stopping threshold on the largest entry of the gradient of g.
    """
    from scipy.optimize import minimize

    n = _check_layout(H0, K)
    _check_positive(lam_W=lam_W, lam_H=lam_H, beta=beta)
    if beta == 0:
        raise ValueError("beta must be > 0: beta = 0 is the plain UFM, which H0 does not affect")
    if lam_W == 0:
        raise ValueError("lam_W must be > 0 (the classifier's ridge term makes W*(H) unique)")
    if tol <= 0 or max_iter < 0 or polish < 1:
        raise ValueError(
            f"need tol > 0, max_iter >= 0 and polish >= 1; got {tol}, {max_iter}, {polish}"
        )
    H0 = np.asarray(H0, dtype=float)
    start = H0 if H_init is None else np.asarray(H_init, dtype=float)
    if start.shape != H0.shape:
        raise ValueError(f"H_init has shape {start.shape}, H0 has shape {H0.shape}")
    d = H0.shape[0]
    Kn = K * n
    gamma = lam_H + beta
    Z = np.vstack([one_hot_targets(K, n), H0])  # (K + d) x Kn
    G = Z @ Z.T
    sel_Y = np.hstack([np.eye(K), np.zeros((K, d))])  # Y = sel_Y Z
    sel_H0 = np.hstack([np.zeros((d, K)), np.eye(d)])  # H0 = sel_H0 Z
    eye_d = np.eye(d)

    def features_map(W: np.ndarray) -> np.ndarray:
        """P with H*(W) = P Z."""
        return np.linalg.solve(W.T @ W + gamma * eye_d, np.hstack([W.T, beta * eye_d]))

    def classifier(P: np.ndarray) -> np.ndarray:
        """W*(H) for H = P Z: Y H^T (H H^T + n lam_W I)^{-1} in Gram form."""
        PG = P @ G
        return np.linalg.solve(PG @ P.T + n * lam_W * eye_d, PG @ sel_Y.T).T

    def value(W: np.ndarray, P: np.ndarray) -> tuple[float, np.ndarray]:
        A = W @ P - sel_Y  # residual W H - Y = A Z
        D = P - sel_H0  # H - H0 = D Z
        AG = A @ G
        val = (
            np.sum(AG * A) / (2 * Kn) + lam_W * np.sum(W**2) / (2 * K)
            + lam_H * np.sum((P @ G) * P) / (2 * Kn) + beta * np.sum((D @ G) * D) / (2 * Kn)
        )
        return float(val), AG @ P.T / Kn + lam_W * W / K

    def reduced(w: np.ndarray) -> tuple[float, np.ndarray]:
        W = w.reshape(K, d)
        val, grad = value(W, features_map(W))
        return val, grad.ravel()

    W = optimal_classifier(start, K, lam_W)
    objectives = [objective(W, start, H0, K, lam_W, lam_H, beta)]
    iterations = 0
    if max_iter > 0:
        res = minimize(
            reduced, W.ravel(), jac=True, method="L-BFGS-B",
            options=dict(maxiter=max_iter, maxcor=30, ftol=1e-16, gtol=gtol),
        )
        W = res.x.reshape(K, d)
        iterations = int(res.nit)
        objectives.append(float(res.fun))
    P = features_map(W)
    converged = False
    for _ in range(polish):
        P_new = features_map(classifier(P))
        iterations += 1
        diff = P_new - P
        change = np.sqrt(np.sum((diff @ G) * diff) / max(np.sum((P_new @ G) * P_new), 1e-300))
        P = P_new
        if change < tol:
            converged = True
            break
    H = P @ Z
    W = optimal_classifier(H, K, lam_W)
    objectives.append(objective(W, H, H0, K, lam_W, lam_H, beta))
    return TiedSolution(W=W, H=H, iterations=iterations, converged=converged,
                        objectives=objectives)


def layerwise_features(
    H0: np.ndarray, K: int, lam_W: float, lam_H: float, beta: float, depth: int, **solve_kw
) -> list[np.ndarray]:
    """Apply the model ``depth`` times, each time with the previous minimiser as the input
    (the layer-by-layer reading of Section 3: adding a layer on top of fixed ones).

    Returns ``[H0, H1, ..., H_depth]``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    layers = [np.asarray(H0, dtype=float)]
    for _ in range(depth):
        layers.append(tied_features_solve(layers[-1], K, lam_W, lam_H, beta, **solve_kw).H)
    return layers


# ----------------------------------------------------------------------------- central path


@dataclass
class FlowTrace:
    """Logged quantities of the central-path flow (:func:`central_path_flow`)."""

    times: np.ndarray
    nc1_tilde: np.ndarray
    nc1: np.ndarray
    trace_within: np.ndarray
    trace_between: np.ndarray
    H: np.ndarray


def central_path_velocity(H: np.ndarray, K: int, lam_W: float, lam_H: float) -> np.ndarray:
    """The flow's right-hand side dH/dt = -Kn grad L(H) (Section 3), L(H) = f(W*(H), H) at beta=0.

    Since W*(H) minimises f over W, the envelope theorem gives
    Kn grad L(H) = W*^T (W* H - Y) + lam_H H with W* = W*(H).
    """
    n = _check_layout(H, K)
    _check_positive(lam_H=lam_H)
    W = optimal_classifier(H, K, lam_W)
    return -(W.T @ (W @ H - one_hot_targets(K, n)) + lam_H * H)


def central_path_flow(
    H0: np.ndarray,
    K: int,
    lam_W: float,
    lam_H: float,
    *,
    dt: float = 1e-2,
    steps: int = 1000,
    log_every: int = 1,
) -> FlowTrace:
    """Explicit Euler on the central-path gradient flow dH/dt = -Kn grad L(H) (Section 3).

    Logs NC1~, NC1, Tr Sigma_W and Tr Sigma_B every ``log_every`` steps (and at t = 0). The
    paper's theorem: NC1~ strictly decreases, e^{2 lam_H t} Tr Sigma_W decreases and
    e^{2 lam_H t} Tr Sigma_B increases along the exact flow; ``dt`` must be small for Euler to
    follow it (below 2 / (largest eigenvalue of W*^T W* + lam_H)).
    """
    _check_layout(H0, K)
    if dt <= 0 or steps < 1 or log_every < 1:
        raise ValueError(f"need dt > 0, steps >= 1, log_every >= 1; got {dt}, {steps}, {log_every}")
    H = np.array(H0, dtype=float)
    times, t_nc, t_nc1, t_w, t_b = [], [], [], [], []

    def log(t: float) -> None:
        sw, sb = class_covariances(H, K)
        times.append(t)
        t_w.append(float(np.trace(sw)))
        t_b.append(float(np.trace(sb)))
        t_nc.append(t_w[-1] / t_b[-1])
        t_nc1.append(float(np.sum(sw * between_pinv(sb, K)) / K))

    log(0.0)
    for step in range(1, steps + 1):
        H = H + dt * central_path_velocity(H, K, lam_W, lam_H)
        if step % log_every == 0 or step == steps:
            log(step * dt)
    return FlowTrace(
        times=np.array(times), nc1_tilde=np.array(t_nc), nc1=np.array(t_nc1),
        trace_within=np.array(t_w), trace_between=np.array(t_b), H=H,
    )


# ----------------------------------------------------------------------------- near collapse


def collapsed_minimizer(
    d: int, K: int, n: int, lam_W: float, lam_H: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A global minimiser (W*, H*) of the UFM (f without the beta term), as characterised by
    Theorem 3.1 of Tirer & Bruna (2022), which the paper restates in its Section 2.

    With c = sqrt(lam_H lam_W) < 1 and rho = (1 - c) sqrt(lam_W / lam_H):
    H* = sqrt(rho) R kron 1_n^T and W* = sqrt(lam_H / lam_W) sqrt(rho) R^T for a random
    d x K matrix R with orthonormal columns (orthogonal collapse).
    """
    if d < K:
        raise ValueError(f"orthogonal collapse needs d >= K, got d={d}, K={K}")
    _check_positive(lam_W=lam_W, lam_H=lam_H)
    if lam_W == 0 or lam_H == 0:
        raise ValueError("the collapsed minimiser needs lam_W > 0 and lam_H > 0")
    c = np.sqrt(lam_H * lam_W)
    if c >= 1:
        raise ValueError(f"sqrt(lam_H lam_W) = {c:.3g} >= 1: the UFM minimiser is W = H = 0")
    rho = (1 - c) * np.sqrt(lam_W / lam_H)
    R, _ = np.linalg.qr(rng.standard_normal((d, K)))
    H = np.sqrt(rho) * np.kron(R, np.ones((1, n)))
    W = np.sqrt(lam_H / lam_W) * np.sqrt(rho) * R.T
    return W, H


def hessian_blocks(
    W: np.ndarray, H: np.ndarray, K: int, lam_W: float, lam_H: float, beta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second derivatives of f w.r.t. vec(H), vec(W) (column-stacked), as in Section 4.

    Returns ``(D_HH, D_HW, D_WW)`` of shapes (dKn, dKn), (dKn, Kd), (Kd, Kd):

    * D_HH = [I_Kn kron W^T W + (lam_H + beta) I] / Kn,
    * D_WW = [H H^T kron I_K + n lam_W I] / Kn,
    * D_HW = [E^T + H^T kron W^T] / Kn, where the E-part is d(W^T R)/dW with R = W H - Y
      (the matrix the paper calls E*, built from the residual).
    """
    n = _check_layout(H, K)
    d, Kn = H.shape
    if W.shape != (K, d):
        raise ValueError(f"W must be K x d = {(K, d)}, got {W.shape}")
    R = W @ H - one_hot_targets(K, n)
    D_HH = (np.kron(np.eye(Kn), W.T @ W) + (lam_H + beta) * np.eye(d * Kn)) / Kn
    D_WW = (np.kron(H @ H.T, np.eye(K)) + n * lam_W * np.eye(K * d)) / Kn
    # A[i, j, a, b] = d (W^T R + ...)[i, j] / d W[a, b] = delta_{ib} R[a, j] + W[a, i] H[b, j]
    A = np.einsum("ai,bj->ijab", W, H)
    idx = np.arange(d)
    A[idx, :, :, idx] += R.T[None, :, :]
    # rows: vec(H) index i + d j ; columns: vec(W) index a + K b (column-stacking)
    D_HW = A.transpose(1, 0, 3, 2).reshape(Kn * d, d * K) / Kn
    return D_HH, D_HW, D_WW


def perturbation_operator(
    W: np.ndarray, H: np.ndarray, K: int, lam_W: float, lam_H: float, beta: float,
    *, large_beta: bool = False,
) -> np.ndarray:
    """The linear map F with vec(dH) ~= F vec(dH0) at the minimiser (W, H) of f(.; H0).

    ``large_beta=False``: the first-order formula of the paper's Section 4 (its first theorem),
    F = (beta/Kn) (D_HH - D_HW D_WW^{-1} D_WH)^{-1}, exact to first order in dH0.
    ``large_beta=True``: its expansion for beta >> max(1, lam_H),
    F = I - (lam_H/beta) I - (1/beta) I_Kn kron W^T W + (1/beta) Z with
    Z = Kn^2 D_HW D_WW^{-1} D_WH / Kn (the paper's Z*), accurate up to O(beta^-2).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    D_HH, D_HW, D_WW = hessian_blocks(W, H, K, lam_W, lam_H, beta)
    Kn = H.shape[1]
    schur_part = D_HW @ np.linalg.solve(D_WW, D_HW.T)
    if large_beta:
        Z = Kn * schur_part
        d = H.shape[0]
        m = d * Kn
        return (
            (1 - lam_H / beta) * np.eye(m)
            - np.kron(np.eye(Kn), W.T @ W) / beta
            + Z / beta
        )
    return (beta / Kn) * np.linalg.inv(D_HH - schur_part)


def first_order_minimizer(
    W: np.ndarray, H: np.ndarray, dH0: np.ndarray, K: int,
    lam_W: float, lam_H: float, beta: float, *, large_beta: bool = False,
) -> np.ndarray:
    """Predicted minimiser H + dH for the input H0 + dH0, with vec(dH) = F vec(dH0) and F from
    :func:`perturbation_operator` (Section 4), given the minimiser (W, H) for H0."""
    if dH0.shape != H.shape:
        raise ValueError(f"dH0 has shape {dH0.shape}, the features have shape {H.shape}")
    F = perturbation_operator(W, H, K, lam_W, lam_H, beta, large_beta=large_beta)
    dH = (F @ dH0.reshape(-1, order="F")).reshape(H.shape, order="F")
    return H + dH


def operator_block_spectra(F: np.ndarray, d: int, K: int, n: int) -> dict[str, np.ndarray]:
    """Singular values of the intra-class blocks F_kk and inter-class blocks F_kk' of F.

    F acts on vec(dH0), whose class-k part is the dn contiguous entries of class k (Section 4).
    Returns ``{"intra": (K, dn) array, "inter": (K(K-1), dn) array}``, each row sorted
    decreasingly.
    """
    m = d * n
    if F.shape != (K * m, K * m):
        raise ValueError(f"F must be {K * m} x {K * m} for d={d}, K={K}, n={n}, got {F.shape}")
    intra, inter = [], []
    for k in range(K):
        for j in range(K):
            s = np.linalg.svd(F[k * m:(k + 1) * m, j * m:(j + 1) * m], compute_uv=False)
            (intra if k == j else inter).append(s)
    return {"intra": np.array(intra), "inter": np.array(inter)}


def predicted_block_singular_values(lam_W: float, lam_H: float, beta: float) -> dict[str, float]:
    """The near-collapse block spectrum the paper's Section 4 derives for large beta (its
    second theorem): sigma_max(F_kk) = 1, sigma_min(F_kk) = 1 - sqrt(lam_H/lam_W)/beta,
    sigma_max(F_kk') = 2 lam_H (1 - sqrt(lam_H lam_W)) / beta."""
    if min(lam_W, lam_H, beta) <= 0:
        raise ValueError("lam_W, lam_H and beta must all be > 0")
    return {
        "intra_max": 1.0,
        "intra_min": 1 - np.sqrt(lam_H / lam_W) / beta,
        "inter_max": 2 * lam_H * (1 - np.sqrt(lam_H * lam_W)) / beta,
    }


# ----------------------------------------------------------------------------- features


def random_relu_features(
    X: np.ndarray, width: int, rng: np.random.Generator
) -> np.ndarray:
    """Features of a random one-hidden-layer ReLU map, as a width x N matrix scaled to unit mean
    squared column norm (a stand-in for a shallow layer's features)."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or width < 1:
        raise ValueError(f"need X of shape (N, p) and width >= 1, got {X.shape}, {width}")
    Xs = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    A = rng.standard_normal((X.shape[1], width)) / np.sqrt(X.shape[1])
    b = 0.1 * rng.standard_normal(width)
    F = np.maximum(Xs @ A + b, 0.0).T
    return F / np.sqrt(np.mean(np.sum(F**2, axis=0)))


def train_layerwise_mlp(
    X: np.ndarray,
    K: int,
    depth: int,
    *,
    width: int = 64,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 5e-4,
    seed: int = 0,
) -> list[np.ndarray]:
    """Layer-wise training of a ReLU MLP with MSE loss (the practical setting of the paper's
    Section 5): add one hidden layer at a time, train it with a fresh linear classifier on top
    of the frozen earlier layers (full-batch Adam), and keep its features.

    ``X`` is (Kn, p), rows ordered by class. Returns the d x Kn features of layers 1..depth.
    """
    import torch

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] % K:
        raise ValueError(f"X must be (Kn, p) with rows ordered by class, got {X.shape}")
    if depth < 1 or width < 1 or epochs < 1:
        raise ValueError(f"need depth, width, epochs >= 1, got {depth}, {width}, {epochs}")
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0] // K
    inputs = torch.from_numpy((X - X.mean(0)) / (X.std(0) + 1e-6))
    targets = torch.from_numpy(one_hot_targets(K, n).T.astype(np.float32))
    features = []
    current = inputs
    for _ in range(depth):
        layer = torch.nn.Linear(current.shape[1], width)
        head = torch.nn.Linear(width, K, bias=False)
        for p in list(layer.parameters()) + list(head.parameters()):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
        params = list(layer.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            opt.zero_grad()
            loss = 0.5 * ((head(torch.relu(layer(current))) - targets) ** 2).sum(1).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            current = torch.relu(layer(current))
        features.append(current.numpy().T.astype(float).copy())
    return features
