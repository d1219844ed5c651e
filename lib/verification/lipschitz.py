"""Certified l_inf local Lipschitz constants of ReLU networks (Shi et al., NeurIPS 2022).

For a scalar ReLU network ``f`` and the box ``B = {x : ||x - x0||_inf <= eps}``, the local
Lipschitz constant in the l_inf norm is the largest l_1 norm of a Clarke gradient over ``B``::

    L(f, B) = max_{x in B} max_{g in dC f(x)} ||g||_1.

The gradient is computed by a *backward graph* (the chain rule; the paper's Figure 1)::

    u_{L-1} = W_L^T,    v_i = sigma'(z_i) * u_i,    u_{i-1} = W_i^T v_i,    L = ||u_0||_1,

whose inputs ``z_i`` come from the forward graph; for ReLU the Clarke gradient ``sigma'(z)`` is
1 for ``z > 0``, 0 for ``z < 0`` and the interval [0, 1] at 0. This module bounds ``L``:

* :func:`lbp_lipschitz_bound`, the paper's method: linear bound propagation through the backward
  graph with its relaxations of the Clarke-gradient product and of the absolute value;
* :func:`interval_lipschitz_bound`, interval arithmetic on the same graph (FastLip-style);
* :func:`naive_lipschitz_bound`, the product of the layers' l_inf operator norms (global);
* :func:`exact_lipschitz_milp`, the exact value by mixed-integer programming (LipMIP-style);
* :func:`sampled_lipschitz_lower_bound`, the largest gradient norm at random points (a lower
  bound, not a certificate);
* :func:`bab_lipschitz_bound`, branch and bound on forward-graph neurons (the paper's BaB).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix

from lib.util.native_output import silence_native_output
from lib.verification.bounds import (
    PreactivationBounds,
    ReluNet,
    Splits,
    _check_box,
    crown_preactivation_bounds,
)


@dataclass
class GradientBounds:
    """Bounds ``lower[i] <= u_i <= upper[i]`` on the backward signals, ``i = 0 .. L-1``.

    ``u_i`` is the gradient of ``f`` with respect to the post-activation ``a_i`` (``u_0``: the
    input gradient).
    """

    lower: list[np.ndarray]
    upper: list[np.ndarray]


def _status(bounds: PreactivationBounds) -> list[np.ndarray]:
    return [bounds.status(i) for i in range(len(bounds.lower))]


def _check_bounds(net: ReluNet, bounds: PreactivationBounds) -> None:
    sizes = [lo.shape[0] for lo in bounds.lower]
    if sizes != net.hidden_sizes:
        raise ValueError(f"bounds for hidden sizes {sizes}, network has {net.hidden_sizes}")


def interval_gradient_bounds(net: ReluNet, bounds: PreactivationBounds) -> GradientBounds:
    """Interval arithmetic on the backward graph (the FastLip / RecurJac-style baseline).

    An unstable neuron multiplies its signal ``u`` by some ``sigma' in [0, 1]``, so its output
    lies in ``[min(l_u, 0), max(u_u, 0)]``; every other step is an exact interval product.
    """
    _check_bounds(net, bounds)
    status = _status(bounds)
    n_hidden = len(net.hidden_sizes)
    lo = up = net.weights[-1][0].copy()
    lowers, uppers = [None] * (n_hidden + 1), [None] * (n_hidden + 1)
    lowers[n_hidden], uppers[n_hidden] = lo, up
    for i in range(n_hidden - 1, -1, -1):
        st = status[i]
        v_lo = np.where(st == 1, lo, np.where(st == 0, np.minimum(lo, 0), 0.0))
        v_up = np.where(st == 1, up, np.where(st == 0, np.maximum(up, 0), 0.0))
        w = net.weights[i]
        mid, rad = (v_lo + v_up) / 2, (v_up - v_lo) / 2
        lo, up = w.T @ mid - np.abs(w.T) @ rad, w.T @ mid + np.abs(w.T) @ rad
        lowers[i], uppers[i] = lo, up
    return GradientBounds(lowers, uppers)


def interval_lipschitz_bound(net: ReluNet, bounds: PreactivationBounds) -> float:
    """``sum_k max(|l_k|, |u_k|)`` over the interval bounds of the input gradient ``u_0``."""
    g = interval_gradient_bounds(net, bounds)
    return float(np.maximum(np.abs(g.lower[0]), np.abs(g.upper[0])).sum())


def _product_relaxation(lo: np.ndarray, up: np.ndarray, recurjac: bool):
    """Linear bounds of ``v = sigma'(z) u`` for an unstable ``z`` and ``u in [lo, up]``.

    Returns ``(a_U, c_U, a_L, c_L)`` with ``a_L u + c_L <= v <= a_U u + c_U``. The paper's
    optimal relaxation (its Figures 2 and 3) has no term in ``z``: since ``sigma'(0)`` is the
    whole interval [0, 1], ``v`` fills ``[min(u, 0), max(u, 0)]`` and the tightest linear bounds are
    those of ``max(u, 0)`` from above and of ``min(u, 0)`` from below; when ``u`` changes sign
    both are chords. ``recurjac=True`` replaces the chords of sign-changing ``u`` by the
    constants ``up`` and ``lo``, the weaker relaxation the paper identifies in RecurJac.
    """
    pos, neg = lo >= 0, up <= 0
    mixed = ~(pos | neg)
    width = np.where(mixed, up - lo, 1.0)
    if recurjac:
        a_u = np.where(pos, 1.0, 0.0)
        c_u = np.where(mixed, up, 0.0)
        a_l = np.where(neg, 1.0, 0.0)
        c_l = np.where(mixed, lo, 0.0)
    else:
        a_u = np.where(pos, 1.0, np.where(mixed, up / width, 0.0))
        c_u = np.where(mixed, -up * lo / width, 0.0)
        a_l = np.where(neg, 1.0, np.where(mixed, -lo / width, 0.0))
        c_l = np.where(mixed, lo * up / width, 0.0)
    return a_u, c_u, a_l, c_l


def _backsubstitute(
    net: ReluNet,
    status: list[np.ndarray],
    gbounds: GradientBounds,
    lam: np.ndarray,
    const: np.ndarray,
    start: int,
    upper: bool,
    recurjac: bool,
) -> np.ndarray:
    """Bound ``lam @ u_start + const`` (rows of ``lam``) through the backward graph.

    Works from ``u_start`` towards the output: ``u_i = W_{i+1}^T v_{i+1}``, then each
    ``v_{i+1}`` is replaced by its exact value (stable neurons) or by the linear relaxation of
    the Clarke-gradient product (unstable neurons), choosing the upper or lower relaxation by
    the sign of its coefficient. ``u_{L-1} = W_L^T`` is a constant, where the bound ends.
    """
    n_hidden = len(status)
    for i in range(start, n_hidden):
        lam = lam @ net.weights[i].T  # coefficients on v_{i+1} (hidden layer i, 0-based)
        st = status[i]
        a_u, c_u, a_l, c_l = _product_relaxation(gbounds.lower[i + 1], gbounds.upper[i + 1],
                                                 recurjac)
        a_u = np.where(st == 1, 1.0, np.where(st == 0, a_u, 0.0))
        a_l = np.where(st == 1, 1.0, np.where(st == 0, a_l, 0.0))
        c_u = np.where(st == 0, c_u, 0.0)
        c_l = np.where(st == 0, c_l, 0.0)
        pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
        if upper:
            const = const + pos @ c_u + neg @ c_l
            lam = pos * a_u + neg * a_l
        else:
            const = const + pos @ c_l + neg @ c_u
            lam = pos * a_l + neg * a_u
    return lam @ net.weights[-1][0] + const


def lbp_gradient_bounds(
    net: ReluNet, bounds: PreactivationBounds, recurjac: bool = False
) -> GradientBounds:
    """Bounds on every backward signal ``u_i`` by linear bound propagation (the paper's framework).

    Layer by layer from the output, each ``u_i`` is bounded by back-substitution through the
    relaxations of the later layers, which use the bounds already found; the result is
    intersected with interval arithmetic (both are sound).
    """
    ibp = interval_gradient_bounds(net, bounds)
    status = _status(bounds)
    n_hidden = len(status)
    g = GradientBounds(list(ibp.lower), list(ibp.upper))
    for i in range(n_hidden - 1, -1, -1):
        eye = np.eye(g.lower[i].shape[0])
        zero = np.zeros(eye.shape[0])
        lo = _backsubstitute(net, status, g, eye, zero, i, False, recurjac)
        up = _backsubstitute(net, status, g, eye, zero, i, True, recurjac)
        g.lower[i] = np.maximum(lo, ibp.lower[i])
        g.upper[i] = np.minimum(up, ibp.upper[i])
    return g


def abs_upper_relaxation(lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tightest linear upper bound ``|t| <= a t + c`` on ``[lo, up]`` (the chord).

    For ``lo < 0 < up`` it is the line through ``(lo, -lo)`` and ``(up, up)``:
    ``a = (up + lo) / (up - lo)``, ``c = -2 up lo / (up - lo)``; otherwise ``|t|`` is linear.
    """
    pos, neg = lo >= 0, up <= 0
    mixed = ~(pos | neg)
    width = np.where(mixed, up - lo, 1.0)
    a = np.where(pos, 1.0, np.where(neg, -1.0, (up + lo) / width))
    c = np.where(mixed, -2 * up * lo / width, 0.0)
    return a, c


def lbp_lipschitz_bound(
    net: ReluNet, bounds: PreactivationBounds, recurjac: bool = False
) -> float:
    """Upper bound on the l_inf local Lipschitz constant by linear bound propagation.

    The paper's framework (its Figure 1): the norm ``||u_0||_1 = sum_k |u_0k|`` is relaxed from
    above by the chord of each ``|.|`` (:func:`abs_upper_relaxation`, the paper's Figure 5),
    using the bounds of :func:`lbp_gradient_bounds`, and the resulting linear function of
    ``u_0`` is propagated back through the backward graph to the constant ``u_{L-1}``.
    Relaxing the norm jointly keeps the correlation between input-gradient coordinates that
    an elementwise bound loses.
    """
    g = lbp_gradient_bounds(net, bounds, recurjac)
    a, c = abs_upper_relaxation(g.lower[0], g.upper[0])
    value = _backsubstitute(net, _status(bounds), g, a[None, :], np.array([c.sum()]), 0, True,
                            recurjac)
    return float(value[0])


def naive_lipschitz_bound(net: ReluNet) -> float:
    """The global bound ``prod_i ||W_i||_{inf -> inf}`` (max absolute row sums)."""
    return float(np.prod([np.abs(w).sum(axis=1).max() for w in net.weights]))


def sampled_lipschitz_lower_bound(
    net: ReluNet, x0: np.ndarray, eps: float, n: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """``max ||grad f(x)||_1`` over ``n`` uniform points of the box (plus its centre).

    Every sampled gradient is an element of the Clarke Jacobian at a point of the box, so the
    maximum is a lower bound on the local Lipschitz constant (it is what sampling estimates
    such as CLEVER build on). Returns the value and the point that attains it.
    """
    x0 = _check_box(net, x0, eps)
    if n < 1:
        raise ValueError(f"n, the number of sampled points, must be >= 1, got {n}")
    x = np.vstack([x0, x0 + eps * rng.uniform(-1, 1, size=(n, x0.shape[0]))])
    norms = np.abs(net.gradient(x)).sum(axis=1)
    k = int(np.argmax(norms))
    return float(norms[k]), x[k]


@dataclass
class MilpResult:
    """Outcome of :func:`exact_lipschitz_milp`: the value, a proven upper bound, the maximiser."""

    value: float
    upper_bound: float
    optimal: bool
    x: np.ndarray
    seconds: float
    n_binaries: int


def exact_lipschitz_milp(
    net: ReluNet,
    x0: np.ndarray,
    eps: float,
    bounds: PreactivationBounds | None = None,
    time_limit: float | None = None,
) -> MilpResult:
    """The exact local Lipschitz constant by mixed-integer linear programming (LipMIP-style).

    Variables: the input ``x`` in the box; per hidden layer ``z_i``, ``a_i`` and, for each
    unstable neuron, a binary ``d`` that is both the ReLU's phase and its Clarke gradient
    (the big-M encoding ``a >= z, a >= 0, a <= z - l (1 - d), a <= u d`` lets ``d`` be 0 or 1
    at ``z = 0``, exactly the Clarke gradient's extreme points); the backward graph's
    ``v = d u`` is linearised exactly with the bounds of ``u``; and ``|u_0k|`` is maximised
    with one sign binary per input coordinate whose sign is not fixed. Solved by HiGHS
    (``scipy.optimize.milp``). With a ``time_limit`` the result may stop short of optimal;
    ``upper_bound`` is then HiGHS's dual bound.
    """
    start = time.perf_counter()
    x0 = _check_box(net, x0, eps)
    if bounds is None:
        bounds = crown_preactivation_bounds(net, x0, eps)
    _check_bounds(net, bounds)
    if bounds.infeasible:
        raise ValueError("the pre-activation bounds are empty (infeasible splits)")
    gb = lbp_gradient_bounds(net, bounds)
    status = _status(bounds)
    # Widen every bound by a hair (sound: the feasible set only grows) so that a neuron whose
    # interval is narrower than HiGHS's feasibility tolerance cannot make the model infeasible.
    widen = lambda a, sign: a + sign * 1e-5 * (1.0 + np.abs(a))  # noqa: E731
    bounds = PreactivationBounds([widen(a, -1) for a in bounds.lower],
                                 [widen(a, 1) for a in bounds.upper])
    gb = GradientBounds([widen(a, -1) for a in gb.lower], [widen(a, 1) for a in gb.upper])
    sizes = net.hidden_sizes
    n_hidden = len(sizes)
    d = net.input_dim

    # variable layout
    index = 0

    def block(n: int) -> np.ndarray:
        nonlocal index
        out = np.arange(index, index + n)
        index += n
        return out

    xs = block(d)
    zs = [block(n) for n in sizes]
    acts = [block(n) for n in sizes]
    phases = [block(n) for n in sizes]  # binary where unstable, fixed 0/1 otherwise
    vs = [block(n) for n in sizes]  # v_i = phase_i * u_i
    ts = block(d)  # t_k = |u_0k|
    signs = block(d)
    n_var = index
    lb, ub = np.full(n_var, -np.inf), np.full(n_var, np.inf)
    integrality = np.zeros(n_var)
    lb[xs], ub[xs] = x0 - eps, x0 + eps
    rows: list[tuple[dict[int, float], float, float]] = []

    def add(coef: dict[int, float], lo: float, hi: float) -> None:
        rows.append((coef, lo, hi))

    for i in range(n_hidden):
        w, b = net.weights[i], net.biases[i]
        prev = xs if i == 0 else acts[i - 1]
        l_z, u_z = bounds.lower[i], bounds.upper[i]
        lb[zs[i]], ub[zs[i]] = l_z, u_z
        for j in range(sizes[i]):
            coef = {int(prev[k]): -float(w[j, k]) for k in range(w.shape[1]) if w[j, k] != 0}
            coef[int(zs[i][j])] = 1.0
            add(coef, float(b[j]), float(b[j]))  # z = W a + b
            a, z, p = int(acts[i][j]), int(zs[i][j]), int(phases[i][j])
            if status[i][j] == 1:
                lb[p] = ub[p] = 1.0
                add({a: 1.0, z: -1.0}, 0.0, 0.0)
            elif status[i][j] == -1:
                lb[p] = ub[p] = 0.0
                lb[a] = ub[a] = 0.0
            else:
                lb[p], ub[p], integrality[p] = 0.0, 1.0, 1
                lb[a], ub[a] = 0.0, max(u_z[j], 0.0)
                add({a: 1.0, z: -1.0}, 0.0, np.inf)  # a >= z
                add({a: 1.0, z: -1.0, p: -float(l_z[j])}, -np.inf, -float(l_z[j]))
                add({a: 1.0, p: -float(u_z[j])}, -np.inf, 0.0)  # a <= u d

    # backward graph: u_i = W_{i+1}^T v_{i+1} (u_{L-1} constant), v_i = d_i u_i
    for i in range(n_hidden - 1, -1, -1):
        l_u, u_u = gb.lower[i + 1], gb.upper[i + 1]
        lb[vs[i]] = np.minimum(l_u, 0.0)
        ub[vs[i]] = np.maximum(u_u, 0.0)
        for j in range(sizes[i]):
            v, p = int(vs[i][j]), int(phases[i][j])
            if i == n_hidden - 1:
                uc = float(net.weights[-1][0, j])
                add({v: 1.0, p: -uc}, 0.0, 0.0)  # v = d u with u constant
                continue
            w_next = net.weights[i + 1]  # u_i[j] = sum_m w_next[m, j] v_{i+1}[m]
            u_coef = {int(vs[i + 1][m]): float(w_next[m, j]) for m in range(w_next.shape[0])
                      if w_next[m, j] != 0}
            lo_j, hi_j = float(l_u[j]), float(u_u[j])
            # v <= u - lo (1 - d),  v >= u - hi (1 - d),  lo d <= v <= hi d
            c1 = {k: -c for k, c in u_coef.items()}
            c1[v] = c1.get(v, 0.0) + 1.0
            c1[p] = -lo_j
            add(c1, -np.inf, -lo_j)
            c2 = {k: -c for k, c in u_coef.items()}
            c2[v] = c2.get(v, 0.0) + 1.0
            c2[p] = -hi_j
            add(c2, -hi_j, np.inf)
            add({v: 1.0, p: -hi_j}, -np.inf, 0.0)
            add({v: 1.0, p: -lo_j}, 0.0, np.inf)

    l0, u0 = gb.lower[0], gb.upper[0]
    w1 = net.weights[0]
    for k in range(d):
        u_coef = {int(vs[0][m]): float(w1[m, k]) for m in range(w1.shape[0]) if w1[m, k] != 0}
        t, s = int(ts[k]), int(signs[k])
        big = 2.0 * max(abs(l0[k]), abs(u0[k]))
        lb[t], ub[t] = 0.0, max(abs(l0[k]), abs(u0[k]))
        if l0[k] >= 0 or u0[k] <= 0:
            sign = 1.0 if l0[k] >= 0 else -1.0
            lb[s] = ub[s] = 0.0
            c = {m: -sign * c for m, c in u_coef.items()}
            c[t] = 1.0
            add(c, 0.0, 0.0)
            continue
        lb[s], ub[s], integrality[s] = 0.0, 1.0, 1
        c = {m: -c for m, c in u_coef.items()}  # t <= u + big (1 - s)
        c[t], c[s] = 1.0, big
        add(c, -np.inf, big)
        c = dict(u_coef)  # t <= -u + big s
        c[t], c[s] = 1.0, -big
        add(c, -np.inf, 0.0)

    row_idx = [r for r, (coef, _, _) in enumerate(rows) for _ in coef]
    col_idx = [k for coef, _, _ in rows for k in coef]
    vals = [c for coef, _, _ in rows for c in coef.values()]
    A = coo_matrix((vals, (row_idx, col_idx)), shape=(len(rows), n_var))
    lo_rows = np.array([lo_r for _, lo_r, _ in rows])
    hi_rows = np.array([hi_r for _, _, hi_r in rows])
    objective = np.zeros(n_var)
    objective[ts] = -1.0
    options = {"disp": False, "mip_rel_gap": 1e-9}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    with silence_native_output():
        res = milp(objective, constraints=LinearConstraint(A.tocsr(), lo_rows, hi_rows),
                   integrality=integrality, bounds=Bounds(lb, ub), options=options)
    if res.x is None:
        raise RuntimeError(f"the MILP found no solution: {res.message}")
    value = -float(res.fun)
    dual = getattr(res, "mip_dual_bound", None)
    upper = -float(dual) if dual is not None and np.isfinite(dual) else value
    return MilpResult(value, max(upper, value), res.status == 0, res.x[xs].copy(),
                      time.perf_counter() - start, int(integrality.sum()))


def _pattern_feasible(net: ReluNet, x0: np.ndarray, eps: float, splits: Splits,
                      status: list[np.ndarray]) -> bool:
    """Whether some ``x`` in the box realises every split sign, for a fully decided pattern.

    With every neuron's phase fixed, each pre-activation is affine in ``x``, so the split
    constraints ``sign * z_ij(x) >= 0`` make one linear feasibility problem.
    """
    d = net.input_dim
    lin, off = np.eye(d), np.zeros(d)  # a_{i-1} = lin x + off
    rows, rhs = [], []
    for i, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1])):
        z_lin, z_off = w @ lin, w @ off + b
        for (li, j), sign in splits.items():
            if li == i:
                rows.append(-sign * z_lin[j])  # sign * z >= 0  <=>  -sign * z_lin x <= sign * off
                rhs.append(sign * z_off[j])
        on = (status[i] == 1).astype(float)
        lin, off = z_lin * on[:, None], z_off * on
    if not rows:
        return True
    res = linprog(np.zeros(d), A_ub=np.array(rows), b_ub=np.array(rhs),
                  bounds=list(zip(x0 - eps, x0 + eps)), method="highs")
    return res.status == 0


