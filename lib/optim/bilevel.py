"""Constrained bilevel optimisation with first-order oracles: LV-HBA and a double-loop baseline.

Yao, Yu, Zeng & Zhang (2024), "Constrained Bi-Level Optimization: Proximal Lagrangian Value
function Approach and Hessian-free Algorithm" (ICLR 2024, arXiv:2401.16164). The problem is

    min_{x in X, y}  F(x, y)   s.t.  y in argmin_{theta in Y} { f(x, theta) : g(x, theta) <= 0 },

where the lower-level (LL) constraints g couple x and theta, and the LL is convex in theta but
need not be strongly convex (its solution set may be a whole face, not a point).

* :class:`ConstrainedBilevelProblem`: F, f, g and their first-order oracles, the projection onto
  the upper-level feasible set C = {(x, y): x in X, y in Y, g(x, y) <= 0} and onto Y. Arrays may
  carry leading batch dimensions (independent problem instances solved in one numpy loop).
* :func:`lv_hba`: the paper's Algorithm 1 (Section 3): one projected gradient step on the
  strongly-convex-strongly-concave saddle problem that defines the proximal Lagrangian value
  function v_gamma(x, y, z) (Section 2), then a projected step on the penalised reformulation
  F / c_k + f - v_gamma with c_k = c0 (k + 1)^p, then a step on the proximal centre z of the
  multiplier. First derivatives only: no Hessian, no inner loop.
* :func:`proximal_lagrangian_value`: v_gamma(x, y, z) and its Danskin-type gradient at the
  saddle point, found by iterating LV-HBA's own descent-ascent step (the chapter's cross-check).
* :func:`value_function_penalty`: the double-loop baseline, penalty on f(x, y) - v(x) with the
  plain LL value function v, whose gradient needs an (approximate) LL solution and multiplier,
  obtained by an inner primal-dual loop at every outer step (Shen & Chen 2023, V-PBGD style).
* :class:`HalfspaceToy`: a toy with a coupled half-space LL constraint whose LL solution is a
  projection (closed form), optionally with a free LL block that makes the LL merely convex, and
  whose reduced upper-level problem is solved exactly (piecewise KKT) and by scipy.
* :class:`SVMHyperProblem`: linear-SVM hyper-parameter learning as in the paper's Section 5: per
  sample slack weights exp(c_i) in the LL, a smoothed validation error in the UL, with the
  second-order pieces GAM needs (:mod:`lib.optim.gradient_approximation_bilevel`).

The paper's own toy with an equality-constrained, merely convex LL is
:mod:`lib.optim.coupled_equality_toy`; the AiPOD baseline is
:mod:`lib.optim.implicit_projected_bilevel`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import optimize

Array = np.ndarray
Pair = tuple[Array, Array]


# ------------------------------------------------------------------------------------------
# The problem container
# ------------------------------------------------------------------------------------------


def identity(v: Array) -> Array:
    """The projection onto the whole space (the default of every ``project_*`` field)."""
    return v


@dataclass(frozen=True)
class ConstrainedBilevelProblem:
    """A constrained bilevel problem given by first-order oracles.

    All callables take ``x`` of shape ``(..., n)`` and the LL variable of shape ``(..., d)``
    (``y`` or ``theta``); ``...`` are batch dimensions shared by every array.

    upper_grad(x, y) -> (grad_x F, grad_y F)
    lower_value(x, theta) -> f, shape (...)
    lower_grad(x, theta) -> (grad_x f, grad_theta f)
    constraint(x, theta) -> g, shape (..., m); the LL feasible set is {g <= 0}
    constraint_vjp(x, theta, lam) -> ((grad_x g)^T lam, (grad_theta g)^T lam)
    project_upper(x, y) -> the Euclidean projection onto C = {x in X, y in Y, g(x, y) <= 0}
    project_lower(theta) -> the Euclidean projection onto Y (identity when Y is the whole space)
    upper_value(x, y) -> F, shape (...) (only for monitoring)
    """

    upper_grad: Callable[[Array, Array], Pair]
    lower_value: Callable[[Array, Array], Array]
    lower_grad: Callable[[Array, Array], Pair]
    constraint: Callable[[Array, Array], Array]
    constraint_vjp: Callable[[Array, Array, Array], Pair]
    project_upper: Callable[[Array, Array], Pair]
    n_constraints: int
    project_lower: Callable[[Array], Array] = identity
    upper_value: Callable[[Array, Array], Array] | None = None


@dataclass
class BilevelTrace:
    """What a run records: the iterations at which it logged and the monitor's values there."""

    method: str
    iterations: list[int] = field(default_factory=list)
    oracle_calls: list[int] = field(default_factory=list)
    metrics: dict[str, list] = field(default_factory=dict)
    x: Array | None = None
    y: Array | None = None
    theta: Array | None = None
    lam: Array | None = None
    z: Array | None = None
    wall_seconds: float = 0.0
    seconds: list[float] = field(default_factory=list)

    def log(self, k: int, calls: int, values: dict[str, Array | float],
            seconds: float = 0.0) -> None:
        self.iterations.append(k)
        self.oracle_calls.append(calls)
        self.seconds.append(float(seconds))
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(np.asarray(value, dtype=float))

    def series(self, name: str) -> Array:
        """The logged values of one metric, shape (n_logs, *batch)."""
        return np.stack(self.metrics[name])

    def at(self, name: str, iteration: int) -> Array:
        """The metric at the last log point not after ``iteration``."""
        idx = int(np.searchsorted(self.iterations, iteration, side="right")) - 1
        if idx < 0:
            raise ValueError(f"nothing logged at or before iteration {iteration}")
        return self.series(name)[idx]


