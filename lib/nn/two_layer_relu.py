"""Sharpness of two-layer ReLU networks at interpolating minima, and the norms it controls.

Wu & Su (2023), *The Implicit Regularization of Dynamical Stability in Stochastic Gradient
Descent*, Section 4 (the two-layer ReLU part of the generalisation analysis). The model has no
biases,

    f(x; a, W) = sum_k a_k relu(w_k . x),   a in R^m, W in R^(m x d) (rows w_k),

and at a minimum that fits every sample the Hessian of L = (1/2n) sum_i (f(x_i) - y_i)^2 is the
Gauss-Newton matrix J^T J / n, J the n x m(d+1) Jacobian of :func:`relu_net_jacobian`
(as in :mod:`lib.nn.linear_stability`). Its trace is a data-weighted squared norm of the weights,

    tr(H) = (1/n) sum_i sum_k [ relu(w_k . x_i)^2 + a_k^2 1[w_k . x_i > 0] ||x_i||^2 ],

(:func:`relu_trace_closed_form`), and since p^2 + q^2 >= 2|p q| term by term,

    tr(H) >= 2 sum_k |a_k| (1/n) sum_i relu(w_k . x_i) ||x_i||  =:  2 P_S(a, W),

a data-weighted path norm (:func:`data_path_norm`). A minimum that single-sample SGD can stay
at has eta tr(H) <= 2, hence eta P_S <= 1. When every neuron's direction sees enough data,
(1/n) sum_i relu(u . x_i) ||x_i|| >= c for all unit u, this bounds the path norm itself,
sum_k |a_k| ||w_k|| <= P_S / c (:func:`path_norm`, :func:`neuron_data_weights`); for x uniform
on the sphere the population value of c is :func:`mean_relu_on_sphere` ~ 1/sqrt(2 pi d). The
paper's theorem turns such a path-norm bound into a generalisation bound; the inequality chain
written here is our own derivation of that step (the paper's constants were not confirmed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln


def _check_net(a: np.ndarray, W: np.ndarray, X: np.ndarray | None = None):
    a = np.asarray(a, dtype=float)
    W = np.asarray(W, dtype=float)
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0]:
        raise ValueError(
            f"need output weights a of shape (m,) and input weights W of shape (m, d); "
            f"got {a.shape} and {W.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(W))):
        raise ValueError("the weights have non-finite entries (did the run diverge?)")
    if X is None:
        return a, W
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != W.shape[1] or X.shape[0] < 1:
        raise ValueError(f"X must be (n, d={W.shape[1]}), got {X.shape}")
    return a, W, X


def sphere_data(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """n points drawn uniformly on the unit sphere of R^d (the paper's input distribution)."""
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 points and d >= 1 dimensions, got n={n}, d={d}")
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mean_relu_on_sphere(d: int) -> float:
    """E relu(u . x) for x uniform on the unit sphere of R^d and any unit u.

    Half of E|x_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)); about 1/sqrt(2 pi d) for large d.
    """
    if d < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    return float(0.5 * np.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / np.sqrt(np.pi))


def relu_net_predict(a: np.ndarray, W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """f(x_i) = sum_k a_k relu(w_k . x_i) for every row of X."""
    a, W, X = _check_net(a, W, X)
    return np.maximum(X @ W.T, 0.0) @ a


def relu_net_jacobian(a: np.ndarray, W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Per-sample gradients of f in (a, W), as the n x m(d+1) matrix [df/da | df/dW (flat)].

    df/da_k = relu(w_k . x), df/dw_k = a_k 1[w_k . x > 0] x (the ReLU's derivative at 0 is 0).
    """
    a, W, X = _check_net(a, W, X)
    Z = X @ W.T
    dW = ((Z > 0) * a)[:, :, None] * X[:, None, :]
    return np.concatenate([np.maximum(Z, 0.0), dW.reshape(X.shape[0], -1)], axis=1)


def relu_trace_closed_form(a: np.ndarray, W: np.ndarray, X: np.ndarray) -> float:
    """tr(H) at an interpolating minimum, (1/n) sum_i ||grad f(x_i)||^2, in closed form.

    (1/n) sum_i sum_k [relu(w_k . x_i)^2 + a_k^2 1[w_k . x_i > 0] ||x_i||^2] (Wu & Su 2023,
    Section 4: the trace of the Hessian of a two-layer ReLU network as a norm of its weights).
    """
    a, W, X = _check_net(a, W, X)
    Z = X @ W.T
    sq = np.sum(X * X, axis=1)
    return float(np.mean(np.sum(np.maximum(Z, 0.0) ** 2, axis=1) + ((Z > 0) @ a**2) * sq))


def neuron_data_weights(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """c_k = (1/n) sum_i relu(u_k . x_i) ||x_i|| for each neuron's direction u_k = w_k/||w_k||.

    The factor by which the data weigh neuron k in :func:`data_path_norm`; a neuron with
    w_k = 0 gets 0.
    """
    W = np.asarray(W, dtype=float)
    X = np.asarray(X, dtype=float)
    if W.ndim != 2 or X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"need W (m, d) and X (n, d) with the same d; got {W.shape}, {X.shape}")
    norms = np.linalg.norm(W, axis=1)
    U = W / np.where(norms > 0, norms, 1.0)[:, None]
    return np.mean(np.maximum(X @ U.T, 0.0) * np.linalg.norm(X, axis=1)[:, None], axis=0)


def data_path_norm(a: np.ndarray, W: np.ndarray, X: np.ndarray) -> float:
    """P_S = sum_k |a_k| (1/n) sum_i relu(w_k . x_i) ||x_i||: the norm that tr(H)/2 bounds.

    tr(H) >= 2 P_S term by term (p^2 + q^2 >= 2|pq| with p = relu(w_k . x_i),
    q = a_k 1[w_k . x_i > 0] ||x_i||), so a minimum with eta tr(H) <= 2 has eta P_S <= 1.
    """
    a, W, X = _check_net(a, W, X)
    return float(np.abs(a) @ (np.linalg.norm(W, axis=1) * neuron_data_weights(W, X)))


def path_norm(a: np.ndarray, W: np.ndarray) -> float:
    """The path norm sum_k |a_k| ||w_k||_2 of a two-layer network without biases."""
    a, W = _check_net(a, W)
    return float(np.abs(a) @ np.linalg.norm(W, axis=1))


# ---------------------------------------------------------------------------------------------
# Training: (S)GD on the two-layer ReLU network, many independent runs at once
# ---------------------------------------------------------------------------------------------


@dataclass
class ReLURuns:
    """End points of R independent (S)GD runs of a two-layer ReLU network on one data set."""

    a: np.ndarray  # (R, m)
    W: np.ndarray  # (R, m, d)
    eta: np.ndarray  # (R,) learning rate of each run
    batch_size: int
    steps: np.ndarray  # (R,) steps taken
    diverged: np.ndarray  # (R,) bool
    train_loss: np.ndarray  # (R,) final training loss
    last_clipped: np.ndarray  # (R,) last step at which the gradient was clipped (0: never)


def _train_loss(X: np.ndarray, y: np.ndarray, a: np.ndarray, W: np.ndarray) -> np.ndarray:
    f = np.einsum("rnm,rm->rn", np.maximum(np.einsum("nd,rmd->rnm", X, W), 0.0), a)
    return 0.5 * np.mean((f - y) ** 2, axis=1)


def train_relu_net(
    X: np.ndarray,
    y: np.ndarray,
    a0: np.ndarray,
    W0: np.ndarray,
    *,
    eta: float | np.ndarray,
    batch_size: int,
    steps: int,
    rng: np.random.Generator,
    clip: float | None = None,
    loss_tol: float = 1e-10,
    record_every: int = 200,
    divergence_loss: float = 1e6,
) -> ReLURuns:
    """(S)GD on f(x) = sum_k a_k relu(w_k . x) from R initialisations (a0 (R, m), W0 (R, m, d)).

    Each step draws, per run, ``batch_size`` distinct samples uniformly and steps along the
    gradient of (1/2B) sum_batch (f(x_i) - y_i)^2; ``batch_size = n`` is full-batch GD. ``eta``
    is one learning rate or one per run. With ``clip``, a step whose gradient norm exceeds it is
    rescaled to that norm (the end of a run should be unclipped: see ``last_clipped``). A run
    stops below ``loss_tol`` (checked every ``record_every`` steps) and is marked diverged past
    ``divergence_loss``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    a = np.array(a0, dtype=float)
    W = np.array(W0, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,); got {X.shape} and {y.shape}")
    n, d = X.shape
    if a.ndim != 2 or W.shape != (*a.shape, d):
        raise ValueError(f"a0 must be (R, m) and W0 (R, m, d={d}); got {a.shape}, {W.shape}")
    R = a.shape[0]
    eta_r = np.broadcast_to(np.asarray(eta, dtype=float), (R,)).copy()
    if not np.all(eta_r > 0):
        raise ValueError(f"learning rates must be positive, got {eta}")
    if not (1 <= batch_size <= n):
        raise ValueError(f"batch_size must be between 1 and n={n}, got {batch_size}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive (or None), got {clip}")
    if steps < 1 or record_every < 1:
        raise ValueError(f"steps and record_every must be positive, got {steps}, {record_every}")
    active = np.ones(R, dtype=bool)
    diverged = np.zeros(R, dtype=bool)
    taken = np.zeros(R, dtype=int)
    last_clipped = np.zeros(R, dtype=int)
    full = batch_size == n
    Xf = np.broadcast_to(X, (R, n, d))
    yf = np.broadcast_to(y, (R, n))
    t = 0
    loss = _train_loss(X, y, a, W)
    with np.errstate(over="ignore", invalid="ignore"):
        while t < steps and active.any():
            chunk = min(record_every, steps - t)
            if batch_size == 1:
                idx = rng.integers(0, n, size=(chunk, R, 1))
            elif not full:
                idx = np.argsort(rng.random((chunk, R, n)), axis=-1)[..., :batch_size]
            for s in range(chunk):
                xb, yb = (Xf, yf) if full else (X[idx[s]], y[idx[s]])
                Z = xb @ W.transpose(0, 2, 1)  # (R, B, m)
                act = np.maximum(Z, 0.0)
                e = (act @ a[:, :, None])[..., 0] - yb  # (R, B) residuals
                ga = (e[:, None, :] @ act)[:, 0] / batch_size
                coef = (e[:, :, None] * (Z > 0)) * a[:, None, :]
                gW = coef.transpose(0, 2, 1) @ xb / batch_size
                scale = np.where(active, eta_r, 0.0)
                if clip is not None:
                    norm = np.sqrt(np.sum(ga * ga, axis=1) + np.sum(gW * gW, axis=(1, 2)))
                    over = active & (norm > clip)
                    last_clipped[over] = t + s + 1
                    scale = scale * np.minimum(1.0, clip / np.maximum(norm, 1e-300))
                a -= scale[:, None] * ga
                W -= scale[:, None, None] * gW
            t += chunk
            taken[active] = t
            loss = _train_loss(X, y, a, W)
            bad = ~np.isfinite(loss) | (loss > divergence_loss)
            newly = bad & active
            diverged |= newly
            active &= ~bad & (loss >= loss_tol)
            a[newly] = np.nan  # a diverged run has no end point
            W[newly] = np.nan
    return ReLURuns(a=a, W=W, eta=eta_r, batch_size=int(batch_size), steps=taken,
                    diverged=diverged, train_loss=loss, last_clipped=last_clipped)
