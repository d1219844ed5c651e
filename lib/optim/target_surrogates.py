"""Target-based surrogates: majorization-minimization and SSO in the target space.

Lavington, Vaswani, Babanezhad, Schmidt & Le Roux (2023), "Target-based Surrogates for
Stochastic Optimization" (ICML 2023, arXiv:2302.02607). The objective is a composition

    h(theta) = L(z(theta)),   L(z) = (1/n) sum_i loss(z_i, y_i),

of a *target map* z(theta) (for a linear model the logits X theta) with a loss on the targets.
The gradient of L with respect to the targets is the *expensive* oracle (in imitation learning
it needs the environment, in adversarial training an attack); evaluating z(theta) and its
vector-Jacobian products is *cheap*. After one expensive call at z_t = z(theta_t), the
paper's target surrogate (its full-batch target optimization, and the stochastic SSO)

    g_t(theta) = L(z_t) + <grad L(z_t), z(theta) - z_t> + (1 / (2 eta)) ||z(theta) - z_t||^2

is minimised over theta by a black-box optimiser with m cheap steps. Inner products and
norms in target space carry the weight 1/n here (``<a, b> = (1/n) sum_i a_i b_i``), so eta is
a per-example step: if each loss(., y_i) is beta-smooth, eta <= 1/beta makes g_t a global
upper bound on h that is tight at theta_t, and any decrease of g_t decreases h
(majorization-minimization). In the stochastic setting (SSO) the linear term uses a
mini-batch; with the regulariser over all targets and an exact inner solve, one SSO step is
projected SGD in target space, z_{t+1} = Proj_Z(z_t - eta * (stochastic gradient)), where Z
is the set of realisable targets (the column space of X for a linear model).

The counters of a :class:`TargetProblem` separate the two costs: ``expensive_calls`` (one per
call of the target-gradient oracle, whatever its batch) and ``expensive_examples``, against
``cheap_evals`` (target-map evaluations, per example) spent by inner loops and line searches.
Losses recorded for plots go through the uncharged :meth:`TargetProblem.loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lib.optim.operators import check_indices

#: ``targets(theta, idx) -> z`` of shape (len(idx),): the cheap target map on examples idx.
TargetMap = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``vjp(theta, idx, v) -> J_idx(theta)^T v`` of shape (dim,): the cheap vector-Jacobian product.
TargetVJP = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

INNER_METHODS = ("armijo", "gd", "exact")
REGULARIZERS = ("batch", "full")


# --------------------------------------------------------------------------------------------
# losses on the targets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetLoss:
    """A per-example loss l(z, y) on scalar targets, its derivative in z, and its smoothness.

    ``smoothness`` is beta with |l''(z, y)| <= beta for all z: the surrogate is a global upper
    bound for eta <= 1/beta.
    """

    name: str
    value: Callable[[np.ndarray, np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]
    smoothness: float
    labels: tuple[float, ...] | None = None  # allowed label values, None for any real label


def _logistic_value(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, -y * z)


def _logistic_derivative(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    # d/dz log(1 + exp(-y z)) = -y sigmoid(-y z), written with tanh so it never overflows
    return -y * 0.5 * (1.0 - np.tanh(0.5 * y * z))


LOGISTIC = TargetLoss("logistic", _logistic_value, _logistic_derivative, 0.25, (-1.0, 1.0))
SQUARED = TargetLoss(
    "squared", lambda z, y: 0.5 * (z - y) ** 2, lambda z, y: z - y, 1.0, None
)
LOSSES = {"logistic": LOGISTIC, "squared": SQUARED}


# --------------------------------------------------------------------------------------------
# the problem: a target map, a loss, and the oracle counters
# --------------------------------------------------------------------------------------------
class TargetProblem:
    """h(theta) = (1/n) sum_i loss(z_i(theta), y_i), with counted expensive and cheap calls.

    Parameters
    ----------
    targets, vjp:
        The cheap target map and its vector-Jacobian product (see :data:`TargetMap`).
    y:
        Labels, shape (n,).
    loss:
        A :class:`TargetLoss` or its name (``"logistic"``: labels in {-1, +1}; ``"squared"``).
    dim:
        Number of parameters.
    design:
        For a linear target map z = X theta, the matrix X (enables the exact inner solve).
    restrict:
        Optional ``restrict(idx) -> (f, vjp)`` with ``f(theta) = targets(theta, idx)`` and
        ``vjp(v) = J_idx^T v``: a faster route to the same values for an inner loop that
        evaluates one batch many times (for a linear model, the rows X[idx] are sliced once).
    """

    def __init__(
        self,
        targets: TargetMap,
        vjp: TargetVJP,
        y: np.ndarray,
        loss: TargetLoss | str,
        dim: int,
        *,
        design: np.ndarray | None = None,
        restrict: Callable[[np.ndarray], tuple[Callable, Callable]] | None = None,
    ) -> None:
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
            loss = LOSSES[loss]
        y = np.asarray(y, dtype=float)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"labels must be a non-empty 1-d array, got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("labels must be finite")
        if loss.labels is not None and not np.all(np.isin(y, loss.labels)):
            raise ValueError(f"the {loss.name} loss needs labels in {loss.labels}, got "
                             f"{np.unique(y)[:5]}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if design is not None:
            design = np.asarray(design, dtype=float)
            if design.shape != (y.size, dim):
                raise ValueError(f"design must have shape ({y.size}, {dim}), got {design.shape}")
        self._targets, self._vjp = targets, vjp
        self.y, self.loss_fn, self.dim, self.n = y, loss, int(dim), y.size
        self.design = design
        self._restrict = restrict
        self._full_map: Callable | None = None
        self.reset_counters()

    # -- cheap: the target map ---------------------------------------------------------------
    def targets(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """z_i(theta) for i in idx (all examples when idx is None); charged to ``cheap_evals``."""
        self._check_theta(theta)
        idx = self._index(idx)
        self.cheap_evals += idx.size
        return self._targets(theta, idx)

    def restricted(self, idx: np.ndarray | None) -> tuple[Callable, Callable]:
        """``(f, vjp)`` for a fixed batch: f(theta) = z_idx(theta) (charged to ``cheap_evals``)
        and vjp(theta, v) = J_idx(theta)^T v, for inner loops that reuse one batch."""
        idx = self._index(idx)
        if self._restrict is not None:
            f0, vjp0 = self._restrict(idx)

            def f(theta: np.ndarray) -> np.ndarray:
                self.cheap_evals += idx.size
                return f0(theta)

            return f, lambda theta, v: vjp0(v)

        def f_default(theta: np.ndarray) -> np.ndarray:
            self.cheap_evals += idx.size
            return self._targets(theta, idx)

        return f_default, lambda theta, v: self._vjp(theta, idx, v)

    def vjp(self, theta: np.ndarray, idx: np.ndarray | None, v: np.ndarray) -> np.ndarray:
        """J(theta)^T v restricted to examples idx (cheap; not counted separately)."""
        idx = self._index(idx)
        return self._vjp(theta, idx, v)

    # -- expensive: the gradient with respect to the targets --------------------------------
    def target_value_and_grad(
        self, z: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The per-example losses l(z_i, y_i) and derivatives l'(z_i, y_i) for i in idx.

        This is the expensive oracle: one call adds 1 to ``expensive_calls`` and len(idx) to
        ``expensive_examples``.
        """
        idx = self._index(idx)
        z = np.asarray(z, dtype=float)
        if z.shape != idx.shape:
            raise ValueError(f"z must have one target per index, shape {idx.shape}, got "
                             f"{z.shape}")
        self.expensive_calls += 1
        self.expensive_examples += idx.size
        y = self.y[idx]
        return self.loss_fn.value(z, y), self.loss_fn.derivative(z, y)

    # -- uncharged measurements --------------------------------------------------------------
    def loss(self, theta: np.ndarray) -> float:
        """h(theta) over all n examples, for plots and checks: *not* charged."""
        self._check_theta(theta)
        return float(np.mean(self.loss_fn.value(self._all_targets(theta), self.y)))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """grad h(theta) = J^T l'(z) / n, for reference solvers: *not* charged."""
        self._check_theta(theta)
        idx = np.arange(self.n)
        d = self.loss_fn.derivative(self._all_targets(theta), self.y)
        return self._vjp(theta, idx, d) / self.n

    def _all_targets(self, theta: np.ndarray) -> np.ndarray:
        """z(theta) on all examples, uncharged (measurements only)."""
        if self._restrict is not None:
            if self._full_map is None:
                self._full_map = self._restrict(np.arange(self.n))[0]
            return self._full_map(theta)
        return self._targets(theta, np.arange(self.n))

    def reset_counters(self) -> None:
        """Set every counter back to zero."""
        self.expensive_calls = 0
        self.expensive_examples = 0
        self.cheap_evals = 0

    def _check_theta(self, theta: np.ndarray) -> None:
        if np.shape(theta) != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {np.shape(theta)}")

    def _index(self, idx: np.ndarray | None) -> np.ndarray:
        if idx is None:
            return np.arange(self.n)
        return check_indices(idx, self.n, "example")


