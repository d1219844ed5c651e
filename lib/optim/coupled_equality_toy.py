"""The LV-HBA paper's toy bilevel problem with a merely convex, equality-constrained lower level.

Yao, Yu, Zeng & Zhang (2024), Section 5 (toy examples) and the official script
``Toy-example/LLC/LV-HBA.py`` of github.com/SUSTech-Optimization/LV-HBA. With x in R^n and
y = (y1, y2) in R^n x R^n:

    UL:  min_{x, y}  F(x, y) = 1/2 ||x - y2||^2 + 1/2 ||y1 - 1||^2
    LL:  y in argmin_theta { f(x, theta) = 1/2 ||theta1||^2 - x^T theta1 + 1^T theta2 :
                             g(x, theta) = 1^T x + 1^T theta = 0 }.

The LL is linear in theta2, so its solution set is not a point: theta1 = x + 1 and any theta2 on
the hyperplane 1^T theta2 = -2 (1^T x) - n. The (optimistic) bilevel solution is unique,
x* = -0.3 * 1, y* = (0.7 * 1, -0.4 * 1): on the LL solution set F = 1/2 ||x||^2 + 1/2 ||x - y2||^2,
a strictly convex quadratic in (x, y2) on an affine set, and the problem is symmetric in the
coordinates. The upper-level feasible set is C = {(x, y): 1^T x + 1^T y = 0} (the LL constraint
imposed on (x, y)), whose projection subtracts the mean.

:class:`CoupledEqualityToy` gives the oracles in the form of
:class:`lib.optim.bilevel.ConstrainedBilevelProblem` (arrays may carry a batch axis), the known
solution, the official script's starting point, a monitor, and the second-order pieces an
implicit-gradient baseline needs (:func:`lib.optim.implicit_projected_bilevel.aipod`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.optim.bilevel import ConstrainedBilevelProblem, Monitor

Array = np.ndarray

#: the closed-form solution per coordinate (x*, y1*, y2*), derived in the module docstring
SOLUTION = (-0.3, 0.7, -0.4)


@dataclass(frozen=True)
class CoupledEqualityToy:
    """The paper's toy: x in R^n, y = (y1, y2) in R^2n, one coupled equality constraint."""

    n: int = 100

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n}")

    # --- first-order oracles (batched over leading axes) --------------------------------
    def upper_value(self, x: Array, y: Array) -> Array:
        y1, y2 = y[..., : self.n], y[..., self.n :]
        return 0.5 * ((x - y2) ** 2).sum(-1) + 0.5 * ((y1 - 1.0) ** 2).sum(-1)

    def upper_grad(self, x: Array, y: Array) -> tuple[Array, Array]:
        y1, y2 = y[..., : self.n], y[..., self.n :]
        return x - y2, np.concatenate([y1 - 1.0, y2 - x], axis=-1)

    def lower_value(self, x: Array, theta: Array) -> Array:
        t1, t2 = theta[..., : self.n], theta[..., self.n :]
        return 0.5 * (t1**2).sum(-1) - (x * t1).sum(-1) + t2.sum(-1)

    def lower_grad(self, x: Array, theta: Array) -> tuple[Array, Array]:
        t1 = theta[..., : self.n]
        return -t1, np.concatenate([t1 - x, np.ones_like(t1)], axis=-1)

    def constraint(self, x: Array, theta: Array) -> Array:
        return (x.sum(-1) + theta.sum(-1))[..., None]

    def constraint_vjp(self, x: Array, theta: Array, lam: Array) -> tuple[Array, Array]:
        return np.broadcast_to(lam, x.shape).copy(), np.broadcast_to(lam, theta.shape).copy()

    def project_upper(self, x: Array, y: Array) -> tuple[Array, Array]:
        """Projection onto C = {1^T x + 1^T y = 0}: subtract the mean of the stacked vector."""
        mean = (x.sum(-1, keepdims=True) + y.sum(-1, keepdims=True)) / (3 * self.n)
        return x - mean, y - mean

    def problem(self) -> ConstrainedBilevelProblem:
        return ConstrainedBilevelProblem(
            upper_grad=self.upper_grad, lower_value=self.lower_value, lower_grad=self.lower_grad,
            constraint=self.constraint, constraint_vjp=self.constraint_vjp,
            project_upper=self.project_upper, n_constraints=1, upper_value=self.upper_value,
        )

    # --- pieces for an implicit-gradient method (LL: A theta + H x = c) --------------------
    def lower_hessians(self, x: Array, theta: Array) -> tuple[Array, Array]:
        """(d^2 f / d theta^2, d^2 f / dx d theta), shapes (2n, 2n) and (n, 2n); constant here."""
        n = self.n
        Hyy = np.diag(np.r_[np.ones(n), np.zeros(n)])
        Hxy = np.hstack([-np.eye(n), np.zeros((n, n))])
        return Hyy, Hxy

    def equality_matrices(self) -> tuple[Array, Array, Array]:
        """(A, H, c) with the LL feasible set {theta : A theta + H x = c}."""
        return np.ones((1, 2 * self.n)), np.ones((1, self.n)), np.zeros(1)

    # --- the known answer, the official start, monitoring --------------------------------
    def solution(self) -> tuple[Array, Array]:
        xs, y1s, y2s = SOLUTION
        return np.full(self.n, xs), np.r_[np.full(self.n, y1s), np.full(self.n, y2s)]

    def official_start(self) -> tuple[Array, Array, Array]:
        """(x0, y0, theta0) of the official script: 10 * 1 moved onto the constraints there.

        The script sets x = y = theta = 10 * 1 and then shifts x so that 1^T x + 1^T y = 0
        (x0 = -20 * 1), keeps y0 = 10 * 1, and shifts theta onto 1^T theta = -1^T x (10 * 1).
        """
        n = self.n
        x0 = np.full(n, 10.0) - (10.0 * n + 20.0 * n) / n
        y0 = np.full(2 * n, 10.0)
        theta0 = np.ones(2 * n) - (2.0 * n + x0.sum()) / (2 * n)
        return x0, y0, theta0

    def lower_gap(self, x: Array, y: Array) -> Array:
        """Distance from y to the LL solution set {y1 = x + 1, 1^T y2 = -2 (1^T x) - n}."""
        n = self.n
        y1, y2 = y[..., :n], y[..., n:]
        off = y2.sum(-1) + 2.0 * x.sum(-1) + n
        return np.sqrt(((y1 - x - 1.0) ** 2).sum(-1) + off**2 / n)

    def metrics(self) -> Monitor:
        """Relative error of x (the paper's plotted quantity), of (x, y), and the LL gap."""
        xs, ys = self.solution()

        def monitor(x: Array, y: Array) -> dict[str, Array]:
            err = np.linalg.norm(x - xs, axis=-1) / np.linalg.norm(xs)
            both = np.sqrt(((x - xs) ** 2).sum(-1) + ((y - ys) ** 2).sum(-1))
            return {"rel_error": err,
                    "rel_error_xy": both / np.sqrt((xs**2).sum() + (ys**2).sum()),
                    "ll_gap": self.lower_gap(x, y)}

        return monitor
