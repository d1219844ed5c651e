"""Entropic optimal transport through its dual (Lyapunov) potential, and the Sinkhorn algorithm.

Notation of Tang et al. (2024), "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations":
cost ``C`` (n x m), marginals ``r`` (n) and ``c`` (m), inverse regularisation ``eta``, dual
variables ``x`` (n) and ``y`` (m). The primal problem is

    min_P <C, P> + (1/eta) sum_ij P_ij (log P_ij - 1)   subject to P 1 = r, P^T 1 = c,

which is POT's ``ot.sinkhorn(r, c, C, reg=1/eta)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

#: exp(-700) is still a normal float64; beyond it the scaling form of Sinkhorn underflows.
MAX_SCALING_EXPONENT = 700.0


def _logsumexp(A: np.ndarray, axis: int) -> np.ndarray:
    """log sum exp of a finite 2-D array along ``axis``, shifted by the maximum (no overflow).

    The same result as ``scipy.special.logsumexp`` for finite input, without its generic
    overhead, which dominates a log-domain Sinkhorn sweep at these sizes.
    """
    top = A.max(axis=axis, keepdims=True)
    return np.log(np.exp(A - top).sum(axis=axis)) + top.squeeze(axis)


def validate_problem(C: np.ndarray, r: np.ndarray, c: np.ndarray, eta: float) -> None:
    """Raise ``ValueError`` with the reason when ``(C, r, c, eta)`` is not an OT problem."""
    C, r, c = np.asarray(C), np.asarray(r), np.asarray(c)
    if r.ndim != 1 or c.ndim != 1:
        raise ValueError(f"marginals must be 1-D, got shapes {r.shape} and {c.shape}")
    if C.shape != (r.size, c.size):
        raise ValueError(f"cost has shape {C.shape}, marginals need ({r.size}, {c.size})")
    for name, v in (("r", r), ("c", c)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"marginal {name} has non-finite entries")
        if np.any(v <= 0):
            raise ValueError(
                f"marginal {name} must be strictly positive (drop empty bins first); "
                f"min is {v.min():.3g}"
            )
        if abs(v.sum() - 1.0) > 1e-8:
            raise ValueError(f"marginal {name} must sum to 1, sums to {v.sum():.12g}")
    if not np.all(np.isfinite(C)):
        raise ValueError("cost matrix has non-finite entries")
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a positive finite number, got {eta}")


def transport_plan(C: np.ndarray, eta: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The plan of dual variables (Tang et al. 2024, Sec. 3):

    P_ij = exp(eta (-C_ij + x_i + y_j) - 1)
    """
    return np.exp(eta * (x[:, None] + y[None, :] - C) - 1.0)


def lyapunov(C, r, c, eta: float, x: np.ndarray, y: np.ndarray) -> float:
    """The Lyapunov (dual) potential, concave in (x, y) (Tang et al. 2024, Sec. 3):

    f(x, y) = -(1/eta) sum_ij exp(eta (-C_ij + x_i + y_j) - 1) + r.x + c.y
    """
    return float(-transport_plan(C, eta, x, y).sum() / eta + r @ x + c @ y)


