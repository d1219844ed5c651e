"""Slab S_N source iteration and diffusion synthetic acceleration."""

import numpy as np
import pytest
from scipy.integrate import quad

from lib.transport.slab_dsa import (
    Slab,
    dd_direct_solve,
    dsa_solve,
    estimate_rho,
    fourier_rho_dsa,
    fourier_rho_si,
    omega_si,
    si_solve,
    sweep_dd,
)


def test_fourier_radii():
    rho, lam = fourier_rho_dsa(1.0)
    assert abs(rho - 0.2247) < 5e-4 and 2.4 < lam < 2.7
    assert abs(fourier_rho_si(0.9) - 0.9) < 1e-12
    for lam in (0.3, 2.0, 7.0):  # closed form against numerical angular integration
        integral = quad(lambda mu, lam=lam: 1 / (1 + lam**2 * mu**2), 0, 1)[0]
        assert abs(omega_si(np.array([lam]), 0.8)[0] - 0.8 * integral) < 1e-10


@pytest.mark.parametrize("h", [0.1, 1.0, 10.0])
def test_solvers_agree_with_brute_force(h):
    slab = Slab(30, h, 0.95)
    ref = dd_direct_solve(slab)
    np.testing.assert_allclose(dsa_solve(slab, tol=1e-13).phi, ref, atol=1e-10)
    np.testing.assert_allclose(si_solve(slab, tol=1e-13).phi, ref, atol=1e-9)


def test_pure_absorber_sweep_is_exact_solution():
    slab = Slab(20, 0.5, 0.0)
    np.testing.assert_allclose(sweep_dd(slab, np.ones(20)), dd_direct_solve(slab), atol=1e-12)


def test_consistent_dsa_is_fast_and_inconsistent_fails_thick():
    rng = np.random.default_rng(0)
    thin, thick = Slab(400, 0.1, 0.99), Slab(20, 10.0, 0.99)
    si = si_solve(thin, phi0=rng.random(400))
    assert abs(estimate_rho(si.residuals, skip=20) - 0.99) < 0.02
    for slab in (thin, thick):
        res = dsa_solve(slab, phi0=rng.random(slab.cells))
        assert res.converged and estimate_rho(res.residuals) < 0.25
    bad = dsa_solve(thick, consistent=False, phi0=rng.random(20), max_iter=100)
    assert not bad.converged


def test_bad_input():
    with pytest.raises(ValueError, match="scattering ratio"):
        Slab(10, 1.0, 1.0)
    with pytest.raises(ValueError, match="even"):
        Slab(10, 1.0, 0.5, order=3)
    with pytest.raises(ValueError, match="cell width"):
        Slab(10, 0.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        sweep_dd(Slab(10, 1.0, 0.5), np.ones(3))
    with pytest.raises(ValueError, match="two residuals"):
        estimate_rho(np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="too large"):
        dd_direct_solve(Slab(1000, 0.1, 0.5))
    with pytest.raises(ValueError, match="c must"):
        fourier_rho_dsa(1.5)


def test_iteration_matrix_radius_matches_fourier_and_bad_method():
    from lib.transport.slab_dsa import iteration_matrix_rho

    slab = Slab(80, 1.0, 0.99)
    assert iteration_matrix_rho(slab, "dsa") < 0.2247 * 0.99 + 0.01
    assert abs(iteration_matrix_rho(slab, "si") - 0.99) < 0.01
    with pytest.raises(ValueError, match="method"):
        iteration_matrix_rho(slab, "gmres")
