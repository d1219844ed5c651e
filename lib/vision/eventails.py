"""Eventails: the exact space-time model of the events of a 3-D line, and its minimal solvers.

Gao, Su, Gehrig, Cannici, Scaramuzza, Kneip, *An N-point linear solver for line and motion
estimation with event cameras* (CVPR 2024) and *A 5-point minimal solver for event camera
relative motion estimation* (ICCV 2023). After rotation compensation, an event (bearing ``f``,
time ``t``) of a line through ``Pa`` and ``Pb`` seen from the camera centre ``c(t) = t v``
satisfies the incidence condition (ICCV 2023, Sec. 3)

    det[f, Pa - t v, Pb - t v] = f . (m - t u) = 0,   m = Pa x Pb,  u = v x (Pb - Pa),

the quadratic term vanishing because ``v x v = 0``. The set of (pixel, time) satisfying it is a
ruled surface in space-time, the *eventail*. Two solvers live here:

* :func:`two_plane_solve`, the ICCV 2023 parametrisation: the line through ``Pa = (-1, ya, za)``
  and ``Pb = (1, yb, zb)`` (after a pre-rotation of the bearings), the velocity
  ``v = vy e2 + vz e3`` in the line frame ``e1 = Pb - Pa``, ``e2 = Pb x Pa``, ``e3 = e1 x e2``
  (its component along the line is unobservable), and the side constraint ``|v| = 1``:
  six unknowns, six polynomial equations, two solutions (a dual pair).
* :func:`solve_eventail_linear`, the linear form of the CVPR 2024 follow-up: the incidence is
  linear and homogeneous in the 6-vector ``(m, u)``, so five events fix it up to scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from lib.vision.event_simulation import Camera, derotated_pixels
from lib.vision.ransac import RansacResult, ransac

__all__ = [
    "DegenerateEvents",
    "EventailLine",
    "TwoPlaneSolution",
    "angle_deg",
    "average_velocity",
    "eventail_conditioning",
    "eventail_line",
    "eventail_matrix",
    "eventail_residual_px",
    "pre_rotation",
    "ransac_eventail",
    "refine_eventail",
    "select_in_front",
    "solve_eventail_linear",
    "two_plane_equations",
    "two_plane_solve",
]


class DegenerateEvents(ValueError):
    """The events do not determine the line and velocity (a degenerate configuration)."""


def _check_events(bearings: np.ndarray, times: np.ndarray, minimum: int = 5) -> None:
    if bearings.shape[-1] != 3 or bearings.shape[:-1] != times.shape:
        raise ValueError(f"bearings (..., n, 3) and times (..., n) disagree: {bearings.shape}, "
                         f"{times.shape}")
    if times.shape[-1] < minimum:
        raise ValueError(f"an eventail needs at least {minimum} events, got {times.shape[-1]}")


def angle_deg(a: np.ndarray, b: np.ndarray, unsigned: bool = False) -> np.ndarray:
    """Angle in degrees between vectors (batched over leading axes), by ``atan2(|a x b|, a.b)``,
    accurate down to 1e-14 deg (``arccos`` of a dot product bottoms out near 1e-6 deg).
    ``unsigned`` treats ``b`` and ``-b`` as the same direction (lines)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape[-1] != 3 or b.shape[-1] != 3:
        raise ValueError(f"angle_deg takes 3-vectors, got shapes {a.shape}, {b.shape}")
    dot = (a * b).sum(axis=-1)
    angle = np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), dot))
    return np.minimum(angle, 180.0 - angle) if unsigned else angle


