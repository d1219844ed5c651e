"""A ReLU network as mixed-integer linear constraints: a tiny model builder for
:func:`scipy.optimize.milp` (HiGHS) and the big-M encoding with interval and LP-relaxation
bounds on every pre-activation (Fischetti and Jo, 2018; used by Neur2RO, Sec. 4)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from lib.robust.value_network import Layer
from lib.util.native_output import silence_native_output


class MilpModel:
    """A tiny builder for :func:`scipy.optimize.milp`: variables with bounds and integrality,
    sparse linear rows ``lo <= a^T v <= hi``, and a linear objective to minimise."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.cost: list[float] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def add_vars(self, count: int, lb: np.ndarray | float, ub: np.ndarray | float,
                 integer: bool = False) -> np.ndarray:
        lb = np.broadcast_to(np.asarray(lb, dtype=float), (count,))
        ub = np.broadcast_to(np.asarray(ub, dtype=float), (count,))
        start = len(self.lb)
        self.lb += lb.tolist()
        self.ub += ub.tolist()
        self.integer += [int(integer)] * count
        self.cost += [0.0] * count
        return np.arange(start, start + count)

    def add_row(self, coef: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coef, lo, hi))

    def solve(self, mip_rel_gap: float = 1e-7, time_limit: float | None = None):
        n_var = len(self.lb)
        r = [i for i, (c, _, _) in enumerate(self.rows) for _ in c]
        k = [j for c, _, _ in self.rows for j in c]
        v = [a for c, _, _ in self.rows for a in c.values()]
        A = coo_matrix((v, (r, k)), shape=(len(self.rows), n_var)).tocsr()
        lo = np.array([row[1] for row in self.rows])
        hi = np.array([row[2] for row in self.rows])
        options = {"disp": False, "mip_rel_gap": mip_rel_gap}
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
        args = dict(integrality=np.array(self.integer),
                    bounds=Bounds(np.array(self.lb), np.array(self.ub)),
                    constraints=LinearConstraint(A, lo, hi))
        with silence_native_output():  # HiGHS prints from C++ even with disp=False
            res = milp(np.array(self.cost), options=options, **args)
            if res.status == 4:  # HiGHS "Solve error": seen on a few of these small big-M
                # models with presolve on, or with it off; the other setting then solves them
                options["presolve"] = False
                res = milp(np.array(self.cost), options=options, **args)
        if res.x is None:
            raise RuntimeError(f"the MILP found no solution: {res.message}")
        return res


def interval_bounds(W: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``W z + b`` over the box ``lo <= z <= hi`` (interval arithmetic)."""
    Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
    return Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b


def _relu_big_m(model: MilpModel, h: int, pre: dict[int, float], bias: float,
                lower: float, upper: float) -> None:
    """``h = max(0, a)`` for the pre-activation ``a = pre^T v + bias`` with ``lower < 0 <
    upper``: one binary ``delta`` (1 when the unit is active) and the four big-M rows

        h >= a,   h >= 0 (variable bound),   h <= a - lower (1 - delta),   h <= upper delta.
    """
    delta = int(model.add_vars(1, 0, 1, integer=True)[0])
    row = {j: -a for j, a in pre.items()}
    row[h] = 1.0
    model.add_row(dict(row), bias, np.inf)  # h - a >= 0
    row_m = dict(row)
    row_m[delta] = -lower
    model.add_row(row_m, -np.inf, bias - lower)  # h - a - lower delta <= -lower
    model.add_row({h: 1.0, delta: -upper}, -np.inf, 0.0)  # h <= upper delta


def _lp_ranges(model: MilpModel, W: np.ndarray, b: np.ndarray, z: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``W z + b`` over the LP relaxation of ``model`` (binaries relaxed to [0, 1]):
    valid for every integer-feasible point, and usually much tighter than interval arithmetic
    because they see the budget or uncertainty-set rows and the coupling between units."""
    n_var = len(model.lb)
    r = [i for i, (c, _, _) in enumerate(model.rows) for _ in c]
    k = [j for c, _, _ in model.rows for j in c]
    v = [a for c, _, _ in model.rows for a in c.values()]
    A = coo_matrix((v, (r, k)), shape=(len(model.rows), n_var)).tocsr()
    cons = LinearConstraint(A, [row[1] for row in model.rows], [row[2] for row in model.rows])
    bounds = Bounds(np.array(model.lb), np.array(model.ub))
    lo, hi = np.full(len(b), -np.inf), np.full(len(b), np.inf)
    for u in range(len(b)):
        c = np.zeros(n_var)
        c[z] = W[u]
        for sign in (1.0, -1.0):
            with silence_native_output():
                res = milp(sign * c, bounds=bounds, constraints=cons, options={"disp": False})
            if res.status == 0:
                value = sign * float(res.fun) + b[u]
                if sign > 0:
                    lo[u] = value
                else:
                    hi[u] = value
    pad = 1e-7 * (1 + np.abs(np.concatenate([lo, hi])).max(initial=0))  # LP tolerance
    return lo - pad, hi + pad


def encode_mlp(model: MilpModel, inputs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               layers: list[Layer], tighten: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add ``z_L = MLP(z_0)`` to ``model`` (ReLU after every layer but the last).

    ``inputs`` are the variable indices of ``z_0`` with bounds ``lo, hi``. Each hidden unit's
    pre-activation bounds come from interval arithmetic on the previous layer's bounds,
    intersected (``tighten``) with the range over the LP relaxation of the model built so far.
    A unit that is always off is fixed to 0, one that is always on is linear, and an unstable
    one gets the big-M encoding of :func:`_relu_big_m` with those bounds as its ``M``. Returns
    the output variable indices and their bounds.
    """
    z, zlo, zhi = np.asarray(inputs), np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    for i, (W, b) in enumerate(layers):
        plo, phi = interval_bounds(W, b, zlo, zhi)
        if tighten:
            llo, lhi = _lp_ranges(model, W, b, z)
            plo, phi = np.maximum(plo, llo), np.minimum(phi, lhi)
        last = i == len(layers) - 1
        if last:
            out = model.add_vars(len(b), plo, phi)
            for u in range(len(b)):
                row = {int(j): -float(a) for j, a in zip(z, W[u]) if a != 0}
                row[int(out[u])] = 1.0
                model.add_row(row, float(b[u]), float(b[u]))
            z, zlo, zhi = out, plo, phi
            break
        hlo, hhi = np.maximum(plo, 0), np.maximum(phi, 0)
        out = model.add_vars(len(b), hlo, hhi)
        for u in range(len(b)):
            pre = {int(j): float(a) for j, a in zip(z, W[u]) if a != 0}
            if phi[u] <= 0:
                continue  # always inactive: bounds already fix h = 0
            if plo[u] >= 0:
                row = {j: -a for j, a in pre.items()}
                row[int(out[u])] = 1.0
                model.add_row(row, float(b[u]), float(b[u]))  # always active: h = a
                continue
            _relu_big_m(model, int(out[u]), pre, float(b[u]), float(plo[u]), float(phi[u]))
        z, zlo, zhi = out, hlo, hhi
    return z, zlo, zhi
