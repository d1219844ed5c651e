"""Source iteration and diffusion synthetic acceleration (DSA) for 1-D slab S_N transport.

The one-group slab problem with isotropic scattering (total cross-section 1, scattering ratio
``c``, uniform cells of optical width ``h``, vacuum boundaries) is

    mu d psi/dx + psi = (c / 2) phi + q / 2,      phi = int_{-1}^{1} psi dmu,

discretised with a Gauss-Legendre S_N quadrature and diamond differencing (DD). *Source
iteration* (SI) sweeps the transport operator with the previous scalar flux in the scattering
source; its Fourier error factor is ``omega_SI(lam) = c int_0^1 dmu / (1 + lam^2 mu^2) = c
arctan(lam) / lam`` (spectral radius ``c``, at ``lam -> 0``). *DSA* (Kopp 1963; Reed 1971;
Alcouffe 1977; Larsen 1982) follows each sweep with a diffusion solve for the error,

    -(1/3) f'' + (1 - c) f = c (phi^{l+1/2} - phi^l),      phi^{l+1} = phi^{l+1/2} + f,

whose continuum Fourier factor is ``omega_DSA = omega_SI + c (omega_SI - 1) / (lam^2 / 3 + 1 -
c)``, with spectral radius about ``0.2247 c``. After spatial discretisation the result depends on
how the diffusion equation is differenced (Larsen 1982, "Unconditionally stable diffusion-
synthetic acceleration methods for the slab geometry discrete ordinates equations"):

* ``consistent=True`` here solves the error equation as the S_2 equations (Gauss points
  ``+-1/sqrt 3``, which in a slab *are* the P1 = diffusion equations with ``D = 1/3``),
  differenced with the same diamond scheme as the transport sweep, by a direct sparse solve
  (S2 synthetic acceleration, a diffusion operator derived from the transport differencing);
* ``consistent=False`` uses the textbook cell-centred three-point diffusion discretisation,
  which does not follow from diamond differencing.

The pairing with these two specific low-order discretisations is this module's choice (an
"S2SA" form of a consistent operator, not Larsen's four-step scheme or Alcouffe's edge scheme);
the chapter measures what each does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.signal import lfilter
from scipy.sparse.linalg import splu


@dataclass(frozen=True)
class Slab:
    """A uniform slab: ``cells`` cells of optical width ``h``, scattering ratio ``c``, uniform
    source ``q``, Gauss-Legendre S_N quadrature of order ``order`` (even)."""

    cells: int
    h: float
    c: float
    q: float = 1.0
    order: int = 8

    def __post_init__(self) -> None:
        if self.cells < 2:
            raise ValueError(f"cells must be at least 2, got {self.cells}")
        if self.h <= 0:
            raise ValueError(f"cell width h must be positive, got {self.h}")
        if not 0.0 <= self.c < 1.0:
            raise ValueError(f"scattering ratio c must lie in [0, 1), got {self.c}")
        if self.order < 2 or self.order % 2:
            raise ValueError(f"S_N order must be even and >= 2, got {self.order}")

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Legendre directions ``mu`` and weights ``w`` (sum 2)."""
        return np.polynomial.legendre.leggauss(self.order)


def sweep_dd(slab: Slab, source: np.ndarray) -> np.ndarray:
    """One transport sweep: cell-average scalar flux ``phi = sum_m w_m psibar_m`` of
    ``mu dpsi/dx + psi = source / 2`` (``source`` per cell, isotropic) with diamond differencing
    ``psibar = (psi_in + psi_out) / 2`` and vacuum boundaries.

    For ``mu > 0`` the cell balance ``(mu / h)(psi_out - psi_in) + psibar = s`` gives the
    recursion ``psi_out = a psi_in + b s`` with ``a = (mu/h - 1/2) / (mu/h + 1/2)`` and ``b = 1 /
    (mu/h + 1/2)``, a first-order linear filter along the sweep (``scipy.signal.lfilter``).
    """
    s = np.asarray(source, dtype=float) / 2
    if s.shape != (slab.cells,):
        raise ValueError(f"source must have shape ({slab.cells},), got {s.shape}")
    mu, w = slab.quadrature()
    phi = np.zeros(slab.cells)
    for m, wm in zip(mu, w):
        r = abs(m) / slab.h
        a, b = (r - 0.5) / (r + 0.5), 1.0 / (r + 0.5)
        seq = s if m > 0 else s[::-1]
        out = lfilter([b], [1.0, -a], seq)  # psi at the outgoing edges, in sweep order
        inc = np.concatenate([[0.0], out[:-1]])
        avg = (inc + out) / 2
        phi += wm * (avg if m > 0 else avg[::-1])
    return phi