def eventail_matrix(bearings: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Rows ``[f_j, -t_j f_j]``: the incidence ``f_j . (m - t_j u) = 0`` as ``A (m, u) = 0``
    (CVPR 2024, Eq. 5; ICCV 2023's incidence expanded). Batched over leading axes."""
    _check_events(bearings, times, minimum=1)
    return np.concatenate([bearings, -times[..., None] * bearings], axis=-1)


def solve_eventail_linear(bearings: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The unit 6-vector ``(m, u)`` minimising ``|A (m, u)|`` (the null vector for five events):
    the linear solver of the CVPR 2024 follow-up. Batched over leading axes.

    Times are centred and scaled before the SVD (a conditioning step: with ``t = t0 + s tau``
    the unknowns become ``(m - t0 u, s u)``), then mapped back."""
    _check_events(bearings, times)
    t0 = times.mean(axis=-1, keepdims=True)
    scale = np.maximum(np.abs(times - t0).max(axis=-1, keepdims=True), 1e-12)
    tau = (times - t0) / scale
    k = np.linalg.svd(eventail_matrix(bearings, tau))[2][..., -1, :]
    m = k[..., :3] + t0 * k[..., 3:] / scale
    u = k[..., 3:] / scale
    k = np.concatenate([m, u], axis=-1)
    return k / np.linalg.norm(k, axis=-1, keepdims=True)


def eventail_conditioning(bearings: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Ratio of the fifth to the first singular value of the (time-normalised) 5 x 6 (or n x 6)
    incidence matrix: near zero when the events leave a 2-D family of eventails, that is in a
    degenerate configuration (velocity along the line, line through the camera path, all events
    in one plane through the camera). Batched over leading axes."""
    _check_events(bearings, times)
    t0 = times.mean(axis=-1, keepdims=True)
    scale = np.maximum(np.abs(times - t0).max(axis=-1, keepdims=True), 1e-12)
    s = np.linalg.svd(eventail_matrix(bearings, (times - t0) / scale), compute_uv=False)
    return s[..., 4] / s[..., 0]


@dataclass(frozen=True)
class EventailLine:
    """A line and partial velocity read off an eventail ``(m, u)``: unit direction ``direction``,
    the point ``point`` of the line closest to the reference camera centre, and the velocity
    component orthogonal to the line ``partial_velocity``; ``point`` and ``partial_velocity``
    share one unknown scale, fixed here by ``|partial_velocity| = 1``, and their common sign is
    chosen so that the events see the line in front of the camera."""

    direction: np.ndarray
    point: np.ndarray
    partial_velocity: np.ndarray


def _median_depth(point: np.ndarray, direction: np.ndarray, velocity: np.ndarray,
                  bearings: np.ndarray, times: np.ndarray) -> float:
    """Median over the events of the depth ``s`` at which the ray ``t v + s f`` meets the line
    ``point + r direction`` (least squares in ``(s, r)``; the velocity's component along the
    line does not change ``s``)."""
    depth = [np.linalg.lstsq(np.column_stack([f, -direction]), point - t * velocity,
                             rcond=None)[0][0] for f, t in zip(bearings, times)]
    return float(np.median(depth))


def eventail_line(k: np.ndarray, bearings: np.ndarray, times: np.ndarray) -> EventailLine:
    """Line direction and partial velocity from ``(m, u)`` (CVPR 2024, Sec. 4).

    ``m`` and ``u`` are both orthogonal to the line, so ``d ~ m x u``; with ``m = p x d`` and
    ``u = v x d``, the closest point is ``p = d x m / |d|^2`` and the velocity component
    orthogonal to the line is ``d x u / |d|^2``. The overall sign of ``(m, u)`` swaps the scene
    with its point reflection (the dual solution); we keep the sign for which the rays of the
    events meet the line at positive depth (the median over the events)."""
    k = np.asarray(k, dtype=float)
    if k.shape != (6,):
        raise ValueError(f"k must be a 6-vector (m, u), got shape {k.shape}")
    m, u = k[:3], k[3:]
    d = np.cross(m, u)
    if np.linalg.norm(d) <= 1e-12 * np.linalg.norm(m) * np.linalg.norm(u):
        raise DegenerateEvents("m and u are parallel (or zero): the line's image does not turn, "
                               "the velocity is unobservable")
    d2 = d @ d
    point = np.cross(d, m) / d2
    vel = np.cross(d, u) / d2
    sign = 1.0 if _median_depth(point, d, vel, bearings, times) > 0 else -1.0
    scale = sign / np.linalg.norm(vel)
    return EventailLine(d / np.sqrt(d2), point * scale, vel * scale)


def pre_rotation(bearings: np.ndarray) -> np.ndarray:
    """A rotation about the optical axis putting the dominant image direction of the events
    along x (the paper's standardisation before its two-plane parametrisation, so that the line
    crosses the planes X = -1 and X = +1 well away from infinity)."""
    xy = bearings[:, :2] / bearings[:, 2:3]
    xy = xy - xy.mean(axis=0)
    w, V = np.linalg.eigh(xy.T @ xy)
    first = V[:, 1]
    Q = np.eye(3)
    Q[0, :2] = first
    Q[1, :2] = [-first[1], first[0]]
    return Q


@dataclass(frozen=True)
class TwoPlaneSolution:
    """One solution of the ICCV 2023 system in its own unknowns ``(ya, za, yb, zb, vy, vz)``,
    in the pre-rotated frame ``rotation @ f``; ``velocity`` is ``vy e2 + vz e3`` (unit norm)."""

    ya: float
    za: float
    yb: float
    zb: float
    vy: float
    vz: float
    rotation: np.ndarray

    @property
    def unknowns(self) -> np.ndarray:
        return np.array([self.ya, self.za, self.yb, self.zb, self.vy, self.vz])

    @property
    def pa(self) -> np.ndarray:
        """``Pa`` in the compensated (not pre-rotated) frame."""
        return self.rotation.T @ np.array([-1.0, self.ya, self.za])

    @property
    def pb(self) -> np.ndarray:
        return self.rotation.T @ np.array([1.0, self.yb, self.zb])

    @property
    def velocity(self) -> np.ndarray:
        """The partial velocity ``vy e2 + vz e3`` in the compensated frame."""
        pa, pb = np.array([-1.0, self.ya, self.za]), np.array([1.0, self.yb, self.zb])
        e2 = np.cross(pb, pa)
        e3 = np.cross(pb - pa, e2)
        return self.rotation.T @ (self.vy * e2 + self.vz * e3)


def two_plane_equations(unknowns: np.ndarray, bearings: np.ndarray,
                        times: np.ndarray) -> np.ndarray:
    """The ICCV 2023 system written from its definitions, for pre-rotated bearings: five
    incidence residuals ``det[f_j, Pa - t_j v, Pb - t_j v]`` and the side constraint
    ``|v|^2 - 1``, with ``Pa = (-1, ya, za)``, ``Pb = (1, yb, zb)``, ``v = vy e2 + vz e3``.
    (The side constraint is our reading of the released code, which normalises ``v``.)"""
    unknowns = np.asarray(unknowns, dtype=float)
    if unknowns.shape != (6,):
        raise ValueError(f"unknowns must be (ya, za, yb, zb, vy, vz), got shape "
                         f"{unknowns.shape}")
    _check_events(bearings, times, minimum=1)
    ya, za, yb, zb, vy, vz = unknowns
    pa, pb = np.array([-1.0, ya, za]), np.array([1.0, yb, zb])
    e2 = np.cross(pb, pa)
    e3 = np.cross(pb - pa, e2)
    v = vy * e2 + vz * e3
    rows = [np.linalg.det(np.stack([f, pa - t * v, pb - t * v])) for f, t in zip(bearings, times)]
    return np.array([*rows, v @ v - 1.0])


def two_plane_solve(bearings: np.ndarray, times: np.ndarray) -> list[TwoPlaneSolution]:
    """The 5-event minimal solver in the ICCV 2023 parametrisation (Sec. 4): both solutions.

    The paper eliminates with an automatically generated Groebner-basis template (154 x 578 in
    the released code). We do not port it; our own elimination in the same unknowns:

    1. pre-rotate the bearings (:func:`pre_rotation`);
    2. expanded, the five incidence equations are linear in the six polynomial combinations
       ``k = (Pa x Pb, v x (Pb - Pa))`` of the unknowns (the CVPR 2024 observation), so ``k`` is
       the null vector of the 5 x 6 matrix, up to a factor ``lambda``;
    3. back-substitute in the paper's unknowns. ``d = Pb - Pa`` is orthogonal to both halves of
       ``k`` and has ``d_x = 2``; writing ``Pa, Pb = p0 -/+ d / 2`` with ``p0_x = 0`` gives
       ``Pa x Pb = p0 x d = lambda k_m``, linear in ``lambda``; and since ``e2 = -lambda k_m``,
       ``e3 = -lambda d x k_m``, the velocity part reads ``k_u = vy (d x k_m) - vz |d|^2 k_m``,
       which gives ``vy, vz`` independently of ``lambda`` (the line frame moves with the scale);
    4. the side constraint ``|v|^2 = lambda^2 (vy^2 |k_m|^2 + vz^2 |d x k_m|^2) = 1`` is the
       quadratic whose two roots are the paper's dual pair (``Pa' = -Pb``, ``Pb' = -Pa``,
       ``v' = -v``).

    Raises :class:`DegenerateEvents` when the events do not fix the system.
    """
    bearings = np.asarray(bearings, dtype=float)
    times = np.asarray(times, dtype=float)
    _check_events(bearings, times)
    if bearings.ndim != 2 or bearings.shape[0] != 5:
        raise ValueError(f"the minimal solver takes exactly 5 events, got {bearings.shape}")
    if eventail_conditioning(bearings, times) < 1e-9:
        raise DegenerateEvents("the 5 x 6 incidence matrix has rank below 5")
    Q = pre_rotation(bearings)
    k = solve_eventail_linear(bearings @ Q.T, times)
    k_m, k_u = k[:3], k[3:]
    d = np.cross(k_m, k_u)
    if abs(d[0]) <= 1e-9 * np.linalg.norm(d):
        raise DegenerateEvents("the line is parallel to the X = -1 and X = +1 planes")
    d = 2.0 * d / d[0]
    q = np.cross(d, k_m) / (d @ d)
    p_bar = q - q[0] / d[0] * d
    dk = np.cross(d, k_m)
    vy = k_u @ dk / (dk @ dk)
    vz = -(k_u @ k_m) / ((d @ d) * (k_m @ k_m))
    a = vy**2 * (k_m @ k_m) + vz**2 * (dk @ dk)
    if not np.isfinite(a) or a <= 0:
        raise DegenerateEvents("the side constraint |v| = 1 has no real solution")
    solutions = []
    for lam in np.sort(np.roots([a, 0.0, -1.0]).real):
        pa, pb = lam * p_bar - d / 2, lam * p_bar + d / 2
        solutions.append(TwoPlaneSolution(pa[1], pa[2], pb[1], pb[2], vy, vz, Q))
    return solutions


def select_in_front(solutions: list[TwoPlaneSolution], bearings: np.ndarray,
                    times: np.ndarray) -> TwoPlaneSolution:
    """The solution of the dual pair that puts the line in front of the camera: the rays of the
    (compensated) events meet it at positive depth, in the median. The paper keeps both for
    RANSAC (the pair has the same inliers) and settles the sign separately."""
    if not solutions:
        raise ValueError("no solutions to choose from")
    return max(solutions, key=lambda s: _median_depth(s.pa, s.pb - s.pa, s.velocity, bearings,
                                                      times))


def eventail_residual_px(k: np.ndarray, bearings: np.ndarray, times: np.ndarray,
                         camera: Camera) -> np.ndarray:
    """Image distance (px) of each event to the eventail's line at the event's time: (B, n).

    At time ``t`` the eventail ``(m, u)`` is the image line ``l(t) = m - t u`` (bearings with
    ``f . l = 0``); in the rotation-compensated image ``x = K f / f_z`` it is ``K^-T l(t)``, and
    the residual is the point-to-line distance there (the pixel residual of the inlier test)."""
    k = np.atleast_2d(np.asarray(k, dtype=float))
    if k.shape[-1] != 6:
        raise ValueError(f"k must hold 6-vectors (m, u), got shape {k.shape}")
    lines = k[:, None, :3] - times[None, :, None] * k[:, None, 3:]
    lines_px = lines @ np.linalg.inv(camera.K)
    x = derotated_pixels(bearings, camera)
    value = lines_px[..., 0] * x[:, 0] + lines_px[..., 1] * x[:, 1] + lines_px[..., 2]
    return np.abs(value) / np.hypot(lines_px[..., 0], lines_px[..., 1])


def refine_eventail(k: np.ndarray, bearings: np.ndarray, times: np.ndarray,
                    camera: Camera) -> np.ndarray:
    """Minimise the pixel residuals of :func:`eventail_residual_px` over ``(m, u)``, moving in
    the 5-dimensional tangent space of the unit sphere at ``k`` (the scale is a gauge)."""
    k = np.asarray(k, dtype=float) / np.linalg.norm(k)
    basis = np.linalg.svd(k[None])[2][1:].T

    def residual(delta: np.ndarray) -> np.ndarray:
        kk = k + basis @ delta
        return eventail_residual_px(kk / np.linalg.norm(kk), bearings, times, camera)[0]

    delta = least_squares(residual, np.zeros(5), method="lm", x_scale="jac").x
    kk = k + basis @ delta
    return kk / np.linalg.norm(kk)


def ransac_eventail(bearings: np.ndarray, times: np.ndarray, camera: Camera, threshold: float,
                    iterations: int, rng: np.random.Generator, refine: bool = True
                    ) -> RansacResult:
    """RANSAC around the 5-event eventail solver, then pixel-residual refinement on the inliers.
    Minimal samples are solved in a batch with :func:`solve_eventail_linear` (the same null
    vector that step 2 of :func:`two_plane_solve` uses)."""
    def fit(samples: np.ndarray) -> np.ndarray:
        return solve_eventail_linear(bearings[samples], times[samples])

    def residuals(models: np.ndarray) -> np.ndarray:
        return eventail_residual_px(models, bearings, times, camera)

    def refit(model: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        return refine_eventail(model, bearings[inliers], times[inliers], camera)

    return ransac(len(times), 5, fit, residuals, threshold, iterations, rng,
                  refine=refit if refine else None)


def average_velocity(directions: np.ndarray, partial_velocities: np.ndarray) -> np.ndarray:
    """Velocity direction from several lines' partial velocities (ICCV 2023, Sec. 5).

    Line ``i`` (direction ``d_i``, partial velocity ``w_i``, the part of ``v`` orthogonal to
    ``d_i``) says ``v`` lies in the plane spanned by ``d_i`` and ``w_i``:
    ``v . n_i = 0`` with ``n_i = d_i x w_i / |d_i x w_i|``. The unit ``v`` minimising the
    algebraic residual ``sum_i (v . n_i)^2`` is the last right singular vector of the stacked
    ``n_i``; its sign is the one agreeing with the partial velocities on average."""
    directions = np.atleast_2d(np.asarray(directions, dtype=float))
    partial_velocities = np.atleast_2d(np.asarray(partial_velocities, dtype=float))
    if directions.shape != partial_velocities.shape or directions.shape[-1] != 3:
        raise ValueError(f"directions and partial velocities must both be (L, 3), got "
                         f"{directions.shape}, {partial_velocities.shape}")
    if directions.shape[0] < 2:
        raise ValueError("velocity averaging needs at least 2 lines")
    normals = np.cross(directions, partial_velocities)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    s, vt = np.linalg.svd(normals)[1:]
    if s[1] < 1e-9 * s[0]:
        raise DegenerateEvents("all lines are parallel: the velocity along them is unobservable")
    v = vt[-1]
    unit_w = partial_velocities / np.linalg.norm(partial_velocities, axis=1, keepdims=True)
    return v if (unit_w @ v).sum() >= 0 else -v
