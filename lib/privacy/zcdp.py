"""Zero-concentrated differential privacy (zCDP) accounting for Gaussian releases.

Facts used (Bun and Steinke 2016, "Concentrated differential privacy"):

* the Gaussian mechanism that adds ``N(0, sigma^2 I)`` to a vector of L2 sensitivity
  ``Delta`` is ``Delta^2 / (2 sigma^2)``-zCDP (their Proposition 1.6);
* zCDP composes additively, also adaptively (Lemma 1.7): the ledger's total is a sum;
* ``rho``-zCDP implies ``(rho + 2 sqrt(rho log(1/delta)), delta)``-DP (Proposition 1.3),
  inverted in closed form by :func:`rho_for`.

A :class:`PrivacyLedger` records every noisy release of an algorithm with its sensitivity and
noise scale, so that a chapter can show that the composition of all of them equals the budget.
The exact privacy curve of a composition of Gaussian mechanisms (:func:`gaussian_delta`, the
analytic Gaussian mechanism of Balle and Wang 2018) is an independent, tighter account of the
same releases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def zcdp_to_eps(rho: float, delta: float) -> float:
    """The epsilon of the ``(epsilon, delta)``-DP guarantee that ``rho``-zCDP implies.

    ``epsilon = rho + 2 sqrt(rho log(1/delta))`` (Bun and Steinke 2016, Proposition 1.3).
    """
    if rho < 0:
        raise ValueError(f"rho must be non-negative, got {rho}")
    _check_delta(delta)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def rho_for(eps: float, delta: float) -> float:
    """The largest ``rho`` whose zCDP guarantee converts to ``(eps, delta)``-DP.

    Solves ``rho + 2 sqrt(rho log(1/delta)) = eps`` for ``sqrt(rho)``, a quadratic:
    ``rho = (sqrt(log(1/delta) + eps) - sqrt(log(1/delta)))^2``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    _check_delta(delta)
    log_term = math.log(1.0 / delta)
    return (math.sqrt(log_term + eps) - math.sqrt(log_term)) ** 2


def gaussian_zcdp(sensitivity: float, sigma: float) -> float:
    """zCDP of one Gaussian release: ``sensitivity^2 / (2 sigma^2)`` (Bun-Steinke Prop. 1.6)."""
    if sensitivity < 0:
        raise ValueError(f"sensitivity must be non-negative, got {sensitivity}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return sensitivity**2 / (2.0 * sigma**2)


def sigma_for(sensitivity: float, rho: float) -> float:
    """The noise standard deviation that makes one release of this sensitivity ``rho``-zCDP."""
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be positive, got {sensitivity}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    return sensitivity / math.sqrt(2.0 * rho)


def gaussian_delta(mu: float, eps: float) -> float:
    """Exact delta(eps) of a Gaussian mechanism with sensitivity-to-noise ratio ``mu``.

    ``delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle and Wang 2018,
    Theorem 8). A composition of Gaussian releases with ratios ``mu_i`` is exactly a Gaussian
    mechanism with ``mu = sqrt(sum mu_i^2)``, and ``rho``-zCDP Gaussian releases have
    ``mu = sqrt(2 rho)``.
    """
    if mu <= 0:
        raise ValueError(f"mu must be positive, got {mu}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    # log-space for the second term: e^eps Phi(.) overflows for large eps otherwise
    second = math.exp(eps + norm.logcdf(-eps / mu - mu / 2.0))
    return float(norm.cdf(-eps / mu + mu / 2.0) - second)


@dataclass
class PrivacyLedger:
    """Every noisy release of one run: what it was, its L2 sensitivity and its noise scale.

    The total (:attr:`rho`) is the sum of the releases' zCDP costs (additive composition).
    """

    kinds: list[str] = field(default_factory=list)
    sensitivities: list[float] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)

    def record(self, kind: str, sensitivity: float, sigma: float) -> float:
        """Record one Gaussian release and return its zCDP cost."""
        cost = gaussian_zcdp(sensitivity, sigma)
        self.kinds.append(kind)
        self.sensitivities.append(float(sensitivity))
        self.sigmas.append(float(sigma))
        return cost

    @property
    def costs(self) -> np.ndarray:
        """The zCDP cost of each release, in release order."""
        s = np.asarray(self.sensitivities)
        return s**2 / (2.0 * np.asarray(self.sigmas) ** 2)

    @property
    def rho(self) -> float:
        """Composed zCDP of all releases (sum, compensated for rounding)."""
        return math.fsum(self.costs.tolist())

    def rho_by_kind(self) -> dict[str, float]:
        """Composed zCDP per kind of release (for example ``refresh`` and ``difference``)."""
        costs = self.costs
        kinds = np.asarray(self.kinds)
        return {k: math.fsum(costs[kinds == k].tolist()) for k in dict.fromkeys(self.kinds)}

    def count(self, kind: str) -> int:
        """How many releases of this kind the run made."""
        return self.kinds.count(kind)

    def epsilon(self, delta: float) -> float:
        """The ``(epsilon, delta)``-DP guarantee of the whole run, through zCDP."""
        return zcdp_to_eps(self.rho, delta)
