"""GAM: the gradient approximation method for bilevel problems with LL inequality constraints.

Xu & Zhu (2023), "Efficient Gradient Approximation Method for Constrained Bilevel Optimization"
(AAAI 2023), the baseline of the LV-HBA paper's SVM hyper-parameter experiment. The problem is

    min_x Phi(x) = F(x, theta*(x)),  theta*(x) = argmin_theta { f(x, theta) : g(x, theta) <= 0 },

with f(x, .) strongly convex. At an LL solution theta* with multipliers lam*, let A be the
constraints judged active (lam*_i > ``active_tol``). Differentiating the KKT conditions of the
equality-constrained problem restricted to A (stationarity of the Lagrangian
L = f + lam_A^T g_A and g_A = 0) gives the linear system of the paper's gradient approximation

    [ L_tt    J_t^T ] [ d theta / dx ]     [ L_tx ]
    [ J_t     0     ] [ d lam_A / dx ] = - [ J_x  ],

with L_tt = d^2 L / d theta^2, L_tx = d^2 L / d theta dx, J_t = d g_A / d theta and
J_x = d g_A / dx, and the approximate gradient grad Phi ~ grad_x F + (d theta / dx)^T grad_theta F.
We evaluate the product (d theta / dx)^T grad_theta F with one adjoint solve of the transposed
system instead of solving for the whole Jacobian as the official code does (the same number,
one right-hand side instead of n).
Each iteration of :func:`gam` solves the LL (warm-started, to the accuracy of the problem's own
solver: the official code calls CVXPY/ECOS), builds this system, and takes one projected step
in x. The official code picks the active set by lam_i > 1e-5 and takes alpha = 0.03 on its SVM
data; we follow both. Where the KKT matrix is singular (a merely convex LL, or degenerate
active constraints) GAM is not defined; :func:`gam` then falls back to a least-squares
solution and counts the occurrences (``trace.metrics["singular"]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

from lib.optim.bilevel import BilevelTrace, Monitor, TraceRecorder, identity

Array = np.ndarray
Pair = tuple[Array, Array]


@dataclass(frozen=True)
class InequalityConstrainedBilevel:
    """What GAM needs from a bilevel problem with LL constraints g(x, theta) <= 0.

    lower_solve(x, theta_warm) -> (theta*, lam*): an LL solution and its multipliers
    upper_grad(x, theta) -> (grad_x F, grad_theta F)
    lagrangian_hessians(x, theta, lam) -> (L_tt (d, d), L_tx (d, n))
    constraint_jacobians(x, theta) -> (J_t (m, d), J_x (m, n))
    project_x: projection onto the UL feasible set of x
    """

    lower_solve: Callable[[Array, Array | None], Pair]
    upper_grad: Callable[[Array, Array], Pair]
    lagrangian_hessians: Callable[[Array, Array, Array], Pair]
    constraint_jacobians: Callable[[Array, Array], Pair]
    project_x: Callable[[Array], Array] = identity


def gam_gradient(problem: InequalityConstrainedBilevel, x: Array, theta: Array, lam: Array, *,
                 active_tol: float = 1e-5) -> tuple[Array, bool]:
    """GAM's approximate gradient at an LL solution (theta, lam) (module docstring).

    Returns (gradient, singular) where ``singular`` says the KKT matrix had to be solved by
    least squares.
    """
    if active_tol < 0:
        raise ValueError(f"active_tol must be >= 0, got {active_tol}")
    Fx, Ft = problem.upper_grad(x, theta)
    Ltt, Ltx = problem.lagrangian_hessians(x, theta, lam)
    Jt, Jx = problem.constraint_jacobians(x, theta)
    active = np.flatnonzero(lam > active_tol)
    d, a = Ltt.shape[0], active.size
    K = np.zeros((d + a, d + a))
    K[:d, :d] = Ltt
    K[:d, d:] = Jt[active].T
    K[d:, :d] = Jt[active]
    # (d theta/dx)^T grad_theta F = -[L_tx; J_x]^T K^-T [grad_theta F; 0]: one solve (adjoint)
    rhs = np.r_[Ft, np.zeros(a)]
    singular = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", sparse_linalg.MatrixRankWarning)
            # the KKT matrix is mostly zeros (a block of J_t rows); a sparse LU is much faster
            u = sparse_linalg.spsolve(sparse.csc_matrix(K.T), rhs) if d + a > 64 \
                else np.linalg.solve(K.T, rhs)
        if not np.all(np.isfinite(u)):
            raise np.linalg.LinAlgError("non-finite solution")
    except (np.linalg.LinAlgError, sparse_linalg.MatrixRankWarning, RuntimeError):
        singular = True
        u = np.linalg.lstsq(K.T, rhs, rcond=None)[0]
    return Fx - Ltx.T @ u[:d] - Jx[active].T @ u[d:], singular


def gam(
    problem: InequalityConstrainedBilevel,
    x0: Array,
    *,
    iterations: int,
    alpha: float,
    active_tol: float = 1e-5,
    monitor: Callable[[Array, Array], dict] | Monitor | None = None,
    log_every: int | None = None,
) -> BilevelTrace:
    """GAM (Xu & Zhu 2023, Algorithm 1): LL solve, KKT gradient approximation, projected step.

    ``monitor(x, theta)`` is evaluated at the LL solution of the current x. ``oracle_calls``
    counts LL solves.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    x = problem.project_x(np.array(x0, dtype=float))
    theta, lam = problem.lower_solve(x, None)
    singular_count = 0

    def logged(x_: Array, theta_: Array) -> dict:  # the monitor's values and the singular count
        return {**monitor(x_, theta_), "singular": float(singular_count)}

    record = TraceRecorder("GAM", iterations, log_every, None if monitor is None else logged,
                           x, theta, calls=1)  # fmt: skip
    for k in range(iterations):
        grad, singular = gam_gradient(problem, x, theta, lam, active_tol=active_tol)
        singular_count += int(singular)
        x = problem.project_x(x - alpha * grad)
        theta, lam = problem.lower_solve(x, theta)
        record.after(k + 1, k + 2, x, theta)
    return record.finish(x=x, y=theta, lam=lam)