def linear_target_problem(X: np.ndarray, y: np.ndarray, loss: TargetLoss | str) -> TargetProblem:
    """The linear model z(theta) = X theta (the paper's supervised-learning setting)."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be a matrix (n, d), got shape {X.shape}")
    if np.shape(y) != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {np.shape(y)}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite")
    def restrict(idx: np.ndarray) -> tuple[Callable, Callable]:
        rows = X if idx.size == X.shape[0] and np.array_equal(idx, np.arange(idx.size)) \
            else X[idx]
        return (lambda theta: rows @ theta), (lambda v: rows.T @ v)

    return TargetProblem(
        lambda theta, idx: X[idx] @ theta,
        lambda theta, idx, v: X[idx].T @ v,
        y, loss, X.shape[1], design=X, restrict=restrict,
    )


# --------------------------------------------------------------------------------------------
# the surrogate
# --------------------------------------------------------------------------------------------
class TargetSurrogate:
    """The target surrogate built at theta_t from one expensive call (full batch, or SSO).

    With the batch B (all examples in the full-batch case), b = |B|:

        g(theta) = (1/b) sum_{i in B} [ l_i(z_i^t) + l_i'(z_i^t) (z_i(theta) - z_i^t) ]
                   + (1 / (2 eta)) * R(theta),

    where R is (1/b) sum_{i in B} (z_i(theta) - z_i^t)^2 for ``regularizer="batch"`` (the
    practical form: only batch targets are evaluated) or (1/n) sum_{all i} (...)^2 for
    ``"full"`` (the form that makes an exact SSO step projected SGD in target space). In the
    full-batch case the two coincide. ``sign=-1`` flips the linear term: a deliberately wrong
    surrogate, used to show what the upper-bound property protects against.
    """

    def __init__(
        self,
        problem: TargetProblem,
        theta_t: np.ndarray,
        idx: np.ndarray,
        eta: float,
        *,
        regularizer: str = "batch",
        sign: float = 1.0,
    ) -> None:
        if not (eta > 0 and math.isfinite(eta)):
            raise ValueError(f"the target step eta must be positive and finite, got {eta}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 (the surrogate) or -1 (the wrong one), got {sign}")
        self.problem, self.eta, self.regularizer, self.sign = problem, float(eta), regularizer, sign
        self.theta_t = np.asarray(theta_t, dtype=float).copy()
        problem._check_theta(self.theta_t)
        self.idx = problem._index(idx)
        full = regularizer == "full" or self.idx.size == problem.n
        self.reg_idx = np.arange(problem.n) if full else self.idx
        # positions of the batch inside the regularised set (all of it, or the batch itself)
        self._pos = self.idx if full else slice(None)
        self._f, self._vjp = problem.restricted(self.reg_idx)
        self.z_t = self._f(self.theta_t)
        # the one expensive call: losses and target gradients on the batch
        self.values, self.grads = problem.target_value_and_grad(self.z_t[self._pos], self.idx)
        self._const = float(self.values.sum()) / self.idx.size
        # linear coefficients on the regularised targets: sign * l'(z^t) / b on the batch
        self._coef = np.zeros(self.reg_idx.size)
        self._coef[self._pos] = sign * self.grads / self.idx.size
        self._reg_weight = 1.0 / (2.0 * self.eta * self.reg_idx.size)

    def value(self, theta: np.ndarray) -> float:
        """g(theta); evaluates the target map on the regularised examples (cheap)."""
        return self._value_and_shift(theta)[0]

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """g(theta) and its gradient in theta (one target-map evaluation and one VJP)."""
        value, dz = self._value_and_shift(theta)
        return value, self._grad_from_shift(theta, dz)

    def _value_and_shift(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        # g = const + <coef, dz> + ||dz||^2 / (2 eta |R|), dz = z(theta) - z_t on the set R
        dz = self._f(theta) - self.z_t
        return self._const + float(self._coef @ dz) + self._reg_weight * float(dz @ dz), dz

    def _grad_from_shift(self, theta: np.ndarray, dz: np.ndarray) -> np.ndarray:
        # chain rule through the target map: J^T (coef + dz / (eta |R|))
        return self._vjp(theta, self._coef + 2.0 * self._reg_weight * dz)


def build_surrogate(
    problem: TargetProblem,
    theta: np.ndarray,
    eta: float,
    idx: np.ndarray | None = None,
    *,
    regularizer: str = "batch",
    sign: float = 1.0,
) -> TargetSurrogate:
    """Spend one expensive call at z_t = z(theta) on batch idx (all examples when None) and
    return the surrogate g_t of :class:`TargetSurrogate`."""
    if not isinstance(problem, TargetProblem):
        raise ValueError(f"problem must be a TargetProblem, got {type(problem).__name__}")
    return TargetSurrogate(problem, theta, problem._index(idx), eta,
                           regularizer=regularizer, sign=sign)


# --------------------------------------------------------------------------------------------
# the inner loop: m cheap steps on the surrogate
# --------------------------------------------------------------------------------------------
def minimize_surrogate(
    surrogate: TargetSurrogate,
    m: int,
    *,
    inner: str = "armijo",
    inner_lr: float = 1.0,
    armijo_c: float = 0.5,
    backtrack: float = 0.5,
    max_backtracks: int = 60,
) -> tuple[np.ndarray, int]:
    """Run m inner steps on the surrogate from theta_t; return (theta, inner steps taken).

    ``inner="armijo"``: gradient descent with a backtracking (Armijo) line search, the step
    starting at ``inner_lr`` and then at twice the last accepted step (the paper's default
    inner optimiser is of this kind); each step decreases g, so with eta <= 1/beta it
    decreases h. ``"gd"``: plain gradient descent with the fixed step ``inner_lr`` (can
    overshoot). ``"exact"``: the closed-form minimiser for a linear target map (needs
    ``problem.design``); with the ``"full"`` regulariser this is the exact projection, i.e.
    projected SGD in target space. For an under-determined batch problem, the minimiser
    closest to theta_t (minimum-norm change) is returned. Counts as m inner steps.
    """
    if int(m) != m or m < 1:
        raise ValueError(f"the number of inner steps m must be a positive integer, got {m}")
    if inner not in INNER_METHODS:
        raise ValueError(f"inner must be one of {INNER_METHODS}, got {inner!r}")
    if not (inner_lr > 0 and math.isfinite(inner_lr)):
        raise ValueError(f"inner_lr must be positive and finite, got {inner_lr}")
    if not (0 < armijo_c < 1 and 0 < backtrack < 1):
        raise ValueError(f"need 0 < armijo_c < 1 and 0 < backtrack < 1, got {armijo_c}, "
                         f"{backtrack}")
    s = surrogate
    if inner == "exact":
        return _exact_minimizer(s), int(m)
    theta = s.theta_t.copy()
    value, grad = s.value_and_grad(theta)
    lr = inner_lr
    for _ in range(int(m)):
        if inner == "gd":
            theta = theta - inner_lr * grad
            value, grad = s.value_and_grad(theta)
            continue
        gnorm2 = float(grad @ grad)
        if gnorm2 == 0.0:
            break
        for _ in range(max_backtracks):
            candidate = theta - lr * grad
            new_value, dz = s._value_and_shift(candidate)
            if new_value <= value - armijo_c * lr * gnorm2:  # Armijo's sufficient decrease
                break
            lr *= backtrack
        else:  # no decrease found at any tried step: stay put (the surrogate is flat here)
            break
        theta, value = candidate, new_value
        grad = s._grad_from_shift(theta, dz)
        lr = min(2.0 * lr, inner_lr)  # let the next step try a larger one again
    return theta, int(m)


def _exact_minimizer(s: TargetSurrogate) -> np.ndarray:
    X = s.problem.design
    if X is None:
        raise ValueError("the exact inner solve needs a linear target map (problem.design)")
    b, n = s.idx.size, s.problem.n
    if s.reg_idx.size < n:
        # minimise (1/(2 eta b)) ||X_B theta - (z_t - sign eta g)||^2: a least-squares step
        rows = X[s.idx]
        rhs = -s.sign * s.eta * s.grads
        step, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
        return s.theta_t + step
    # minimise (1/b) g^T X_B theta + (1/(2 eta n)) ||X (theta - theta_t)||^2:
    # X dtheta = Proj_range(X)(-sign eta (n/b) scatter(g)), projected SGD in target space
    w = np.zeros(n)
    w[s.idx] = -s.sign * s.eta * (n / b) * s.grads
    step, *_ = np.linalg.lstsq(X, w, rcond=None)
    return s.theta_t + step


# --------------------------------------------------------------------------------------------
# the algorithms
# --------------------------------------------------------------------------------------------
@dataclass
class TargetTrace:
    """A run's record, one entry per outer step (and one for the start)."""

    method: str
    expensive_calls: list[int] = field(default_factory=list)
    inner_steps: list[int] = field(default_factory=list)
    cheap_evals: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    theta: np.ndarray | None = None

    def suboptimality(self, h_star: float) -> np.ndarray:
        """h(theta_t) - h* along the run."""
        return np.asarray(self.losses) - h_star

    def _record(self, problem: TargetProblem, theta: np.ndarray, inner: int) -> None:
        self.expensive_calls.append(problem.expensive_calls)
        self.inner_steps.append(inner)
        self.cheap_evals.append(problem.cheap_evals)
        self.losses.append(problem.loss(theta))


def _check_run(problem: TargetProblem, theta0: np.ndarray, n_outer: int) -> np.ndarray:
    if not isinstance(problem, TargetProblem):
        raise ValueError(f"problem must be a TargetProblem, got {type(problem).__name__}")
    theta0 = np.asarray(theta0, dtype=float)
    problem._check_theta(theta0)
    if int(n_outer) != n_outer or n_outer < 1:
        raise ValueError(f"the number of outer steps must be a positive integer, got {n_outer}")
    return theta0


def _check_batch(problem: TargetProblem, batch_size: int) -> int:
    if int(batch_size) != batch_size or not 1 <= batch_size <= problem.n:
        raise ValueError(f"batch_size must be an integer in [1, {problem.n}], got {batch_size}")
    return int(batch_size)


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Mini-batches without replacement within an epoch, reshuffled every epoch."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def _surrogate_steps(problem: TargetProblem, theta: np.ndarray, name: str, n_outer: int, m: int,
                     inner: str, inner_lr: float,
                     surrogate_at: Callable[[np.ndarray], TargetSurrogate]) -> TargetTrace:
    """The outer loop shared by MM and SSO: at each outer step build the surrogate at theta_t
    (one expensive call) and take m cheap inner steps on it, recording the trace."""
    problem.reset_counters()
    trace = TargetTrace(name)
    trace._record(problem, theta, 0)
    steps = 0
    for _ in range(int(n_outer)):
        theta, k = minimize_surrogate(surrogate_at(theta), m, inner=inner, inner_lr=inner_lr)
        steps += k
        trace._record(problem, theta, steps)
    trace.theta = theta
    return trace


