"""Loss streams of the stochastically extended adversarial (SEA) model, with their variations.

In the SEA model of Sachs et al. (2022), used by Chen et al. (2023, Section 2), the environment
picks a distribution D_t at round t and the learner suffers f_t ~ D_t. With F_t = E[f_t]:

* the stochastic variance of round t is sigma_t^2 = sup_x E ||grad f_t(x) - grad F_t(x)||^2,
  and sigma^2_{1:T} = sum_t sigma_t^2;
* the adversarial variation of round t is Sigma_t^2 = sup_x ||grad F_t(x) - grad F_{t-1}(x)||^2
  (with F_0 = 0), and Sigma^2_{1:T} = sum_t Sigma_t^2.

The streams here are chosen so that both suprema have closed forms on a Euclidean ball of
radius ``radius`` in R^d:

* ``"linear"``: f_t(x) = <c_t, x> with c_t = mu_t + s_t u_t, u_t uniform on the unit sphere.
  Then grad f_t - grad F_t = s_t u_t, so sigma_t^2 = s_t^2 exactly (every draw has that norm),
  and Sigma_t^2 = ||mu_t - mu_{t-1}||^2.
* ``"quadratic"``: f_t(x) = (1 / 2) sum_i h_i (x_i - c_{t,i})^2 with the same c_t and a diagonal
  curvature h (default h_i = lam: f_t = (lam / 2) ||x - c_t||^2, lam-strongly convex and
  lam-smooth). Then sigma_t^2 = s_t^2 sum_i h_i^2 / d (the expectation over the sphere noise;
  lam^2 s_t^2 for isotropic h) and Sigma_t^2 = ||h * (mu_t - mu_{t-1})||^2 for t >= 2; the first
  round's term sup_x ||grad F_1(x)||^2 is max_i h_i^2 (radius + ||mu_1||)^2 for isotropic h and
  that upper bound otherwise. With an ill-conditioned h the losses are barely strongly convex
  (min_i h_i) but still exp-concave on the ball, the case of the paper's exp-concave result.

Everything is batched: a stream holds ``n`` independent replicates (seeds, or different
settings side by side), so one pass of an online algorithm runs all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("linear", "quadratic")


@dataclass(frozen=True)
class SEAStream:
    """A batch of ``n`` SEA loss streams of length ``T`` on the ball of radius ``radius`` in R^d.

    ``means`` (n, T, d) are the expected loss parameters mu_t (F_t's), ``scales`` (n, T) the noise
    radii s_t and ``directions`` (n, T, d) the unit noise directions u_t; the realised loss
    parameter is c_t = mu_t + s_t u_t. Build streams with :func:`sea_stream`.
    """

    kind: str
    means: np.ndarray
    scales: np.ndarray
    directions: np.ndarray
    radius: float = 1.0
    lam: float = 1.0
    curvature: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.means.ndim != 3:
            raise ValueError(f"means must have shape (n, T, d), got {self.means.shape}")
        if self.scales.shape != self.means.shape[:2]:
            raise ValueError(
                f"scales must have shape (n, T) = {self.means.shape[:2]}, got {self.scales.shape}"
            )
        if self.directions.shape != self.means.shape:
            raise ValueError("directions must have the same shape as means")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        if not self.lam > 0:
            raise ValueError(f"lam must be positive, got {self.lam}")
        if np.any(self.scales < 0):
            raise ValueError("noise scales must be non-negative")
        h = np.full(self.means.shape[2], float(self.lam)) if self.curvature is None else (
            np.asarray(self.curvature, dtype=float))
        if h.shape != (self.means.shape[2],):
            raise ValueError(
                f"curvature must have shape (d,) = ({self.means.shape[2]},), got {h.shape}")
        if np.any(h < 0) or not h.max() > 0:
            raise ValueError("curvature must be non-negative with a positive entry")
        object.__setattr__(self, "curvature", h)
        # c_t is used at every round; compute it once.
        centres = self.means + self.scales[..., None] * self.directions
        object.__setattr__(self, "centres", centres)

    # ---- shapes and constants -------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of independent replicates in the batch."""
        return self.means.shape[0]

    @property
    def T(self) -> int:  # noqa: N802 (the horizon is T in the paper)
        """Number of rounds."""
        return self.means.shape[1]

    @property
    def d(self) -> int:
        """Dimension of the decision set."""
        return self.means.shape[2]

    @property
    def diameter(self) -> float:
        """Diameter D of the decision set (a ball of radius ``radius``)."""
        return 2.0 * self.radius

    @property
    def smoothness(self) -> float:
        """Smoothness L of the expected losses F_t (0 for linear, max_i h_i for quadratic)."""
        return 0.0 if self.kind == "linear" else float(self.curvature.max())

    @property
    def strong_convexity(self) -> float:
        """Strong-convexity modulus of the losses (0 for linear, min_i h_i for quadratic)."""
        return 0.0 if self.kind == "linear" else float(self.curvature.min())

    @property
    def exp_concavity(self) -> np.ndarray:
        """An exp-concavity constant alpha of every f_t on the ball, per replicate: (n,).

        For f = (1/2) ||x - c||_H^2, grad^2 f = H >= alpha grad f grad f^T holds on the ball when
        alpha (x - c)^T H (x - c) <= 1, so alpha = 1 / (max_i h_i (radius + max_t ||c_t||)^2)
        is one. Linear losses are not exp-concave (alpha = 0).
        """
        if self.kind == "linear":
            return np.zeros(self.n)
        reach = self.radius + np.linalg.norm(self.centres, axis=-1).max(axis=1)
        return 1.0 / (self.curvature.max() * reach**2)

    @property
    def gradient_bound(self) -> np.ndarray:
        """G per replicate: max over its rounds and the ball of ||grad f_t(x)||, shape (n,).

        One bound per replicate, never one for the whole batch: a learner tuned with it then
        depends on its own stream only, so a replicate plays the same alone or batched.
        """
        norms = np.linalg.norm(self.centres, axis=-1).max(axis=1)
        if self.kind == "linear":
            return norms
        return self.curvature.max() * (self.radius + norms)

    # ---- the losses the learner sees ------------------------------------------------------
    def gradient(self, t: int, x: np.ndarray) -> np.ndarray:
        """grad f_t(x) for all replicates at round ``t`` (0-based); ``x`` has shape (n, d)."""
        c = self.centres[:, t]
        return c if self.kind == "linear" else self.curvature * (x - c)

    def losses(self, x: np.ndarray) -> np.ndarray:
        """f_t(x_t) for every replicate and round; ``x`` has shape (n, T, d) -> (n, T)."""
        if x.shape != self.means.shape:
            raise ValueError(f"plays must have shape (n, T, d) = {self.means.shape}, got {x.shape}")
        if self.kind == "linear":
            return np.einsum("ntd,ntd->nt", self.centres, x)
        return 0.5 * (self.curvature * (x - self.centres) ** 2).sum(-1)

    # ---- the SEA quantities ---------------------------------------------------------------
    @property
    def sigma2(self) -> np.ndarray:
        """Per-round stochastic variance sigma_t^2, shape (n, T) (closed form, see module doc)."""
        factor = 1.0 if self.kind == "linear" else float((self.curvature**2).mean())
        return factor * self.scales**2

    @property
    def Sigma2(self) -> np.ndarray:  # noqa: N802 (capital Sigma as in the paper)
        """Per-round adversarial variation Sigma_t^2 (with F_0 = 0), shape (n, T)."""
        previous = np.concatenate([np.zeros_like(self.means[:, :1]), self.means[:, :-1]], axis=1)
        if self.kind == "linear":
            return ((self.means - previous) ** 2).sum(-1)
        jumps = ((self.curvature * (self.means - previous)) ** 2).sum(-1)
        first = (self.radius + np.linalg.norm(self.means[:, 0], axis=-1)) ** 2
        jumps[:, 0] = self.curvature.max() ** 2 * first
        return jumps

    @property
    def sigma2_total(self) -> np.ndarray:
        """sigma^2_{1:T} per replicate, shape (n,)."""
        return self.sigma2.sum(axis=1)

    @property
    def Sigma2_total(self) -> np.ndarray:  # noqa: N802
        """Sigma^2_{1:T} per replicate, shape (n,)."""
        return self.Sigma2.sum(axis=1)

    @property
    def sigma2_max(self) -> np.ndarray:
        """sigma^2_max = max_t sigma_t^2 per replicate, shape (n,)."""
        return self.sigma2.max(axis=1)

    @property
    def Sigma2_max(self) -> np.ndarray:  # noqa: N802
        """Sigma^2_max = max_t Sigma_t^2 per replicate, shape (n,)."""
        return self.Sigma2.max(axis=1)

    @property
    def realised_noise2(self) -> np.ndarray:
        """sum_t ||grad f_t - grad F_t||^2 as drawn (equal to sigma^2_{1:T} for sphere noise)."""
        h = 1.0 if self.kind == "linear" else self.curvature
        return ((h * (self.centres - self.means)) ** 2).sum(-1).sum(-1)


def _as_batch(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=float)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (T, d) or (n, T, d), got {array.shape}")
    return array


def sea_stream(
    means: np.ndarray,
    sigma: float | np.ndarray,
    rng: np.random.Generator,
    *,
    kind: str = "linear",
    radius: float = 1.0,
    lam: float = 1.0,
    curvature: np.ndarray | None = None,
    n: int | None = None,
) -> SEAStream:
    """Draw a SEA stream: loss parameters c_t = mu_t + s_t u_t with u_t uniform on the sphere.

    ``means`` is (T, d) (shared by all replicates) or (n, T, d). ``sigma`` is the noise radius
    s_t, broadcastable to (n, T): a scalar, an (n, 1) column (one value per replicate) or an
    (n, T) array (a schedule per replicate). ``n`` replicates the means when they are (T, d).
    ``curvature`` (d,) is the diagonal h of a quadratic stream (default lam in every coordinate).
    """
    means = _as_batch(means, "means")
    sigma = np.asarray(sigma, dtype=float)
    if n is None:
        n = means.shape[0] if sigma.ndim < 2 else max(means.shape[0], sigma.shape[0])
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if means.shape[0] not in (1, n):
        raise ValueError(f"means hold {means.shape[0]} replicates, expected 1 or n = {n}")
    means = np.broadcast_to(means, (n, *means.shape[1:])).copy()
    try:
        scales = np.broadcast_to(sigma, means.shape[:2]).astype(float)
    except ValueError:
        raise ValueError(
            f"sigma of shape {sigma.shape} does not broadcast to (n, T) = {means.shape[:2]}"
        ) from None
    if np.any(scales < 0) or not np.all(np.isfinite(scales)):
        raise ValueError("sigma must be finite and non-negative")
    directions = rng.standard_normal(means.shape)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return SEAStream(kind, means, scales.copy(), directions, radius=radius, lam=lam,
                     curvature=curvature)


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def constant_means(T: int, d: int, rng: np.random.Generator, norm: float = 1.0) -> np.ndarray:  # noqa: N803
    """A fixed mean mu_t = mu (random direction, length ``norm``) for all T rounds: (T, d)."""
    if T < 1 or d < 1:
        raise ValueError(f"need T >= 1 and d >= 1, got T={T}, d={d}")
    return np.tile(norm * _unit(rng, d), (T, 1))


def switching_means(
    T: int,  # noqa: N803
    d: int,
    n_switches: int,
    rng: np.random.Generator,
    norm: float = 1.0,
) -> np.ndarray:
    """mu_t alternating between a random direction a and -a, switching ``n_switches`` times.

    The switches are evenly spaced (``n_switches + 1`` segments of equal length), so
    Sigma^2_{1:T} = norm^2 + 4 norm^2 n_switches for linear losses. Returns (T, d).
    """
    if T < 1 or d < 1:
        raise ValueError(f"need T >= 1 and d >= 1, got T={T}, d={d}")
    if not 0 <= n_switches < T:
        raise ValueError(f"n_switches must be in [0, T), got {n_switches} for T = {T}")
    a = norm * _unit(rng, d)
    segment = (np.arange(T) * (n_switches + 1)) // T
    signs = np.where(segment % 2 == 0, 1.0, -1.0)
    return signs[:, None] * a[None, :]