Monitor = Callable[[Array, Array], dict[str, Array | float]]


class TraceRecorder:
    """One run's bookkeeping: its :class:`BilevelTrace`, the iterations to log at, the monitor,
    and the wall time of the algorithm's own work (time spent inside the monitor is left out).

    Created after the initial point is set (it logs iteration 0 with ``calls`` oracle calls and
    starts the clock); :meth:`after` logs iteration ``k`` when ``k`` is a log point;
    :meth:`finish` stores the total time and the final iterates.
    """

    def __init__(self, method: str, iterations: int, log_every: int | None,
                 monitor: Monitor | None, x: Array, y: Array, calls: int = 0) -> None:  # fmt: skip
        self.trace = BilevelTrace(method)
        self.monitor = monitor
        self._logs = _log_points(iterations, log_every)
        if monitor is not None:
            self.trace.log(0, calls, monitor(x, y))
        self._start = time.perf_counter()
        self._paused = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._paused

    def after(self, k: int, calls: int, x: Array, y: Array) -> None:
        """Log ``monitor(x, y)`` at iteration ``k`` (a log point) with the elapsed time."""
        if self.monitor is None or k not in self._logs:
            return
        t0 = time.perf_counter()
        elapsed = t0 - self._start - self._paused
        self.trace.log(k, calls, self.monitor(x, y), seconds=elapsed)
        self._paused += time.perf_counter() - t0

    def finish(self, **final: Array) -> BilevelTrace:
        """The trace, with the total time and the final iterates (``x=..., y=..., ...``)."""
        self.trace.wall_seconds = self.elapsed()
        for name, value in final.items():
            setattr(self.trace, name, value)
        return self.trace


def _check_positive(**values: float | Array) -> None:
    for name, value in values.items():
        v = np.asarray(value, dtype=float)
        if v.size == 0 or not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise ValueError(f"{name} must be positive (a number or an array), got {value}")


def _as_param(value: float | Array, batch: tuple[int, ...], name: str) -> float | Array:
    """A hyper-parameter: a float, or one value per batch instance (shape batch or batch+(1,))."""
    if np.ndim(value) == 0:
        return float(value)
    v = np.asarray(value, dtype=float)
    if v.shape == batch:
        v = v[..., None]
    if v.shape != batch + (1,):
        raise ValueError(f"{name} must be a number or have the batch shape {batch}, "
                         f"got shape {v.shape}")
    return v


def _log_points(iterations: int, log_every: int | None, n_logs: int = 200) -> set[int]:
    if log_every is None:
        pts = np.unique(np.geomspace(1, iterations, n_logs).astype(int))
        return set(pts.tolist()) | {0, iterations}
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    return set(range(0, iterations + 1, log_every)) | {iterations}


def penalty_weight(k: int | Array, c0: float, p: float) -> Array | float:
    """The increasing penalty weight c_k = c0 (k + 1)^p of LV-HBA (Algorithm 1)."""
    return c0 * (np.asarray(k) + 1.0) ** p


