"""A smooth non-convex empirical risk with known Lipschitz and smoothness constants.

Logistic loss of a linear model on features in the unit ball, plus the data-independent
non-convex penalty ``lam * sum_j w_j^2 / (1 + w_j^2)``:

    F(w) = (1/n) sum_i log(1 + exp(-y_i <w, x_i>)) + lam * sum_j w_j^2 / (1 + w_j^2).

With ``||x_i|| <= 1`` every per-sample loss is ``L = 1``-Lipschitz and ``beta_data = 1/4``-smooth,
the two constants the privacy analysis of a gradient method needs (the sensitivity of a
gradient is ``2 L / n``, that of a gradient difference ``2 beta_data ||w - w'|| / n``). The
penalty touches no data, so it costs no privacy, but it makes ``F`` non-convex (its second
derivative ``2 lam (1 - 3 w^2) / (1 + w^2)^3`` is negative for ``|w| > 1/sqrt(3)``) and adds
``2 lam`` to the smoothness: ``beta = 1/4 + 2 lam``. The replicated methods of
:mod:`lib.optim.private_first_order` evaluate it at a stack of points ``W`` of shape ``(S, d)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.special import expit, log_expit


@dataclass(frozen=True)
class SmoothNonconvexGLM:
    """The empirical risk above on data ``X`` (n x d, rows in the unit ball), ``y`` in {-1, 1}."""

    X: np.ndarray
    y: np.ndarray
    lam: float = 0.1

    lipschitz: ClassVar[float] = 1.0  # per-sample L of the logistic loss on the unit ball
    beta_data: ClassVar[float] = 0.25  # per-sample smoothness of the logistic loss there

    def __post_init__(self) -> None:
        X, y = np.asarray(self.X), np.asarray(self.y)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty n x d matrix, got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        if not np.all(np.isin(y, (-1.0, 1.0))):
            raise ValueError("labels y must be -1 or +1")
        if np.max(np.linalg.norm(X, axis=1)) > 1.0 + 1e-12:
            raise ValueError("every row of X must lie in the unit ball (the privacy analysis "
                             "needs per-sample Lipschitz and smoothness constants)")
        if self.lam < 0:
            raise ValueError(f"lam must be non-negative, got {self.lam}")

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def beta(self) -> float:
        """Smoothness of the whole objective: ``1/4 + 2 lam``."""
        return self.beta_data + 2.0 * self.lam

    @property
    def loss_bound(self) -> float:
        """A public bound on ``F(0) - inf F``: ``F(0) = log 2`` and ``F >= 0``."""
        return float(np.log(2.0))

    def value(self, W: np.ndarray) -> np.ndarray:
        """``F`` at each row of ``W`` (shape ``(S, d)`` or ``(d,)``)."""
        W2 = np.atleast_2d(W)
        margins = (self.X @ W2.T) * self.y[:, None]
        data = -log_expit(margins).mean(axis=0)
        out = data + self.lam * np.sum(W2**2 / (1.0 + W2**2), axis=1)
        return out if np.ndim(W) == 2 else out[0]

    def data_gradient(self, W: np.ndarray) -> np.ndarray:
        """Gradient of the data term (the part that touches the data), one row per row of W."""
        W2 = np.atleast_2d(W)
        margins = (self.X @ W2.T) * self.y[:, None]
        coef = -self.y[:, None] * expit(-margins)  # d loss / d <w, x>, shape (n, S)
        out = (coef.T @ self.X) / self.n
        return out if np.ndim(W) == 2 else out[0]

    def penalty_gradient(self, W: np.ndarray) -> np.ndarray:
        """Gradient of the data-independent penalty: ``2 lam w / (1 + w^2)^2`` per coordinate."""
        return 2.0 * self.lam * W / (1.0 + W**2) ** 2

    def gradient(self, W: np.ndarray) -> np.ndarray:
        """Gradient of ``F``: data part plus penalty part."""
        return self.data_gradient(W) + self.penalty_gradient(W)

    def sample_gradients(self, w: np.ndarray) -> np.ndarray:
        """Per-sample gradients of the data term at one point ``w`` (shape ``(n, d)``)."""
        margins = (self.X @ w) * self.y
        return (-self.y * expit(-margins))[:, None] * self.X


def logistic_glm_data(
    n: int, d: int, rng: np.random.Generator, signal: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Features uniform in the unit ball of R^d, labels from a logistic model.

    The true parameter has norm ``signal`` in a random direction; ``P(y = 1 | x) =
    sigmoid(<w_true, x>)``.
    """
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be positive, got n={n}, d={d}")
    if signal < 0:
        raise ValueError(f"signal must be non-negative, got {signal}")
    direction = rng.standard_normal((n, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    X = direction * rng.random(n)[:, None] ** (1.0 / d)
    w_true = rng.standard_normal(d)
    w_true *= signal / np.linalg.norm(w_true)
    y = np.where(rng.random(n) < expit(X @ w_true), 1.0, -1.0)
    return X, y