@dataclass
class BabResult:
    """Outcome of :func:`bab_lipschitz_bound`.

    ``upper`` is a certified upper bound at the end; ``lower`` the best value known to be
    attained (a decided, feasible branch, or the ``lower_bound`` passed in); ``history`` the
    certified upper bound after each branching step (non-increasing).
    """

    upper: float
    lower: float
    n_branches: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False


def _domain_bound(net: ReluNet, x0: np.ndarray, eps: float, splits: Splits):
    bounds = crown_preactivation_bounds(net, x0, eps, splits)
    if bounds.infeasible:
        return -np.inf, bounds
    return lbp_lipschitz_bound(net, bounds), bounds


def _pick_neuron(net: ReluNet, bounds: PreactivationBounds) -> tuple[int, int] | None:
    """The unstable neuron to split: earliest layer first, then the largest relaxation area.

    The score of neuron ``j`` of layer ``i`` is ``max|u| * (-l u) / (u - l)``: how far the
    backward signal can reach times the height of the forward ReLU triangle.
    """
    g = interval_gradient_bounds(net, bounds)
    for i in range(len(bounds.lower)):
        lo, up = bounds.lower[i], bounds.upper[i]
        unstable = (lo < 0) & (up > 0)
        if not unstable.any():
            continue
        reach = np.maximum(np.abs(g.lower[i + 1]), np.abs(g.upper[i + 1]))
        area = np.where(unstable, -lo * up / np.where(unstable, up - lo, 1.0), 0.0)
        score = np.where(unstable, reach * area + 1e-12, -1.0)
        return i, int(np.argmax(score))
    return None