def _s2_dd_operator(slab: Slab) -> sp.csc_matrix:
    """Sparse DD S_2 system for the error equation; unknowns: edge fluxes ``psi+_{1..N}``
    (``psi+_0 = 0``) then ``psi-_{0..N-1}`` (``psi-_N = 0``); rows: cell balances."""
    n, h, c = slab.cells, slab.h, slab.c
    mu = 1 / np.sqrt(3)
    rows, cols, vals = [], [], []

    def plus(j: int) -> int | None:  # psi+ at edge j
        return None if j == 0 else j - 1

    def minus(j: int) -> int | None:  # psi- at edge j
        return None if j == n else n + j

    for i in range(n):
        for sign, row in ((1, i), (-1, n + i)):
            # sign * mu/h (psi_{i+1} - psi_i) + (psi_i + psi_{i+1})/2
            #   - (c/2) * [ (p_i + p_{i+1})/2 + (m_i + m_{i+1})/2 ] = R_i / 2
            own = plus if sign > 0 else minus
            coeff = {}
            for j, d in ((i, -sign * mu / h + 0.5), (i + 1, sign * mu / h + 0.5)):
                k = own(j)
                if k is not None:
                    coeff[k] = coeff.get(k, 0.0) + d
            for j in (i, i + 1):
                for f in (plus, minus):
                    k = f(j)
                    if k is not None:
                        coeff[k] = coeff.get(k, 0.0) - c / 4
            for k, v in coeff.items():
                rows.append(row)
                cols.append(k)
                vals.append(v)
    return sp.csc_matrix((vals, (rows, cols)), shape=(2 * n, 2 * n))


def _diffusion_cc_operator(slab: Slab) -> sp.csc_matrix:
    """Cell-centred three-point diffusion ``-(1/3) f'' + (1 - c) f`` with Marshak vacuum
    boundaries (extrapolation: boundary flux ``f_b`` with ``f_b / 2 + (1/3) f'_n = 0``)."""
    n, h, c = slab.cells, slab.h, slab.c
    d = 1 / 3
    main = np.full(n, 2 * d / h**2 + (1 - c))
    off = np.full(n - 1, -d / h**2)
    # boundary: half-cell gradient to the edge, edge flux from the Marshak condition
    # current out = D (f_1 - f_b) / (h/2) = f_b / 2  ->  f_b = f_1 * (2D/h) / (2D/h + 1/2)
    g = 2 * d / h
    fb = g / (g + 0.5)
    edge = (d / h) * (2 / h) * (1 - fb)  # flux loss through the boundary face, per unit f_1
    main[0] = d / h**2 + edge + (1 - c)
    main[-1] = d / h**2 + edge + (1 - c)
    return sp.diags([off, main, off], [-1, 0, 1], format="csc")


@dataclass
class IterationResult:
    """Scalar flux, iteration count and the history of ``||phi^{l+1} - phi^l||_inf``."""

    phi: np.ndarray
    iterations: int
    residuals: np.ndarray
    converged: bool


def _step(slab: Slab, accelerate: Callable[[np.ndarray], np.ndarray] | None, phi: np.ndarray,
          q: np.ndarray | float) -> np.ndarray:  # fmt: skip
    """One SI sweep with the scattering source of ``phi``, then the DSA correction if any."""
    half = sweep_dd(slab, slab.c * phi + q)
    return half if accelerate is None else half + accelerate(slab.c * (half - phi))