def lyapunov_gradient(P: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """grad f = (r - P 1, c - P^T 1): the marginal violations (Tang et al. 2024, Sec. 3)."""
    return np.concatenate([r - P.sum(axis=1), c - P.sum(axis=0)])


def lyapunov_hessian(P: np.ndarray, eta: float) -> np.ndarray:
    """Dense Hessian of f: -eta [[diag(P 1), P], [P^T, diag(P^T 1)]] (Tang et al. 2024, Sec. 3).

    It is negative semi-definite with the null direction (1, -1); shown for tests and small
    problems, the solvers never form it densely.
    """
    n, m = P.shape
    H = np.zeros((n + m, n + m))
    H[:n, :n] = np.diag(P.sum(axis=1))
    H[n:, n:] = np.diag(P.sum(axis=0))
    H[:n, n:] = P
    H[n:, :n] = P.T
    return -eta * H


def marginal_error(P: np.ndarray, r: np.ndarray, c: np.ndarray) -> float:
    """||P 1 - r||_1 + ||P^T 1 - c||_1, the stopping criterion of every solver here."""
    return float(np.abs(P.sum(axis=1) - r).sum() + np.abs(P.sum(axis=0) - c).sum())


def transport_cost(P: np.ndarray, C: np.ndarray) -> float:
    """<C, P>, the transport cost of a plan."""
    return float(np.sum(P * C))


@dataclass
class OTTrace:
    """What a solver returns: the final duals and plan, and one row per outer iteration."""

    x: np.ndarray
    y: np.ndarray
    plan: np.ndarray
    errors: list[float] = field(default_factory=list)  # marginal error after each iteration
    seconds: list[float] = field(default_factory=list)  # wall time since the start
    kinds: list[str] = field(default_factory=list)  # "sinkhorn" or "newton" per iteration
    cg_iterations: list[int] = field(default_factory=list)  # per Newton step
    step_sizes: list[float] = field(default_factory=list)  # per Newton step
    kept_fraction: float = 1.0  # fraction of P's entries the Newton Hessian kept
    converged: bool = False

    @property
    def iterations(self) -> int:
        """Total outer iterations: Sinkhorn sweeps plus Newton steps."""
        return len(self.errors)

    @property
    def n_sinkhorn(self) -> int:
        return self.kinds.count("sinkhorn")

    @property
    def n_newton(self) -> int:
        return self.kinds.count("newton")

    @property
    def wall_seconds(self) -> float:
        return self.seconds[-1] if self.seconds else 0.0


def sinkhorn(
    C: np.ndarray,
    r: np.ndarray,
    c: np.ndarray,
    eta: float,
    *,
    tol: float = 1e-9,
    max_iter: int = 100_000,
    x0: np.ndarray | None = None,
    y0: np.ndarray | None = None,
    method: str = "auto",
) -> OTTrace:
    """Sinkhorn's matrix scaling as exact block-coordinate ascent on f (Tang et al. 2024, Sec. 3).

    One iteration is a row update (x so that P 1 = r) then a column update (y so that
    P^T 1 = c). It stops when the marginal error is at most ``tol`` (``tol=0`` runs
    ``max_iter`` sweeps). ``method="scaling"`` works with u = exp(eta x - 1/2) in float64 (fast,
    two matrix-vector products a sweep); ``"log"`` uses log-sum-exp updates and never
    underflows; ``"auto"`` picks scaling when eta * max|C| stays below 700.
    """
    C, r, c = (np.asarray(a, dtype=np.float64) for a in (C, r, c))
    validate_problem(C, r, c, eta)
    if tol < 0 or max_iter < 0:
        raise ValueError(f"tol and max_iter must be non-negative, got {tol}, {max_iter}")
    if method not in ("auto", "scaling", "log"):
        raise ValueError(f"method must be 'auto', 'scaling' or 'log', got {method!r}")
    n, m = C.shape
    x = np.zeros(n) if x0 is None else np.array(x0, dtype=np.float64)
    y = np.zeros(m) if y0 is None else np.array(y0, dtype=np.float64)
    if method == "auto":
        spread = eta * (np.abs(C).max() + np.abs(x).max() + np.abs(y).max())
        method = "scaling" if spread < MAX_SCALING_EXPONENT else "log"
    trace = OTTrace(x=x, y=y, plan=np.empty((0, 0)))
    start = time.perf_counter()
    if method == "scaling":
        K = np.exp(-eta * C)
        u, v = np.exp(eta * x - 0.5), np.exp(eta * y - 0.5)
        for _ in range(max_iter):
            Kv = K @ v
            u = r / Kv
            KTu = K.T @ u
            v = c / KTu
            # After the column update the columns are exact; the row error needs K v once more,
            # which the next sweep needs anyway.
            Kv = K @ v
            err = float(np.abs(u * Kv - r).sum())
            trace.errors.append(err)
            trace.seconds.append(time.perf_counter() - start)
            trace.kinds.append("sinkhorn")
            if err <= tol:
                break
        scalings = np.concatenate([u, v])
        if np.any(scalings == 0) or not np.all(np.isfinite(scalings)):
            raise FloatingPointError("scaling Sinkhorn under/overflowed: use method='log'")
        x, y = (np.log(u) + 0.5) / eta, (np.log(v) + 0.5) / eta
    else:
        log_r, log_c = np.log(r), np.log(c)
        # Row sums of P(x, y) are exp(eta x_i + lse_i) with lse_i = LSE_j(eta (y_j - C_ij) - 1):
        # the same log-sum-exp gives the row error of the current iterate and the next x update.
        lse_rows = _logsumexp(eta * (y[None, :] - C) - 1.0, axis=1)
        for _ in range(max_iter):
            x = (log_r - lse_rows) / eta  # rows exact
            y = (log_c - _logsumexp(eta * (x[:, None] - C) - 1.0, axis=0)) / eta  # columns exact
            lse_rows = _logsumexp(eta * (y[None, :] - C) - 1.0, axis=1)
            err = float(np.abs(np.exp(eta * x + lse_rows) - r).sum())
            trace.errors.append(err)
            trace.seconds.append(time.perf_counter() - start)
            trace.kinds.append("sinkhorn")
            if err <= tol:
                break
    trace.x, trace.y = x, y
    trace.plan = transport_plan(C, eta, x, y)
    trace.converged = bool(trace.errors) and trace.errors[-1] <= tol
    return trace