def bab_lipschitz_bound(
    net: ReluNet,
    x0: np.ndarray,
    eps: float,
    max_branches: int = 200,
    lower_bound: float = 0.0,
    rtol: float = 1e-6,
) -> BabResult:
    """Branch and bound on unstable forward-graph neurons (the paper's BaB).

    A domain is a set of splits ``z_ij >= 0`` / ``z_ij <= 0``; its bound is the forward CROWN
    bounds under the splits followed by :func:`lbp_lipschitz_bound`, in which a split neuron's
    Clarke gradient is fixed (0 or 1). The domain with the largest bound is split first, so
    the maximum over open domains is a certified upper bound that never increases. A domain
    with no unstable neuron left has a constant gradient; if a linear program finds an input
    realising its pattern, its value is attained (a lower bound), otherwise it is dropped.
    The search stops after ``max_branches`` splits or when the upper bound is within ``rtol``
    of the best lower bound (then it is the exact local Lipschitz constant).
    """
    start = time.perf_counter()
    x0 = _check_box(net, x0, eps)
    if max_branches < 0:
        raise ValueError(f"max_branches must be >= 0, got {max_branches}")
    value, bounds = _domain_bound(net, x0, eps, {})
    heap = [(-value, 0, {}, bounds)]
    counter, branches, lower = 1, 0, float(lower_bound)
    history = [value]
    converged = False
    while heap:
        neg_ub, _, splits, bounds = heap[0]
        upper = -neg_ub
        if upper <= lower * (1 + rtol):
            converged = True
            break
        neuron = _pick_neuron(net, bounds)
        if neuron is None:  # fully decided: exact value if the pattern is realisable
            heapq.heappop(heap)
            status = _status(bounds)
            if _pattern_feasible(net, x0, eps, splits, status):
                lower = max(lower, upper)
            continue
        if branches >= max_branches:
            break
        heapq.heappop(heap)
        branches += 1
        for sign in (1, -1):
            child = {**splits, neuron: sign}
            v, b = _domain_bound(net, x0, eps, child)
            if v > -np.inf:
                heapq.heappush(heap, (-min(v, upper), counter, child, b))
                counter += 1
        history.append(max(-heap[0][0], lower) if heap else lower)
    final = max(-heap[0][0], lower) if heap else lower
    if not heap:
        converged = True
    return BabResult(final, lower, branches, history, time.perf_counter() - start, converged)