def full_batch_mm(
    problem: TargetProblem,
    theta0: np.ndarray,
    *,
    eta: float,
    m: int,
    n_outer: int,
    inner: str = "armijo",
    inner_lr: float = 1.0,
    sign: float = 1.0,
) -> TargetTrace:
    """Full-batch target optimization (the paper's first setting): majorization-minimization.

    Each outer step spends one expensive call on all n examples, builds the surrogate g_t
    and decreases it with m cheap inner steps. For eta <= 1/beta, g_t >= h everywhere and
    g_t(theta_t) = h(theta_t), so with a descent inner loop h never increases.
    """
    theta = _check_run(problem, theta0, n_outer)
    return _surrogate_steps(problem, theta, f"MM (m={m})", n_outer, m, inner, inner_lr,
                            lambda t: build_surrogate(problem, t, eta, None, sign=sign))


def sso(
    problem: TargetProblem,
    theta0: np.ndarray,
    *,
    eta: float,
    m: int,
    batch_size: int,
    n_outer: int,
    rng: np.random.Generator,
    inner: str = "armijo",
    inner_lr: float = 1.0,
    regularizer: str = "batch",
) -> TargetTrace:
    """Stochastic surrogate optimization, SSO (the paper's stochastic algorithm).

    Per outer step t: draw a mini-batch B_t, spend one expensive call for the targets'
    gradients l_i'(z_i^t), i in B_t, build the surrogate (:class:`TargetSurrogate`) with the
    target step eta, and take m cheap inner steps on it from theta_t. With an exact inner
    solve and ``regularizer="full"`` the step is projected SGD in target space.
    """
    theta = _check_run(problem, theta0, n_outer)
    batch_size = _check_batch(problem, batch_size)
    batches = _batches(problem.n, batch_size, rng)
    return _surrogate_steps(
        problem, theta, f"SSO (m={m})", n_outer, m, inner, inner_lr,
        lambda t: build_surrogate(problem, t, eta, next(batches), regularizer=regularizer),
    )


