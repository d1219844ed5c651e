"""Halpern iteration and its variance-reduced version for finite-sum cocoercive inclusions.

Cai, Alacaoglu & Diakonikolas (2024), "Variance Reduced Halpern Iteration for Finite-Sum
Monotone Inclusions" (ICLR 2024, arXiv:2310.02987). The problem is

    find u with 0 in F(u) + G(u),   F = (1/n) sum_i F_i cocoercive, G maximal monotone,

and the optimality measure is the operator (forward-backward) residual of the *last* iterate.

* :func:`halpern`: the classical anchored iteration u_{k+1} = l_k u_0 + (1 - l_k) T(u_k),
  l_k = 1/(k+2), for a nonexpansive map T; its fixed-point residual decays as O(1/k).
* :func:`halpern_deterministic`: Halpern on the forward-backward map T = J_{eta G}(I - eta F),
  one full evaluation of F (n component calls) per step: the deterministic baseline.
* :func:`vr_halpern`: the paper's Algorithm 1 (cocoercive case): the same anchored step, with
  F(u_k) replaced by a recursive variance-reduced (PAGE/SARAH-type) estimator that is
  recomputed in full with probability p and otherwise corrected by a mini-batch of differences
  F_i(u_k) - F_i(u_{k-1}). With p ~ 1/sqrt(n) and batch ~ sqrt(n), a step costs O(sqrt(n))
  calls on average, which gives the paper's O~(n + sqrt(n) L / eps) oracle complexity.
* :func:`extragradient`: Korpelevich's extragradient, the standard monotone-Lipschitz baseline.
* :func:`extra_anchored_gradient`: EAG (Yoon & Ryu 2021), the deterministic anchored method
  with an O(1/k) last-iterate residual for monotone Lipschitz F: the baseline of Algorithm 2.
* :func:`vr_forb_resolvent` and :func:`inexact_halpern`: the paper's Algorithm 2 (monotone
  Lipschitz case): Halpern's iteration on the resolvent J_{eta(F+G)}, each resolvent computed
  approximately by variance-reduced forward-reflected-backward (VR-FoRB, Alacaoglu, Malitsky &
  Cevher 2021) on the strongly monotone problem that defines it.

Every method reads F only through a :class:`lib.optim.operators.FiniteSumOperator`, whose
counter charges n for a full evaluation and 2 per component difference. Residuals for the
trace are measured with the uncharged :meth:`FiniteSumOperator.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lib.optim.operators import FiniteSumOperator

#: ``prox(v, step)`` is the resolvent J_{step G}(v) = (I + step G)^{-1}(v) of the monotone part G.
Prox = Callable[[np.ndarray, float], np.ndarray]


@dataclass
class HalpernTrace:
    """What a run records: oracle calls and the last iterate's residual after every step."""

    method: str
    calls: list[int] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    u: np.ndarray | None = None
    converged: bool = False

    @property
    def iterations(self) -> int:
        return len(self.calls) - 1

    @property
    def relative(self) -> np.ndarray:
        """Residuals divided by the residual at the starting point."""
        return np.asarray(self.residuals) / self.residuals[0]

    def calls_to(self, tol: float) -> float:
        """Calls spent when the last iterate's relative residual first reached ``tol``
        (``inf`` if it never did)."""
        hits = np.flatnonzero(self.relative <= tol)
        return float(self.calls[hits[0]]) if hits.size else math.inf


def anchor_weight(k: int) -> float:
    """The Halpern anchoring weight l_k = 1/(k+2) for step k = 0, 1, 2, ..."""
    return 1.0 / (k + 2)


