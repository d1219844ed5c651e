"""zCDP accounting: conversions, the Gaussian mechanism's cost, the ledger, the exact curve."""

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.stats import norm

from lib.privacy.zcdp import (
    PrivacyLedger,
    gaussian_delta,
    gaussian_zcdp,
    rho_for,
    sigma_for,
    zcdp_to_eps,
)


@pytest.mark.parametrize("eps,delta", [(0.1, 1e-5), (1.0, 1e-6), (8.0, 1e-9)])
def test_rho_for_inverts_the_conversion(eps, delta):
    rho = rho_for(eps, delta)
    assert zcdp_to_eps(rho, delta) == pytest.approx(eps, rel=1e-13)
    root = brentq(lambda r: zcdp_to_eps(r, delta) - eps, 1e-12, eps)
    assert rho == pytest.approx(root, rel=1e-10)


def test_gaussian_cost_and_sigma_are_inverse():
    sigma = sigma_for(0.3, 0.02)
    assert gaussian_zcdp(0.3, sigma) == pytest.approx(0.02, rel=1e-14)
    assert gaussian_zcdp(0.0, 1.0) == 0.0


def test_ledger_composes_additively_by_kind():
    ledger = PrivacyLedger()
    ledger.record("refresh", 2.0, 4.0)  # 4 / 32 = 0.125
    for _ in range(3):
        ledger.record("difference", 1.0, 2.0)  # 1 / 8 each
    assert ledger.rho == pytest.approx(0.5, rel=1e-15)
    assert ledger.rho_by_kind() == pytest.approx({"refresh": 0.125, "difference": 0.375})
    assert ledger.count("difference") == 3
    assert ledger.epsilon(1e-6) == pytest.approx(zcdp_to_eps(0.5, 1e-6))


def test_gaussian_delta_matches_numerical_integration():
    # privacy loss of a Gaussian mechanism with ratio mu: Z ~ N(mu^2/2, mu^2) under P;
    # delta(eps) = E_P[(1 - e^{eps - Z})_+]
    for mu, eps in [(0.5, 0.3), (1.0, 1.0), (2.0, 4.0)]:
        integrand = lambda z, m=mu, e=eps: (1 - math.exp(e - z)) * norm.pdf(z, m**2 / 2, m)  # noqa: E731
        ref, _ = quad(integrand, eps, eps + 40 * mu, epsabs=0.0, epsrel=1e-11, limit=200)
        assert gaussian_delta(mu, eps) == pytest.approx(ref, rel=1e-7, abs=1e-14)


def test_zcdp_conversion_is_conservative():
    for rho in (1e-3, 0.05, 1.0):
        eps = zcdp_to_eps(rho, 1e-6)
        assert gaussian_delta(math.sqrt(2 * rho), eps) <= 1e-6


def test_delta_is_decreasing_in_eps():
    values = [gaussian_delta(1.0, e) for e in np.linspace(0, 5, 11)]
    assert np.all(np.diff(values) < 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: rho_for(0.0, 1e-6),
        lambda: rho_for(1.0, 0.0),
        lambda: rho_for(1.0, 1.0),
        lambda: zcdp_to_eps(-1.0, 1e-6),
        lambda: gaussian_zcdp(1.0, 0.0),
        lambda: gaussian_zcdp(-1.0, 1.0),
        lambda: sigma_for(0.0, 0.1),
        lambda: sigma_for(1.0, 0.0),
        lambda: gaussian_delta(0.0, 1.0),
        lambda: gaussian_delta(1.0, -1.0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