def sgd(
    problem: TargetProblem,
    theta0: np.ndarray,
    *,
    lr: float,
    batch_size: int,
    n_steps: int,
    rng: np.random.Generator,
) -> TargetTrace:
    """The baseline: SGD in parameter space, theta <- theta - lr * J_B^T l'(z_B) / b.

    Each step spends exactly one expensive call (the same as an SSO outer step) and no inner
    steps; with batch_size = n it is full-batch gradient descent.
    """
    theta = _check_run(problem, theta0, n_steps)
    batch_size = _check_batch(problem, batch_size)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the SGD step size must be positive and finite, got {lr}")
    problem.reset_counters()
    trace = TargetTrace("SGD")
    trace._record(problem, theta, 0)
    batches = _batches(problem.n, batch_size, rng)
    for _ in range(int(n_steps)):
        idx = next(batches)
        z = problem.targets(theta, idx)
        _, g = problem.target_value_and_grad(z, idx)
        theta = theta - lr * problem.vjp(theta, idx, g / idx.size)
        trace._record(problem, theta, 0)
    trace.theta = theta
    return trace


# --------------------------------------------------------------------------------------------
# reference solution and step-size tuning
# --------------------------------------------------------------------------------------------
def reference_minimum(problem: TargetProblem, theta0: np.ndarray | None = None) -> float:
    """h* by L-BFGS (scipy) on the full objective, uncharged; for suboptimality plots."""
    from scipy.optimize import minimize

    theta0 = np.zeros(problem.dim) if theta0 is None else np.asarray(theta0, dtype=float)
    res = minimize(lambda t: (problem.loss(t), problem.gradient(t)), theta0, jac=True,
                   method="L-BFGS-B", options=dict(maxiter=20_000, maxcor=50, gtol=1e-12,
                                                    ftol=1e-16))
    return float(res.fun)


def tune_step(
    run: Callable[[float], float], grid: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """Pick the step from ``grid`` whose run ends with the smallest value of ``run(step)``.

    ``run`` returns the final suboptimality (non-finite values count as divergence). Returns
    the best step and every step's score.
    """
    grid = list(grid)
    if not grid:
        raise ValueError("the step-size grid is empty")
    if any(not (g > 0 and math.isfinite(g)) for g in grid):
        raise ValueError(f"every step size on the grid must be positive and finite, got {grid}")
    scores = {}
    for step in grid:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging step is a valid score
            value = float(run(step))
        scores[step] = value if math.isfinite(value) else math.inf
    best = min(scores, key=scores.get)
    return best, scores