def halpern(
    T: Callable[[np.ndarray], np.ndarray], u0: np.ndarray, iterations: int
) -> np.ndarray:
    """Halpern's iteration u_{k+1} = l_k u_0 + (1 - l_k) T(u_k), l_k = 1/(k+2).

    For a nonexpansive T with a fixed point u*, ||u_k - T(u_k)|| <= 2 ||u_0 - u*|| / (k + 1)
    (Lieder's tight bound), and u_k tends to the fixed point nearest to the anchor u_0.
    Returns the last iterate.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative, got {iterations}")
    u0 = np.asarray(u0, dtype=float)
    u = u0.copy()
    for k in range(iterations):
        lam = anchor_weight(k)
        u = lam * u0 + (1 - lam) * T(u)
    return u


def forward_backward_residual(
    op: FiniteSumOperator, u: np.ndarray, step: float, prox: Prox | None = None
) -> float:
    """The computable optimality measure: ||u - J_{step G}(u - step F(u))|| / step.

    Without G (``prox=None``) this is the operator norm ||F(u)||. Measured with the uncharged
    :meth:`FiniteSumOperator.exact`, so it costs no oracle calls.
    """
    Fu = op.exact(u)
    if prox is None:
        return float(np.linalg.norm(Fu))
    return float(np.linalg.norm(u - prox(u - step * Fu, step)) / step)


def _check_common(op: FiniteSumOperator, u0: np.ndarray, step: float, tol: float,
                  max_calls: float, max_iter: int) -> np.ndarray:
    if not isinstance(op, FiniteSumOperator):
        raise ValueError(f"op must be a FiniteSumOperator, got {type(op).__name__}")
    u0 = np.asarray(u0, dtype=float)
    if u0.shape != (op.dim,):
        raise ValueError(f"u0 must have shape ({op.dim},), got {u0.shape}")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"the step size must be positive and finite, got {step}")
    if not tol >= 0:
        raise ValueError(f"the tolerance must be non-negative, got {tol}")
    if not max_calls > 0:
        raise ValueError(f"max_calls must be positive, got {max_calls}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    return u0


def _default_step(op: FiniteSumOperator, factor: float, name: str) -> float:
    if op.lipschitz is None:
        raise ValueError(f"{name} needs a step size, or an operator that knows its constant L")
    return factor / op.lipschitz


def _run(method: str, op: FiniteSumOperator, u0: np.ndarray, step: float, tol: float,
         max_calls: float, max_iter: int, prox: Prox | None,
         advance: Callable[[int, np.ndarray], np.ndarray], record_every: int,
         output: Callable[[np.ndarray], np.ndarray] | None = None) -> HalpernTrace:
    """The shared loop: advance, record calls and residual, stop at tol or at the budget.

    ``output(u)`` is the point a method returns after iterate u (default u itself); residuals
    are measured there.
    """
    output = output or (lambda u: u)
    if int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every}")
    trace = HalpernTrace(method)
    op.reset()
    r0 = forward_backward_residual(op, u0, step, prox)
    trace.calls.append(0)
    trace.residuals.append(r0)
    u, k = u0.copy(), 0
    # A too-large step makes a run diverge; we stop it (residual 1e8 times the initial one)
    # and report it as not converged, so the floating-point overflow on the way is expected.
    with np.errstate(over="ignore", invalid="ignore"):
        while True:
            u = advance(k, u)
            k += 1
            out_of_budget = op.calls >= max_calls or k >= max_iter
            if k % record_every and not out_of_budget:
                continue
            r = forward_backward_residual(op, output(u), step, prox)
            trace.calls.append(op.calls)
            trace.residuals.append(r)
            if r <= tol * r0:
                trace.converged = True
                break
            if out_of_budget or not r <= 1e8 * r0:
                break
    trace.u = output(u)
    return trace


def halpern_deterministic(
    op: FiniteSumOperator,
    u0: np.ndarray,
    *,
    step: float | None = None,
    tol: float = 1e-3,
    max_calls: float = 1e8,
    max_iter: int = 10**6,
    prox: Prox | None = None,
    record_every: int = 1,
) -> HalpernTrace:
    """Deterministic Halpern on T = J_{step G}(I - step F): n component calls per step.

    For F 1/L-cocoercive, I - step F is nonexpansive for step <= 2/L (default 2/L), and so is
    T; the residual ||F(u_k)|| then decays as O(L ||u_0 - u*|| / k), i.e. O(n L / eps) calls.
    Stops when the last iterate's residual is ``tol`` times the initial one, or after
    ``max_calls`` component calls or ``max_iter`` steps (then ``converged`` is False).
    """
    step = _default_step(op, 2.0, "halpern_deterministic") if step is None else step
    u0 = _check_common(op, u0, step, tol, max_calls, max_iter)

    def advance(k: int, u: np.ndarray) -> np.ndarray:
        v = u - step * op.full(u)
        v = v if prox is None else prox(v, step)
        lam = anchor_weight(k)
        return lam * u0 + (1 - lam) * v

    return _run("Halpern", op, u0, step, tol, max_calls, max_iter, prox, advance,
                record_every)


def vr_halpern(
    op: FiniteSumOperator,
    u0: np.ndarray,
    *,
    rng: np.random.Generator,
    step: float | None = None,
    p: float | None = None,
    batch: int | None = None,
    tol: float = 1e-3,
    max_calls: float = 1e8,
    max_iter: int = 10**6,
    prox: Prox | None = None,
    record_every: int = 1,
) -> HalpernTrace:
    """Variance-reduced Halpern iteration, cocoercive case (the paper's Algorithm 1).

    u_{k+1} = l_k u_0 + (1 - l_k) J_{step G}(u_k - step g_k),   l_k = 1/(k+2),
    g_{k+1} = F(u_{k+1})                                                 with probability p,
    g_{k+1} = g_k + (1/b) sum_{i in S_k} [F_i(u_{k+1}) - F_i(u_k)]       otherwise,

    with g_0 = F(u_0) and S_k a uniform sample (with replacement) of b = ``batch`` indices.
    The estimator is recursive (biased, as in SARAH/PAGE): its error grows only with the
    squared steps ||u_{k+1} - u_k||^2, which Halpern's anchoring keeps O(1/k^2). Expected
    cost per step: p n + 2 (1 - p) b calls; defaults p = 1/sqrt(n), b = ceil(sqrt(n)) make it
    about 3 sqrt(n). Default step 1/L (half the deterministic one, room for the estimator's
    error). The paper's analysis uses its own constants; these are ours.
    """
    n = op.n
    step = _default_step(op, 1.0, "vr_halpern") if step is None else step
    p = 1 / math.sqrt(n) if p is None else p
    batch = math.ceil(math.sqrt(n)) if batch is None else batch
    if not 0 < p <= 1:
        raise ValueError(f"the full-refresh probability p must be in (0, 1], got {p}")
    if int(batch) != batch or batch < 1:
        raise ValueError(f"the batch size must be a positive integer, got {batch}")
    u0 = _check_common(op, u0, step, tol, max_calls, max_iter)
    state = {"g": None}

    def advance(k: int, u: np.ndarray) -> np.ndarray:
        if state["g"] is None:  # g_0 = F(u_0), charged inside the run
            state["g"] = op.full(u)
        v = u - step * state["g"]
        v = v if prox is None else prox(v, step)
        lam = anchor_weight(k)
        u_next = lam * u0 + (1 - lam) * v
        if rng.random() < p:
            state["g"] = op.full(u_next)
        else:
            idx = rng.integers(0, n, size=int(batch))
            state["g"] = state["g"] + op.batch_difference(u_next, u, idx)
        return u_next

    return _run("VR-Halpern", op, u0, step, tol, max_calls, max_iter, prox, advance,
                record_every)


def extragradient(
    op: FiniteSumOperator,
    u0: np.ndarray,
    *,
    step: float | None = None,
    tol: float = 1e-3,
    max_calls: float = 1e8,
    max_iter: int = 10**6,
    prox: Prox | None = None,
    record_every: int = 1,
) -> HalpernTrace:
    """Korpelevich's extragradient: two full evaluations (2 n calls) per step.

    v_k = J_{step G}(u_k - step F(u_k)),  u_{k+1} = J_{step G}(u_k - step F(v_k)),
    default step 1/L (it needs step < 1/L for monotone L-Lipschitz F; the cocoercive F here
    tolerates the boundary). Its last-iterate residual decays as O(1/sqrt(k)) for monotone
    Lipschitz F in general.
    """
    step = _default_step(op, 0.5, "extragradient") if step is None else step
    u0 = _check_common(op, u0, step, tol, max_calls, max_iter)

    def resolvent(v: np.ndarray) -> np.ndarray:
        return v if prox is None else prox(v, step)

    def advance(k: int, u: np.ndarray) -> np.ndarray:
        v = resolvent(u - step * op.full(u))
        return resolvent(u - step * op.full(v))

    return _run("Extragradient", op, u0, step, tol, max_calls, max_iter, prox, advance,
                record_every)


def extra_anchored_gradient(
    op: FiniteSumOperator,
    u0: np.ndarray,
    *,
    step: float | None = None,
    tol: float = 1e-3,
    max_calls: float = 1e8,
    max_iter: int = 10**6,
    record_every: int = 1,
) -> HalpernTrace:
    """Extra anchored gradient, EAG-C (Yoon & Ryu 2021), two full evaluations per step:

    u_{k+1/2} = u_k + b_k (u_0 - u_k) - step F(u_k),
    u_{k+1}   = u_k + b_k (u_0 - u_k) - step F(u_{k+1/2}),   b_k = 1/(k+2),

    with the constant step 1/(8L) of their analysis (default). For monotone L-Lipschitz F it
    guarantees ||F(u_k)|| = O(L ||u_0 - u*|| / k) for the last iterate: O(n L / eps) component
    calls, the deterministic rate that the paper's Algorithm 2 improves by sqrt(n).
    Unconstrained problems only (G = 0).
    """
    step = _default_step(op, 1 / 8, "extra_anchored_gradient") if step is None else step
    u0 = _check_common(op, u0, step, tol, max_calls, max_iter)

    def advance(k: int, u: np.ndarray) -> np.ndarray:
        anchored = u + anchor_weight(k) * (u0 - u)
        half = anchored - step * op.full(u)
        return anchored - step * op.full(half)

    return _run("EAG", op, u0, step, tol, max_calls, max_iter, None, advance, record_every)


def vr_forb_resolvent(
    op: FiniteSumOperator,
    u: np.ndarray,
    v0: np.ndarray,
    eta: float,
    *,
    rng: np.random.Generator,
    iterations: int,
    step: float,
    p: float,
    batch: int,
    prox: Prox | None = None,
) -> np.ndarray:
    """Approximate the resolvent J_{eta(F+G)}(u), the v with 0 in eta (F + G)(v) + v - u.

    The operator A(v) = eta F(v) + v - u is 1-strongly monotone and (eta L + 1)-Lipschitz, a
    finite sum like F, and its zero is found by variance-reduced forward-reflected-backward
    (VR-FoRB, Alacaoglu, Malitsky & Cevher 2021), which converges linearly on it:

    g_t     = F(w_t) + (1/b) sum_{i in S_t} [F_i(z_t) - F_i(w_{t-1})]      (the VR-FoRB estimator)
    z_{t+1} = J_{step eta G}(z_t - step (eta g_t + z_t - u)),
    w_{t+1} = z_{t+1} with probability p, else w_t                 (snapshot, full F there),

    started at z_0 = w_0 = w_{-1} = v0 (a warm start). The affine part v - u is exact, so only
    F's evaluations are estimated (our reading; the paper states the inner solver and its
    complexity, not this discretisation). Cost: n at every new snapshot, 2 b per step.
    """
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations}")
    if not (eta > 0 and step > 0):
        raise ValueError(f"eta and the step must be positive, got eta={eta}, step={step}")
    if not 0 < p <= 1:
        raise ValueError(f"the snapshot probability p must be in (0, 1], got {p}")
    if int(batch) != batch or batch < 1:
        raise ValueError(f"the batch size must be a positive integer, got {batch}")
    z = np.asarray(v0, dtype=float).copy()
    w = w_prev = z
    Fw = op.full(w)
    for _ in range(int(iterations)):
        idx = rng.integers(0, op.n, size=int(batch))
        g = Fw + op.batch_difference(z, w_prev, idx)
        z_next = z - step * (eta * g + z - u)
        if prox is not None:
            z_next = prox(z_next, step * eta)
        w_prev = w
        if rng.random() < p:
            w = z_next
            Fw = op.full(w)
        z = z_next
    return z


def inexact_halpern(
    op: FiniteSumOperator,
    u0: np.ndarray,
    *,
    rng: np.random.Generator,
    eta: float | None = None,
    step_factor: float = 0.05,
    batch: int | None = None,
    inner_factor: float = 1.0,
    tol: float = 1e-3,
    max_calls: float = 1e8,
    max_iter: int = 10**5,
    prox: Prox | None = None,
    record_every: int = 1,
) -> HalpernTrace:
    """Inexact Halpern iteration on the resolvent with a VR-FoRB inner solver (the paper's
    Algorithm 2, monotone Lipschitz case; constants ours):

    v_k ~ J_{eta(F+G)}(u_k)   by :func:`vr_forb_resolvent`, warm-started at v_{k-1},
    u_{k+1} = l_k u_0 + (1 - l_k) v_k,   l_k = 1/(k+2).

    The resolvent is firmly nonexpansive for any eta > 0, so Halpern's O(1/k) holds for the
    fixed-point residual ||u_k - J(u_k)|| = eta ||(F + G)(J(u_k))||; a large eta (default
    0.5 sqrt(n) / L_Q) divides the residual by eta, while each inner problem, with condition
    number about eta L_Q, costs O(n log) calls with variance reduction (batch b = ceil(sqrt(n)),
    snapshot probability b / n, step ``step_factor`` / (eta L_Q + 1), and
    ceil(``inner_factor`` (n / b) log(k + 2)) inner steps at outer step k, enough for the
    summable inner errors the inexact analysis needs). Overall O~(n + sqrt(n) L / eps).
    Residuals are measured at the resolvent point v_k, the method's output.
    """
    if not isinstance(op, FiniteSumOperator):
        raise ValueError(f"op must be a FiniteSumOperator, got {type(op).__name__}")
    n, LQ = op.n, op.mean_square_lipschitz or op.lipschitz
    if LQ is None:
        raise ValueError("inexact_halpern needs an operator that knows L_Q (or L)")
    eta = 0.5 * math.sqrt(n) / LQ if eta is None else eta
    batch = math.ceil(math.sqrt(n)) if batch is None else batch
    if int(batch) != batch or batch < 1:
        raise ValueError(f"the batch size must be a positive integer, got {batch}")
    if not step_factor > 0 or not inner_factor > 0:
        raise ValueError("step_factor and inner_factor must be positive")
    step = step_factor / (eta * LQ + 1.0)
    p = min(1.0, batch / n)
    u0 = _check_common(op, u0, eta, tol, max_calls, max_iter)
    # the forward-backward residual (used only when G is present) with the step 1/L
    residual_step = 1.0 / (op.lipschitz or LQ)
    state = {"v": u0.copy()}

    def advance(k: int, u: np.ndarray) -> np.ndarray:
        iterations = math.ceil(inner_factor * n / batch * math.log(k + 2))
        state["v"] = vr_forb_resolvent(op, u, state["v"], eta, rng=rng, iterations=iterations,
                                       step=step, p=p, batch=batch, prox=prox)
        lam = anchor_weight(k)
        return lam * u0 + (1 - lam) * state["v"]

    return _run("Inexact VR-Halpern", op, u0, residual_step, tol, max_calls, max_iter, prox,
                advance, record_every, output=lambda u: state["v"])