def _iterate(slab: Slab, accelerate, tol: float, max_iter: int,
             phi0: np.ndarray | None) -> IterationResult:  # fmt: skip
    if tol <= 0 or max_iter < 1:
        raise ValueError("tol must be positive and max_iter at least 1")
    phi = np.zeros(slab.cells) if phi0 is None else np.asarray(phi0, dtype=float).copy()
    if phi.shape != (slab.cells,):
        raise ValueError(f"phi0 must have shape ({slab.cells},), got {phi.shape}")
    q = np.full(slab.cells, slab.q)
    res = []
    for it in range(1, max_iter + 1):
        new = _step(slab, accelerate, phi, q)
        if not np.all(np.isfinite(new)):
            return IterationResult(new, it, np.array(res), False)
        res.append(float(np.max(np.abs(new - phi))))
        phi = new
        if res[-1] < tol:
            return IterationResult(phi, it, np.array(res), True)
        if res[-1] > 1e12:
            break
    return IterationResult(phi, len(res), np.array(res), False)


def si_solve(slab: Slab, tol: float = 1e-8, max_iter: int = 20000,
             phi0: np.ndarray | None = None) -> IterationResult:  # fmt: skip
    """Source iteration ``phi^{l+1} = sweep(c phi^l + q)`` until the update is below ``tol``."""
    return _iterate(slab, None, tol, max_iter, phi0)


def diffusion_correction(slab: Slab, consistent: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """The low-order correction ``f`` for a scattering residual ``r = c (phi^{l+1/2} -
    phi^l)`` (eq. of the module docstring), its matrix factorised once."""
    n = slab.cells
    if consistent:
        lu = splu(_s2_dd_operator(slab))

        def accelerate(r: np.ndarray) -> np.ndarray:
            x = lu.solve(np.concatenate([r, r]) / 2)
            plus = np.concatenate([[0.0], x[:n]])  # edges 0..N
            minus = np.concatenate([x[n:], [0.0]])
            return (plus[:-1] + plus[1:]) / 2 + (minus[:-1] + minus[1:]) / 2

        return accelerate
    return splu(_diffusion_cc_operator(slab)).solve


def dsa_solve(slab: Slab, consistent: bool = True, tol: float = 1e-8, max_iter: int = 2000,
              phi0: np.ndarray | None = None) -> IterationResult:  # fmt: skip
    """SI with a diffusion correction after each sweep (see the module docstring for the two
    discretisations). The low-order matrix is factorised once (``scipy.sparse.linalg.splu``)."""
    return _iterate(slab, diffusion_correction(slab, consistent), tol, max_iter, phi0)


def estimate_rho(residuals: np.ndarray, skip: int = 3, floor: float = 1e-13) -> float:
    """Measured spectral radius: geometric mean of successive residual ratios after the first
    ``skip`` iterations, over residuals above ``floor`` (round-off)."""
    r = np.asarray(residuals, dtype=float)
    r = r[skip:]
    r = r[r > floor]
    if r.size < 2:
        raise ValueError("need at least two residuals above the floor after the skipped ones")
    return float(np.exp(np.mean(np.diff(np.log(r)))))


def omega_si(lam: np.ndarray, c: float, mu: np.ndarray | None = None,
             w: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Fourier factor of SI: ``c arctan(lam)/lam`` (continuous angle), or ``c sum_m (w_m/2) /
    (1 + lam^2 mu_m^2)`` for a quadrature ``(mu, w)``."""
    lam = np.asarray(lam, dtype=float)
    if mu is None:
        safe = np.where(lam == 0, 1.0, lam)
        return c * np.where(lam == 0, 1.0, np.arctan(safe) / safe)
    return c * np.sum((w / 2)[:, None] / (1 + np.outer(mu**2, lam**2)), axis=0).reshape(lam.shape)


def omega_dsa(lam: np.ndarray, c: float, mu: np.ndarray | None = None,
              w: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Fourier factor of continuum DSA: ``omega_SI + c (omega_SI - 1) / (lam^2/3 + 1 - c)``."""
    lam = np.asarray(lam, dtype=float)
    o = omega_si(lam, c, mu, w)
    return o + c * (o - 1) / (lam**2 / 3 + 1 - c)


def fourier_rho_si(c: float) -> float:
    """SI spectral radius ``sup_lam |omega_SI| = c`` (attained as ``lam -> 0``)."""
    return float(np.max(np.abs(omega_si(np.linspace(0, 50, 20001), c))))


def fourier_rho_dsa(c: float, mu: np.ndarray | None = None, w: np.ndarray | None = None
                    ) -> tuple[float, float]:  # fmt: skip
    """DSA spectral radius ``sup_lam |omega_DSA(lam)|`` and the maximising ``lam`` (grid search
    refined by bounded scalar minimisation)."""
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"c must lie in [0, 1], got {c}")
    grid = np.linspace(1e-6, 50, 50001)
    vals = np.abs(omega_dsa(grid, c, mu, w))
    k = int(np.argmax(vals))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    opt = minimize_scalar(lambda x: -abs(float(omega_dsa(np.array([x]), c, mu, w)[0])),
                          bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-10})  # fmt: skip
    return float(-opt.fun), float(opt.x)


