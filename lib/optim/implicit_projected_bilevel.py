"""AiPOD: alternating implicit projected gradient descent for equality-constrained bilevel problems.

Xiao, Shen, Yin & Chen (2023), "Alternating Implicit Projected SGD and Its Efficient Variants
for Equality-constrained Bilevel Optimization" (AISTATS 2023), the baseline of the LV-HBA
paper's toy examples (whose official repository ships an AiPOD-style script,
``Toy-example/LLSC/alset_skip.py``). The problem is

    min_{x in X} Phi(x) = F(x, y*(x)),   y*(x) = argmin_y { f(x, y) : A y + H x = c },

with linear equality constraints coupling x and y. With V an orthonormal basis of null(A) and
A^+ the pseudo-inverse, every feasible y is A^+(c - H x) + V w, and differentiating the LL
optimality condition V^T grad_y f = 0 gives the implicit gradient

    grad Phi = grad_x F - H^T A^+T grad_y F
               + (H^T A^+T f_yy - f_xy) V (V^T f_yy V)^{-1} V^T grad_y F

(f_yy = d^2 f / dy^2, f_xy = d^2 f / dx dy, both at (x, y)). This is our derivation of the
AiPOD paper's implicit gradient for constraints A y + H x = c; the official script's line is
the same but without the second term (it vanishes whenever grad_y F is orthogonal to the row
space of A, not in general). The unit tests check it against finite differences of Phi.

Each outer iteration of :func:`aipod` (deterministic gradients, no projection skipping: the
E-AiPOD variant with probability p = 1) runs ``inner`` projected gradient steps on the LL,
warm-started, then ``upper_steps`` steps of x along the implicit gradient at the current y,
projected onto X.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from lib.optim.bilevel import BilevelTrace, Monitor, TraceRecorder, identity

Array = np.ndarray
Pair = tuple[Array, Array]


@dataclass(frozen=True)
class EqualityConstrainedBilevel:
    """A bilevel problem whose LL has linear equality constraints A y + H x = c.

    upper_grad(x, y) -> (grad_x F, grad_y F)
    lower_grad(x, y) -> (grad_x f, grad_y f)
    lower_hessians(x, y) -> (f_yy (d, d), f_xy (n, d))
    A (m, d), H (m, n), c (m,): the LL feasible set {y : A y + H x = c}
    project_x: the projection onto X (identity when X is the whole space)
    """

    upper_grad: Callable[[Array, Array], Pair]
    lower_grad: Callable[[Array, Array], Pair]
    lower_hessians: Callable[[Array, Array], Pair]
    A: Array
    H: Array
    c: Array
    project_x: Callable[[Array], Array] = identity

    def __post_init__(self) -> None:
        A, H, c = (np.atleast_2d(self.A), np.atleast_2d(self.H), np.atleast_1d(self.c))
        if A.shape[0] != H.shape[0] or A.shape[0] != c.shape[0]:
            raise ValueError(f"A, H and c must have the same number of rows, got {A.shape}, "
                             f"{H.shape}, {c.shape}")

    @property
    def pieces(self) -> tuple[Array, Array]:
        """(A^+, V): the pseudo-inverse of A and an orthonormal basis of its null space."""
        A = np.atleast_2d(self.A)
        return np.linalg.pinv(A), linalg.null_space(A)

    def project_lower(self, x: Array, y: Array, A_pinv: Array) -> Array:
        """Projection of y onto {y : A y + H x = c}."""
        A = np.atleast_2d(self.A)
        return y - A_pinv @ (A @ y + np.atleast_2d(self.H) @ x - self.c)


def implicit_gradient(problem: EqualityConstrainedBilevel, x: Array, y: Array, *,
                      A_pinv: Array | None = None, V: Array | None = None,
                      reduced_inverse: Array | None = None) -> Array:
    """The implicit gradient of Phi(x) = F(x, y*(x)) at (x, y) (module docstring).

    ``reduced_inverse`` may carry a precomputed (V^T f_yy V)^+ (for an LL whose Hessian does not
    change); otherwise it is computed here, with a pseudo-inverse so that a merely convex LL
    (singular V^T f_yy V) gives the minimum-norm response instead of an error.
    """
    if A_pinv is None or V is None:
        A_pinv, V = problem.pieces
    Fx, Fy = problem.upper_grad(x, y)
    fyy, fxy = problem.lower_hessians(x, y)
    if reduced_inverse is None:
        reduced_inverse = np.linalg.pinv(V.T @ fyy @ V)
    w = V @ (reduced_inverse @ (V.T @ Fy))
    HA = np.atleast_2d(problem.H).T @ A_pinv.T  # H^T A^+T, shape (n, d)
    return Fx - HA @ Fy + HA @ (fyy @ w) - fxy @ w


def aipod(
    problem: EqualityConstrainedBilevel,
    x0: Array,
    y0: Array,
    *,
    outer: int,
    inner: int,
    upper_steps: int,
    alpha: float,
    beta: float,
    constant_hessian: bool = False,
    monitor: Monitor | None = None,
    log_every: int | None = None,
) -> BilevelTrace:
    """AiPOD (Xiao et al. 2023, Algorithm 1 with exact gradients) on an equality-constrained LL.

    Per outer iteration: ``inner`` steps y <- Proj_{Y(x)}(y - beta grad_y f(x, y)), then
    ``upper_steps`` steps x <- Proj_X(x - alpha grad Phi(x, y)) with the implicit gradient of
    :func:`implicit_gradient` (its LL-Hessian solve done once per outer iteration, or once for
    the whole run when ``constant_hessian``: a quadratic LL). ``monitor(x, y)`` is logged
    against outer iterations; ``oracle_calls`` counts gradient evaluations (LL steps plus UL
    steps; the Hessian work is extra).
    """
    if outer < 1 or inner < 1 or upper_steps < 1:
        raise ValueError(f"outer, inner and upper_steps must be >= 1, got {outer}, {inner}, "
                         f"{upper_steps}")
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"step sizes must be positive, got alpha={alpha}, beta={beta}")
    A_pinv, V = problem.pieces
    x = problem.project_x(np.array(x0, dtype=float))
    y = problem.project_lower(x, np.array(y0, dtype=float), A_pinv)
    reduced_inverse = None
    if constant_hessian:
        fyy, _ = problem.lower_hessians(x, y)
        reduced_inverse = np.linalg.pinv(V.T @ fyy @ V)
    record = TraceRecorder("AiPOD", outer, log_every, monitor, x, y)
    for k in range(outer):
        for _ in range(inner):
            _, fy = problem.lower_grad(x, y)
            y = problem.project_lower(x, y - beta * fy, A_pinv)
        Fx, Fy = problem.upper_grad(x, y)
        fyy, fxy = problem.lower_hessians(x, y)
        R = reduced_inverse if constant_hessian else np.linalg.pinv(V.T @ fyy @ V)
        w = V @ (R @ (V.T @ Fy))
        HA = np.atleast_2d(problem.H).T @ A_pinv.T
        correction = HA @ (fyy @ w) - fxy @ w - HA @ Fy
        for _ in range(upper_steps):
            Fx, _ = problem.upper_grad(x, y)
            x = problem.project_x(x - alpha * (Fx + correction))
        record.after(k + 1, (k + 1) * (inner + upper_steps), x, y)
    return record.finish(x=x, y=y)