def lv_hba(
    problem: ConstrainedBilevelProblem,
    x0: Array,
    y0: Array,
    *,
    iterations: int,
    alpha: float | Array,
    beta: float | Array,
    eta: float | Array,
    gamma1: float | Array,
    gamma2: float | Array,
    c0: float | Array = 1.0,
    p: float | Array = 0.3,
    multiplier_bound: float = 1e3,
    equality: bool = False,
    theta0: Array | None = None,
    lam0: Array | None = None,
    z0: Array | None = None,
    monitor: Monitor | None = None,
    log_every: int | None = None,
) -> BilevelTrace:
    """LV-HBA, the paper's Algorithm 1 (Section 3), on a :class:`ConstrainedBilevelProblem`.

    The proximal Lagrangian value function (Section 2) is

        v_gamma(x, y, z) = min_{theta in Y} max_{lam in Z} f(x, theta) + lam^T g(x, theta)
                           + ||theta - y||^2 / (2 gamma1) - ||lam - z||^2 / (2 gamma2),

    with Z = [0, U]^m, or Z = [-U, U]^m when ``equality`` is set (constraints g = 0, as in the
    paper's toy example with a coupled equality constraint and its official script). Each
    iteration k, with c_k = c0 (k + 1)^p:

    1. (theta, lam) <- one projected gradient descent-ascent step of size ``eta`` on that
       saddle function at the current (x, y, z);
    2. (x, y) <- Proj_C((x, y) - alpha d), the gradient of F / c_k + f(x, y) - v_gamma(x, y, z)
       with v_gamma's gradient taken at (theta, lam) (Danskin: no Hessian):
       d_x = grad_x F / c_k + grad_x f(x, y) - grad_x f(x, theta) - (grad_x g(x, theta))^T lam,
       d_y = grad_y F / c_k + grad_y f(x, y) - (y - theta) / gamma1;
    3. z <- Proj_Z(z - beta (z - lam) / gamma2) (the z-gradient of -v_gamma).

    ``monitor(x, y)`` returns the metrics to log; log points are geometric unless ``log_every``
    is given. One iteration costs one call of each first-order oracle at two points.
    Every step size and parameter may be an array with one value per batch instance, so that a
    sweep over (p, gamma, ...) runs as one vectorised loop.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    _check_positive(alpha=alpha, beta=beta, eta=eta, gamma1=gamma1, gamma2=gamma2, c0=c0,
                    multiplier_bound=multiplier_bound)
    if not np.all((np.asarray(p) >= 0) & (np.asarray(p) < 1)):
        raise ValueError(f"the penalty exponent p must be in [0, 1) (the theory asks p < 1/2), "
                         f"got {p}")
    x, y = problem.project_upper(np.array(x0, dtype=float), np.array(y0, dtype=float))
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"x and y must share batch dimensions, got {x.shape} and {y.shape}")
    m = problem.n_constraints
    batch = x.shape[:-1]
    alpha, beta, eta = (_as_param(v, batch, n) for v, n in
                        ((alpha, "alpha"), (beta, "beta"), (eta, "eta")))
    gamma1, gamma2 = _as_param(gamma1, batch, "gamma1"), _as_param(gamma2, batch, "gamma2")
    c0, p = _as_param(c0, batch, "c0"), _as_param(p, batch, "p")
    theta = problem.project_lower(y.copy() if theta0 is None else np.array(theta0, dtype=float))
    lam = np.zeros(batch + (m,)) if lam0 is None else np.array(lam0, dtype=float)
    z = np.zeros(batch + (m,)) if z0 is None else np.array(z0, dtype=float)
    if theta.shape != y.shape or lam.shape != batch + (m,) or z.shape != lam.shape:
        raise ValueError(f"theta0, lam0, z0 must have shapes {y.shape}, {batch + (m,)}, "
                         f"{batch + (m,)}")
    U = multiplier_bound
    L = -U if equality else 0.0
    record = TraceRecorder("LV-HBA", iterations, log_every, monitor, x, y)
    for k in range(iterations):
        ck = c0 * (k + 1.0) ** p
        # step 1: one projected gradient step on the proximal Lagrangian saddle problem
        _, f_theta = problem.lower_grad(x, theta)
        _, gv_theta = problem.constraint_vjp(x, theta, lam)
        g_theta = problem.constraint(x, theta)
        theta = problem.project_lower(theta - eta * (f_theta + gv_theta + (theta - y) / gamma1))
        lam = np.clip(lam + eta * (g_theta - (lam - z) / gamma2), L, U)
        # step 2: projected gradient step on F / c_k + f(x, y) - v_gamma(x, y, z)
        Fx, Fy = problem.upper_grad(x, y)
        fx_y, fy_y = problem.lower_grad(x, y)
        fx_t, _ = problem.lower_grad(x, theta)
        gx_t, _ = problem.constraint_vjp(x, theta, lam)
        dx = Fx / ck + fx_y - fx_t - gx_t
        dy = Fy / ck + fy_y - (y - theta) / gamma1
        x, y = problem.project_upper(x - alpha * dx, y - alpha * dy)
        # step 3: the proximal centre of the multiplier
        z = np.clip(z - beta * (z - lam) / gamma2, L, U)
        record.after(k + 1, 2 * (k + 1), x, y)
    return record.finish(x=x, y=y, theta=theta, lam=lam, z=z)


def proximal_lagrangian_value(
    problem: ConstrainedBilevelProblem,
    x: Array,
    y: Array,
    z: Array,
    *,
    gamma1: float,
    gamma2: float,
    eta: float,
    steps: int = 5000,
    multiplier_bound: float = 1e3,
    equality: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """v_gamma(x, y, z) and its gradient (the paper's Section 2, Danskin-type formula).

    Runs ``steps`` projected gradient descent-ascent steps of size ``eta`` (LV-HBA's step 1,
    iterated at fixed (x, y, z)) on the saddle function of :func:`lv_hba`'s docstring to reach
    its unique saddle point (theta*, lam*), and returns the value there and the gradient

        grad_x v = grad_x f(x, theta*) + (grad_x g(x, theta*))^T lam*,
        grad_y v = (y - theta*) / gamma1,   grad_z v = (lam* - z) / gamma2,

    with no derivative of (theta*, lam*) needed. Also returns theta* and lam*.
    """
    _check_positive(gamma1=gamma1, gamma2=gamma2, eta=eta, multiplier_bound=multiplier_bound)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    U = multiplier_bound
    L = -U if equality else 0.0
    theta = problem.project_lower(np.array(y, dtype=float))
    lam = np.clip(np.array(z, dtype=float), L, U)
    for _ in range(steps):
        _, f_theta = problem.lower_grad(x, theta)
        _, gv_theta = problem.constraint_vjp(x, theta, lam)
        g_theta = problem.constraint(x, theta)
        theta = problem.project_lower(theta - eta * (f_theta + gv_theta + (theta - y) / gamma1))
        lam = np.clip(lam + eta * (g_theta - (lam - z) / gamma2), L, U)
    value = (problem.lower_value(x, theta) + (lam * problem.constraint(x, theta)).sum(-1)
             + ((theta - y) ** 2).sum(-1) / (2 * gamma1) - ((lam - z) ** 2).sum(-1) / (2 * gamma2))
    fx, _ = problem.lower_grad(x, theta)
    gx, _ = problem.constraint_vjp(x, theta, lam)
    grads = {"x": fx + gx, "y": (y - theta) / gamma1, "z": (lam - z) / gamma2,
             "theta": theta, "lam": lam}
    return value, grads


def value_function_penalty(
    problem: ConstrainedBilevelProblem,
    x0: Array,
    y0: Array,
    *,
    outer: int,
    inner: int,
    alpha: float,
    eta: float,
    c0: float = 1.0,
    p: float = 0.3,
    multiplier_bound: float = 1e3,
    monitor: Monitor | None = None,
    log_every: int | None = None,
) -> BilevelTrace:
    """Double-loop value-function penalty method (the baseline).

    Penalise the LL optimality gap with the *plain* value function
    v(x) = min_theta {f(x, theta) : g(x, theta) <= 0}: minimise F / c_k + f(x, y) - v(x) over C.
    By the envelope theorem, grad_x v(x) = grad_x f(x, theta*) + (grad_x g(x, theta*))^T lam*
    at an LL solution theta* with multiplier lam*, so every outer step first runs ``inner``
    projected gradient descent-ascent steps (size ``eta``) on the LL Lagrangian
    f(x, theta) + lam^T g(x, theta), warm-started from the previous outer step, then takes one
    projected gradient step (size ``alpha``) in (x, y). This is the structure of the
    value-function penalty methods (e.g. V-PBGD of Shen & Chen, 2023): exact penalty, but an
    inner loop whose accuracy limits the outer one.
    """
    if outer < 1 or inner < 1:
        raise ValueError(f"outer and inner must be >= 1, got {outer} and {inner}")
    _check_positive(alpha=alpha, eta=eta, c0=c0, multiplier_bound=multiplier_bound)
    if not 0 <= p < 1:
        raise ValueError(f"the penalty exponent p must be in [0, 1), got {p}")
    x, y = problem.project_upper(np.array(x0, dtype=float), np.array(y0, dtype=float))
    theta = y.copy()
    lam = np.zeros(x.shape[:-1] + (problem.n_constraints,))
    record = TraceRecorder("value-function penalty (double loop)", outer, log_every, monitor, x, y)
    for k in range(outer):
        for _ in range(inner):
            _, f_theta = problem.lower_grad(x, theta)
            _, gv_theta = problem.constraint_vjp(x, theta, lam)
            g_theta = problem.constraint(x, theta)
            theta = problem.project_lower(theta - eta * (f_theta + gv_theta))
            lam = np.clip(lam + eta * g_theta, 0.0, multiplier_bound)
        ck = c0 * (k + 1.0) ** p
        Fx, Fy = problem.upper_grad(x, y)
        fx_y, fy_y = problem.lower_grad(x, y)
        fx_t, _ = problem.lower_grad(x, theta)
        gx_t, _ = problem.constraint_vjp(x, theta, lam)
        x, y = problem.project_upper(x - alpha * (Fx / ck + fx_y - fx_t - gx_t),
                                     y - alpha * (Fy / ck + fy_y))
        record.after(k + 1, (k + 1) * (inner + 1), x, y)
    return record.finish(x=x, y=y, theta=theta, lam=lam)


# ------------------------------------------------------------------------------------------
# A toy with a coupled half-space constraint and a closed-form lower level
# ------------------------------------------------------------------------------------------


def _dot(u: Array, v: Array) -> Array:
    return (u * v).sum(-1)


def _min_quadratic_halfspace(H: Array, q: Array, s: Array, b: float) -> Array:
    """argmin 1/2 x^T H x - q^T x  s.t.  s^T x <= b  (H positive definite): KKT in closed form."""
    x = np.linalg.solve(H, q)
    excess = s @ x - b
    if excess <= 0:
        return x
    Hs = np.linalg.solve(H, s)
    return x - Hs * excess / (s @ Hs)


@dataclass(frozen=True)
class HalfspaceToy:
    """A batch of toy bilevel problems with a coupled half-space LL constraint.

    Variables x in R^n, LL variable theta = (theta_1, theta_2) in R^n x R^m (m = ``n_free``
    may be 0). For each instance (arrays carry a leading batch axis B):

        F(x, y) = 1/2 ||y_1 - t||^2 + 1/2 ||y_2 - s||^2 + rho/2 ||x||^2
        f(x, theta) = 1/2 ||theta_1 - x||^2
        g(x, theta) = a^T theta_1 + e^T theta_2 + h^T x - b          (one coupled constraint)

    With m = 0 the LL is strongly convex and its solution is the projection of x onto the
    half-space {a^T theta <= b - h^T x}. With m > 0 the LL is merely convex: theta_1 = x and any
    theta_2 with e^T theta_2 <= b - (a + h)^T x solves it (a non-singleton solution set), and the
    optimistic bilevel problem picks the theta_2 that the UL prefers.
    """

    a: Array
    e: Array
    h: Array
    t: Array
    s: Array
    b: float = 1.0
    rho: float = 0.1

    @classmethod
    def sample(
        cls, n: int, rng: np.random.Generator, *, n_free: int = 0, batch: int = 1,
        rho: float = 0.1, b: float = 1.0, activity: float = 3.0,
    ) -> HalfspaceToy:
        """Random instances whose LL constraint is active at the solution.

        ``t`` is scaled so that the constraint is violated by ``activity`` at the UL's
        unconstrained optimum x = t / (1 + rho), so the coupling matters.
        """
        if n < 1 or n_free < 0 or batch < 1:
            raise ValueError(f"need n >= 1, n_free >= 0, batch >= 1, got {n}, {n_free}, {batch}")
        _check_positive(rho=rho, b=b)
        if activity <= 0:
            raise ValueError(f"activity must be positive, got {activity}")
        a = rng.normal(size=(batch, n))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        h = 0.5 * rng.normal(size=(batch, n)) / math.sqrt(n)
        e = rng.normal(size=(batch, n_free)) / math.sqrt(max(n_free, 1))
        s = rng.normal(size=(batch, n_free))
        # t = (component orthogonal to w = a + h) + kappa w, with kappa chosen so that
        # w^T t / (1 + rho) = b + activity: the constraint binds at the UL's favourite x
        w = a + h
        u = rng.normal(size=(batch, n))
        u -= (_dot(u, w) / _dot(w, w))[:, None] * w
        t = u + ((b + activity) * (1 + rho) / _dot(w, w))[:, None] * w
        return cls(a=a, e=e, h=h, t=t, s=s, b=b, rho=rho)

    def tile(self, reps: int) -> HalfspaceToy:
        """The same instances repeated ``reps`` times along the batch axis (for sweeps)."""
        if reps < 1:
            raise ValueError(f"reps must be >= 1, got {reps}")
        rep = {k: np.tile(getattr(self, k), (reps, 1)) for k in ("a", "e", "h", "t", "s")}
        return HalfspaceToy(**rep, b=self.b, rho=self.rho)

    @property
    def n(self) -> int:
        return self.a.shape[-1]

    @property
    def n_free(self) -> int:
        return self.e.shape[-1]

    @property
    def batch(self) -> int:
        return self.a.shape[0]

    # --- oracles (written for speed: a run is tens of thousands of tiny numpy calls) -------
    @cached_property
    def _ae(self) -> Array:
        return np.concatenate([self.a, self.e], axis=-1)

    @cached_property
    def _normal_sq(self) -> Array:
        return (self._ae**2).sum(-1, keepdims=True) + (self.h**2).sum(-1, keepdims=True)

    @cached_property
    def _ts(self) -> Array:
        return np.concatenate([self.t, self.s], axis=-1)

    def upper_value(self, x: Array, y: Array) -> Array:
        return 0.5 * ((y - self._ts) ** 2).sum(-1) + 0.5 * self.rho * (x**2).sum(-1)

    def upper_grad(self, x: Array, y: Array) -> Pair:
        return self.rho * x, y - self._ts

    def lower_value(self, x: Array, theta: Array) -> Array:
        return 0.5 * ((theta[..., : self.n] - x) ** 2).sum(-1)

    def lower_grad(self, x: Array, theta: Array) -> Pair:
        r = theta[..., : self.n] - x
        if self.n_free == 0:
            return -r, r
        return -r, np.concatenate([r, np.zeros(theta.shape[:-1] + (self.n_free,))], axis=-1)

    def constraint(self, x: Array, theta: Array) -> Array:
        return (self._ae * theta).sum(-1, keepdims=True) + (self.h * x).sum(-1, keepdims=True) \
            - self.b

    def constraint_vjp(self, x: Array, theta: Array, lam: Array) -> Pair:
        return lam * self.h, lam * self._ae

    def project_upper(self, x: Array, y: Array) -> Pair:
        """Projection onto C = {(x, y): g(x, y) <= 0}, a half-space in (x, y)."""
        step = np.maximum(self.constraint(x, y), 0.0) / self._normal_sq
        return x - step * self.h, y - step * self._ae

    def _split(self, v: Array) -> Pair:
        return v[..., : self.n], v[..., self.n :]

    def problem(self) -> ConstrainedBilevelProblem:
        return ConstrainedBilevelProblem(
            upper_grad=self.upper_grad, lower_value=self.lower_value, lower_grad=self.lower_grad,
            constraint=self.constraint, constraint_vjp=self.constraint_vjp,
            project_upper=self.project_upper, n_constraints=1, upper_value=self.upper_value,
        )

    # --- closed forms -------------------------------------------------------------------
    def lower_solution(self, x: Array) -> Array:
        """The closed-form LL solution theta_1*(x).

        For m = 0 the unique LL solution: the projection of x onto the half-space
        {theta : a^T theta <= b - h^T x}. For m > 0 the theta_1 block, which is x (theta_2 is
        free within its half-space, see :meth:`lower_gap`).
        """
        excess = np.maximum(_dot(self.a + self.h, x) - self.b, 0.0)[..., None]
        if self.n_free == 0:
            return x - excess * self.a / (self.a**2).sum(-1, keepdims=True)
        return x.copy()

    def lower_gap(self, x: Array, y: Array) -> Array:
        """Distance from y to the LL solution set S(x)."""
        y1, y2 = self._split(y)
        if self.n_free == 0:
            return np.linalg.norm(y1 - self.lower_solution(x), axis=-1)
        excess = np.maximum(_dot(self.a + self.h, x) + _dot(self.e, y2) - self.b, 0.0)
        d2 = ((y1 - x) ** 2).sum(-1) + excess**2 / (self.e**2).sum(-1)
        return np.sqrt(d2)

    def reduced_value(self, x: Array, y2: Array | None = None) -> Array:
        """F(x, y*(x)) (m = 0), or F at the LL solution (x, y2) when y2 is UL-chosen (m > 0)."""
        if self.n_free == 0:
            return self.upper_value(x, self.lower_solution(x))
        return self.upper_value(x, np.concatenate([x, y2], axis=-1))

    def reference_solution(self, method: str = "kkt") -> Pair:
        """The bilevel solution (x*, y*) per instance, shapes (B, n) and (B, n + m).

        ``"kkt"``: exact. For m = 0 the reduced UL objective x -> F(x, y*(x)) is a convex
        quadratic on each side of the hyperplane (a + h)^T x = b, so its global minimum is the
        better of two convex QPs with one linear constraint, each solved from its KKT system.
        For m > 0 the optimistic problem is one convex QP in (x, y_2) with one constraint.
        ``"scipy"``: the same pieces solved numerically by scipy's SLSQP (a cross-check).
        """
        if method not in ("kkt", "scipy"):
            raise ValueError(f"method must be 'kkt' or 'scipy', got {method!r}")
        xs, ys = [], []
        for i in range(self.batch):
            pieces = self._pieces(i)
            best = None
            for H, q, c, sgn, const in pieces:
                if method == "kkt":
                    v = _min_quadratic_halfspace(H, q, sgn * c, sgn * self.b)
                else:
                    v = _slsqp_quadratic_halfspace(H, q, sgn * c, sgn * self.b)
                val = 0.5 * v @ H @ v - q @ v + const
                if best is None or val < best[0]:
                    best = (val, v)
            v = best[1]
            x = v[: self.n]
            if self.n_free == 0:
                y = self._lower_one(i, x)
            else:
                y = np.concatenate([x, v[self.n :]])
            xs.append(x)
            ys.append(y)
        return np.array(xs), np.array(ys)

    def _lower_one(self, i: int, x: Array) -> Array:
        a, h = self.a[i], self.h[i]
        return x - max(0.0, (a + h) @ x - self.b) * a / (a @ a)

    def _pieces(self, i: int) -> list[tuple[Array, Array, Array, float, float]]:
        """(H, q, c, sign, const): min 1/2 v^T H v - q^T v + const s.t. sign c^T v <= sign b."""
        a, e, h, t, s = self.a[i], self.e[i], self.h[i], self.t[i], self.s[i]
        rho, n = self.rho, self.n
        if self.n_free > 0:
            m = self.n_free
            H = np.diag(np.r_[np.full(n, 1 + rho), np.ones(m)])
            q = np.r_[t, s]
            return [(H, q, np.r_[a + h, e], 1.0, 0.5 * (t @ t + s @ s))]
        eye = np.eye(n)
        # piece 1, (a + h)^T x <= b: y = x
        p1 = ((1 + rho) * eye, t, a + h, 1.0, 0.5 * t @ t)
        # piece 2, (a + h)^T x >= b: y = M x + a b / |a|^2 with M = I - a (a + h)^T / |a|^2
        M = eye - np.outer(a, a + h) / (a @ a)
        r = a * self.b / (a @ a) - t
        p2 = (M.T @ M + rho * eye, -M.T @ r, a + h, -1.0, 0.5 * r @ r)
        return [p1, p2]

    def metrics(self, x_star: Array, F_star: Array) -> Monitor:
        """A monitor for :func:`lv_hba`: relative error of x, UL gap and LL gap, per instance."""

        def monitor(x: Array, y: Array) -> dict[str, Array]:
            if self.n_free == 0:
                Fx = self.reduced_value(x)
            else:
                # the UL value at the nearest LL-feasible point (x, Proj(y_2))
                y2 = self._split(y)[1]
                excess = np.maximum(_dot(self.a + self.h, x) + _dot(self.e, y2) - self.b, 0.0)
                y2 = y2 - (excess / (self.e**2).sum(-1))[..., None] * self.e
                Fx = self.reduced_value(x, y2)
            return {
                "rel_error": np.linalg.norm(x - x_star, axis=-1) / np.linalg.norm(x_star, axis=-1),
                "ul_gap": Fx - F_star,
                "ll_gap": self.lower_gap(x, y),
                "violation": np.maximum(self.constraint(x, y)[..., 0], 0.0),
            }

        return monitor


def _slsqp_quadratic_halfspace(H: Array, q: Array, s: Array, b: float) -> Array:
    res = optimize.minimize(
        lambda v: 0.5 * v @ H @ v - q @ v, np.zeros(len(q)), jac=lambda v: H @ v - q,
        constraints=[{"type": "ineq", "fun": lambda v: b - s @ v, "jac": lambda v: -s}],
        method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x


# ------------------------------------------------------------------------------------------
# Linear-SVM hyper-parameter learning (the paper's Section 5 experiment)
# ------------------------------------------------------------------------------------------


def _leaky(u: Array, slope: float = 0.01) -> Array:
    return np.where(u > 0, u, slope * u)


def squared_hinge_newton(
    Z: Array, labels: Array, weights: Array, *, w0: Array | None = None, b0: float = 0.0,
    xi0: Array | None = None, b_reg: float = 1.0, tol: float = 1e-10, max_iter: int = 50,
) -> tuple[Array, float]:
    """argmin_{w, b} 1/2 ||w - w0||^2 + b_reg/2 (b - b0)^2
    + 1/2 sum_i weights_i max(0, 1 - xi0_i - labels_i (w^T z_i + b))^2.

    Semi-smooth Newton with backtracking (the objective is convex, piecewise quadratic). Two
    uses: with w0 = 0, b_reg = 0, xi0 = 0 it is the LL of the SVM problem for fixed c (an L2-SVM
    with per-sample weights); with weights = 1, b_reg = 1 it is the projection of (w0, b0, xi0)
    onto {xi_i >= 1 - labels_i (w^T z_i + b)}, eliminating xi in closed form.
    """
    N, d = Z.shape
    w0 = np.zeros(d) if w0 is None else w0
    xi0 = np.zeros(N) if xi0 is None else xi0
    A = labels[:, None] * np.c_[Z, np.ones(N)]  # rows y_i (z_i, 1)
    center = np.r_[w0, b0]
    reg = np.r_[np.ones(d), max(b_reg, 1e-12)]

    def phi(u: Array) -> tuple[float, Array]:
        r = np.maximum(1.0 - xi0 - A @ u, 0.0)
        return 0.5 * (reg * (u - center) ** 2).sum() + 0.5 * (weights * r**2).sum(), r

    u = center.copy()
    val, r = phi(u)
    for _ in range(max_iter):
        grad = reg * (u - center) - A.T @ (weights * r)
        if np.linalg.norm(grad) <= tol * (1 + np.linalg.norm(u)):
            break
        active = r > 0
        Aa = A[active]
        H = np.diag(reg) + Aa.T @ (weights[active, None] * Aa)
        step = np.linalg.solve(H, -grad)
        t = 1.0
        while True:
            new_val, new_r = phi(u + t * step)
            if new_val <= val + 1e-4 * t * (grad @ step) or t < 1e-10:
                break
            t *= 0.5
        u, val, r = u + t * step, new_val, new_r
    return u[:d], float(u[d])


@dataclass(frozen=True)
class SVMHyperProblem:
    """Hyper-parameter learning for a linear SVM (the paper's Section 5, after its code).

    UL variable c in R^N (one log-weight per training sample), LL variable
    theta = (w, b, xi) in R^d x R x R^N:

        LL:  min 1/2 ||w||^2 + 1/2 sum_i exp(c_i) xi_i^2  s.t.  1 - xi_i - y_i (w^T z_i + b) <= 0
        UL:  F(w, b) = sum_{val} leaky(2 sigmoid(-5 m_j) - 1),  m_j = y_j (w^T z_j + b) / ||w||,

    a smoothed count of validation errors at the normalised margin. With all c_i equal to
    log(2C) the LL is exactly the squared-hinge linear SVM with cost C (sklearn's LinearSVC with
    loss="squared_hinge", up to its intercept handling). c is kept in the box [c_min, c_max].
    """

    Z_train: Array
    y_train: Array
    Z_val: Array
    y_val: Array
    c_min: float = -8.0
    c_max: float = 8.0

    def __post_init__(self) -> None:
        for name in ("y_train", "y_val"):
            labels = getattr(self, name)
            if not np.all(np.isin(labels, (-1.0, 1.0))):
                raise ValueError(f"{name} must hold labels -1 and +1")
        if self.Z_train.shape[0] != self.y_train.shape[0] or \
                self.Z_val.shape[0] != self.y_val.shape[0]:
            raise ValueError("features and labels must have the same number of rows")
        if self.Z_train.shape[1] != self.Z_val.shape[1]:
            raise ValueError("training and validation features differ in dimension")
        if not self.c_min < self.c_max:
            raise ValueError(f"need c_min < c_max, got {self.c_min}, {self.c_max}")

    @property
    def n_train(self) -> int:
        return self.Z_train.shape[0]

    @property
    def dim(self) -> int:
        return self.Z_train.shape[1]

    def unpack(self, theta: Array) -> tuple[Array, Array, Array]:
        d = self.dim
        return theta[..., :d], theta[..., d], theta[..., d + 1 :]

    def pack(self, w: Array, b: float, xi: Array) -> Array:
        return np.r_[w, b, xi]

    # --- oracles ------------------------------------------------------------------------
    def upper_value(self, c: Array, theta: Array) -> float:
        w, b, _ = self.unpack(theta)
        m = self.y_val * (self.Z_val @ w + b) / np.linalg.norm(w)
        return float(_leaky(2.0 / (1.0 + np.exp(5.0 * m)) - 1.0).sum())

    def upper_grad(self, c: Array, theta: Array) -> Pair:
        w, b, xi = self.unpack(theta)
        nw = np.linalg.norm(w)
        m = self.y_val * (self.Z_val @ w + b) / nw
        s = 1.0 / (1.0 + np.exp(5.0 * m))  # sigmoid(-5 m)
        u = 2.0 * s - 1.0
        dm = np.where(u > 0, 1.0, 0.01) * (-10.0) * s * (1.0 - s)  # dF/dm_j
        coef = dm * self.y_val / nw
        gw = self.Z_val.T @ coef - (dm * m).sum() * w / nw**2
        gb = coef.sum()
        return np.zeros_like(c), self.pack(gw, gb, np.zeros_like(xi))

    def lower_value(self, c: Array, theta: Array) -> float:
        w, _, xi = self.unpack(theta)
        return float(0.5 * w @ w + 0.5 * (np.exp(c) * xi**2).sum())

    def lower_grad(self, c: Array, theta: Array) -> Pair:
        w, _, xi = self.unpack(theta)
        ec = np.exp(c)
        return 0.5 * ec * xi**2, self.pack(w, 0.0, ec * xi)

    def constraint(self, c: Array, theta: Array) -> Array:
        w, b, xi = self.unpack(theta)
        return 1.0 - xi - self.y_train * (self.Z_train @ w + b)

    def constraint_vjp(self, c: Array, theta: Array, lam: Array) -> Pair:
        yl = self.y_train * lam
        return np.zeros_like(c), self.pack(-self.Z_train.T @ yl, -yl.sum(), -lam)

    def project_upper(self, c: Array, theta: Array) -> Pair:
        """c onto its box; (w, b, xi) onto {g <= 0} by :func:`squared_hinge_newton`."""
        w0, b0, xi0 = self.unpack(theta)
        w, b = squared_hinge_newton(self.Z_train, self.y_train, np.ones(self.n_train), w0=w0,
                                    b0=float(b0), xi0=xi0)
        xi = np.maximum(xi0, 1.0 - self.y_train * (self.Z_train @ w + b))
        return np.clip(c, self.c_min, self.c_max), self.pack(w, b, xi)

    def problem(self) -> ConstrainedBilevelProblem:
        return ConstrainedBilevelProblem(
            upper_grad=self.upper_grad, lower_value=self.lower_value, lower_grad=self.lower_grad,
            constraint=self.constraint, constraint_vjp=self.constraint_vjp,
            project_upper=self.project_upper, n_constraints=self.n_train,
            upper_value=self.upper_value,
        )

    # --- second-order pieces for GAM (lib.optim.gradient_approximation_bilevel) ------------
    def lower_solve(self, c: Array, theta_warm: Array | None = None) -> Pair:
        """The LL solution and its multipliers lam_i = exp(c_i) xi_i (KKT in xi_i)."""
        theta = self.lower_solution(c)
        return theta, np.exp(c) * self.unpack(theta)[2]

    def lagrangian_hessians(self, c: Array, theta: Array, lam: Array) -> Pair:
        """(d^2 L / d theta^2, d^2 L / d theta dc) of L = f + lam^T g; g is linear in theta."""
        d, N = self.dim, self.n_train
        ec = np.exp(c)
        Ltt = np.diag(np.r_[np.ones(d), 0.0, ec])
        Ltx = np.zeros((d + 1 + N, N))
        Ltx[d + 1 :] = np.diag(ec * self.unpack(theta)[2])
        return Ltt, Ltx

    def constraint_jacobians(self, c: Array, theta: Array) -> Pair:
        """(dg / d theta, dg / dc): rows (-y_i z_i, -y_i, -e_i), and zero (g ignores c)."""
        N = self.n_train
        Jt = np.hstack([-self.y_train[:, None] * self.Z_train, -self.y_train[:, None], -np.eye(N)])
        return Jt, np.zeros((N, N))

    def project_c(self, c: Array) -> Array:
        return np.clip(c, self.c_min, self.c_max)

    # --- exact lower level and evaluation ---------------------------------------------------
    def lower_solution(self, c: Array) -> Array:
        """The LL solution (w, b, xi) for weights exp(c): a weighted squared-hinge SVM."""
        w, b = squared_hinge_newton(self.Z_train, self.y_train, np.exp(c), b_reg=0.0)
        xi = np.maximum(1.0 - self.y_train * (self.Z_train @ w + b), 0.0)
        return self.pack(w, b, xi)

    def accuracy(self, theta: Array, Z: Array, labels: Array) -> float:
        w, b, _ = self.unpack(theta)
        return float(np.mean(np.sign(Z @ w + b) == labels))