def dd_direct_solve(slab: Slab) -> np.ndarray:
    """Brute force: the whole diamond-difference S_N system with its scattering coupling, all
    edge fluxes of all directions as one dense linear system (``numpy.linalg.solve``); returns
    the cell-average scalar flux. Independent of the sweep and of any iteration (small slabs)."""
    n, h = slab.cells, slab.h
    mu, w = slab.quadrature()
    m_count = mu.size
    size = m_count * (n + 1)
    if size > 4000:
        raise ValueError(f"dense system of size {size} is too large for a brute-force solve")
    a = np.zeros((size, size))
    b = np.zeros(size)
    idx = lambda m, j: m * (n + 1) + j  # noqa: E731

    row = 0
    for m in range(m_count):  # vacuum inflow edge of each direction
        a[row, idx(m, 0 if mu[m] > 0 else n)] = 1.0
        row += 1
    for m in range(m_count):
        for i in range(n):
            # mu/h (psi_{i+1} - psi_i) + (psi_i + psi_{i+1})/2 - (c/2) phibar_i = q/2
            a[row, idx(m, i + 1)] += mu[m] / h + 0.5
            a[row, idx(m, i)] += -mu[m] / h + 0.5
            for k in range(m_count):
                a[row, idx(k, i)] -= slab.c / 2 * w[k] / 2
                a[row, idx(k, i + 1)] -= slab.c / 2 * w[k] / 2
            b[row] = slab.q / 2
            row += 1
    psi = np.linalg.solve(a, b).reshape(m_count, n + 1)
    return np.sum(w[:, None] * (psi[:, :-1] + psi[:, 1:]) / 2, axis=0)


def _one_iteration(slab: Slab, method: str) -> Callable[[np.ndarray], np.ndarray]:
    """One homogeneous (``q = 0``) iteration ``phi -> phi'``: the error propagation."""
    if method not in ("si", "dsa", "dsa-inconsistent"):
        raise ValueError(f"method must be 'si', 'dsa' or 'dsa-inconsistent', got {method!r}")
    accelerate = None if method == "si" else diffusion_correction(slab, method == "dsa")

    return lambda phi: _step(slab, accelerate, phi, 0.0)


def iteration_matrix_rho(slab: Slab, method: str = "dsa") -> float:
    """Exact spectral radius of one iteration's error-propagation matrix (``q = 0``: the error
    obeys the homogeneous iteration), assembled column by column and passed to
    ``numpy.linalg.eigvals``. ``method``: ``"si"``, ``"dsa"`` or ``"dsa-inconsistent"``."""
    if slab.cells > 1500:
        raise ValueError(f"{slab.cells} cells is too many for a dense eigenvalue problem")
    step = _one_iteration(slab, method)
    matrix = np.column_stack([step(e) for e in np.eye(slab.cells)])
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def measured_rho(slab: Slab, method: str, rng: np.random.Generator, iterations: int = 40,
                 skip: int = 8) -> tuple[float, np.ndarray]:  # fmt: skip
    """Spectral radius measured the experimental way: iterate the homogeneous problem from a
    random error and take the geometric-mean decay of ``||e^{l+1} - e^l||_inf`` after ``skip``
    iterations (:func:`estimate_rho`). Returns the estimate and the residual history."""
    step = _one_iteration(slab, method)
    phi = rng.random(slab.cells)
    res = []
    for _ in range(iterations):
        new = step(phi)
        res.append(float(np.max(np.abs(new - phi))))
        phi = new
        if not np.isfinite(res[-1]) or res[-1] > 1e30 or res[-1] < 1e-250:
            break
    res = np.array(res)
    return estimate_rho(res, skip=min(skip, max(res.size - 2, 0)), floor=1e-200), res
