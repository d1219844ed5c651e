"""Synthetic event cameras: events of 3-D lines under constant linear velocity and known rotation.

The camera moves with constant linear velocity ``v`` and constant angular velocity ``omega``
(rotation vector per second) over a time window starting at ``t = 0``; its pose at time ``t``
is ``R(t) = exp([omega t]_x)``, centre ``c(t) = t v``, so a world point ``X`` projects to
``x ~ K R(t)^T (X - t v)`` (the convention of the released simulation of Gao et al., ICCV 2023).
An event is a pixel ``x_j`` and a time ``t_j`` where the image of a line passes. Rotation
compensation (Sec. 3 of the paper) maps every event to the bearing ``f_j = R(t_j) K^-1 [x_j, 1]``
in the reference frame at ``t = 0``, after which only the translation ``t v`` remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Camera",
    "Events",
    "LineScene",
    "compensate_rotation",
    "derotated_pixels",
    "random_line_scene",
    "rotation_exp",
    "simulate_line_events",
]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: focal length and image size in pixels, principal point at the centre."""

    focal: float = 320.0
    width: int = 640
    height: int = 480

    def __post_init__(self) -> None:
        if self.focal <= 0 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"focal length and image size must be positive, got {self}")

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsic matrix."""
        return np.array([[self.focal, 0.0, self.width / 2], [0.0, self.focal, self.height / 2],
                         [0.0, 0.0, 1.0]])

    def inside(self, pixels: np.ndarray) -> np.ndarray:
        """Boolean mask of pixels (n, 2) that fall on the image."""
        pixels = np.asarray(pixels, dtype=float)
        return ((pixels[:, 0] >= 0) & (pixels[:, 0] <= self.width - 1)
                & (pixels[:, 1] >= 0) & (pixels[:, 1] <= self.height - 1))


@dataclass(frozen=True)
class LineScene:
    """A 3-D segment ``p1``-``p2`` (metres, reference frame at t = 0) seen by a camera moving
    with linear velocity ``velocity`` (m/s) and angular velocity ``omega`` (rad/s) over
    ``[0, window]``."""

    p1: np.ndarray
    p2: np.ndarray
    velocity: np.ndarray
    omega: np.ndarray
    window: float

    @property
    def direction(self) -> np.ndarray:
        """Unit direction of the line."""
        d = self.p2 - self.p1
        return d / np.linalg.norm(d)

    @property
    def plucker(self) -> np.ndarray:
        """The 6-vector ``(m, u)`` of the eventail: moment ``m = p1 x d`` and ``u = v x d``,
        with ``d = p2 - p1`` (so ``f . (m - t u) = 0`` for every noise-free event)."""
        d = self.p2 - self.p1
        return np.concatenate([np.cross(self.p1, d), np.cross(self.velocity, d)])

    @property
    def partial_velocity(self) -> np.ndarray:
        """The observable part of the velocity: its component orthogonal to the line."""
        d = self.direction
        return self.velocity - d * (d @ self.velocity)


@dataclass(frozen=True)
class Events:
    """Events: pixel positions ``pixels`` (n, 2) and timestamps ``times`` (n,), in seconds."""

    pixels: np.ndarray
    times: np.ndarray

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.shape[1] != 2:
            raise ValueError(f"pixels must have shape (n, 2), got {self.pixels.shape}")
        if self.times.shape != (self.pixels.shape[0],):
            raise ValueError(f"times must have shape ({self.pixels.shape[0]},), "
                             f"got {self.times.shape}")

    def __len__(self) -> int:
        return self.times.shape[0]

    def subset(self, index: np.ndarray) -> Events:
        """The events at ``index`` (an integer or boolean array)."""
        return Events(self.pixels[index], self.times[index])


def rotation_exp(omega: np.ndarray, times: np.ndarray | float) -> np.ndarray:
    """``R(t) = exp([omega t]_x)`` by Rodrigues' formula, for each time: shape (n, 3, 3)."""
    omega = np.asarray(omega, dtype=float)
    if omega.shape != (3,):
        raise ValueError(f"omega must be a 3-vector, got shape {omega.shape}")
    times = np.atleast_1d(np.asarray(times, dtype=float))
    speed = np.linalg.norm(omega)
    if speed == 0:
        return np.broadcast_to(np.eye(3), (times.shape[0], 3, 3)).copy()
    axis = omega / speed
    ax = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = speed * times
    return (np.eye(3) + np.sin(angle)[:, None, None] * ax
            + (1 - np.cos(angle))[:, None, None] * (ax @ ax))


def _project(points: np.ndarray, times: np.ndarray, scene: LineScene, camera: Camera):
    """Pixels and depths of world points (n, 3) seen at times (n,)."""
    R = rotation_exp(scene.omega, times)
    cam = np.einsum("nji,nj->ni", R, points - times[:, None] * scene.velocity)
    homo = cam @ camera.K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = homo[:, :2] / homo[:, 2:3]
    return pixels, cam[:, 2]


def simulate_line_events(
    rng: np.random.Generator,
    scene: LineScene,
    camera: Camera,
    n_events: int,
    pixel_noise: float = 0.0,
    max_tries: int = 50,
) -> Events:
    """Events of one line: points drawn uniformly on the segment and times uniformly in the window,
    projected with the moving camera; events off the image or behind the camera are redrawn.
    Gaussian pixel noise of standard deviation ``pixel_noise`` (px) is added afterwards."""
    if n_events < 1:
        raise ValueError(f"n_events must be at least 1, got {n_events}")
    if pixel_noise < 0:
        raise ValueError(f"pixel_noise must be non-negative, got {pixel_noise}")
    pixels, times = [], []
    kept = 0
    for _ in range(max_tries):
        s = rng.uniform(0, 1, size=2 * n_events)
        t = rng.uniform(0, scene.window, size=2 * n_events)
        points = scene.p1 + s[:, None] * (scene.p2 - scene.p1)
        px, depth = _project(points, t, scene, camera)
        ok = (depth > 0.1) & camera.inside(np.nan_to_num(px, nan=-1.0))
        pixels.append(px[ok])
        times.append(t[ok])
        kept += int(ok.sum())
        if kept >= n_events:
            break
    else:
        raise ValueError("the line is almost never visible: fewer than "
                         f"{n_events} visible events in {max_tries} rounds")
    pixels = np.concatenate(pixels)[:n_events]
    times = np.concatenate(times)[:n_events]
    if pixel_noise > 0:
        pixels = pixels + rng.normal(0, pixel_noise, size=pixels.shape)
    return Events(pixels, times)


def random_line_scene(
    rng: np.random.Generator,
    camera: Camera,
    *,
    speed: float = 1.0,
    angular_speed_deg: float = 30.0,
    depth: tuple[float, float] = (3.0, 5.0),
    window: float = 0.5,
    forward: float = 0.0,
    min_visible: float = 0.5,
    velocity: np.ndarray | None = None,
    omega: np.ndarray | None = None,
) -> LineScene:
    """A random line and camera motion in the spirit of the paper's simulations.

    The segment joins two random pixels at ``t = 0`` (one in each half of the image) back-projected
    to random depths in ``depth``; the velocity has magnitude ``speed`` and a direction drawn
    uniformly on the sphere, then tilted towards the optical axis by ``forward`` (0: isotropic,
    large: the camera moves straight at the scene); the angular velocity has magnitude
    ``angular_speed_deg`` deg/s about a random axis. Scenes where fewer than ``min_visible`` of
    the candidate events land on the image are redrawn. Passing ``velocity`` and ``omega`` keeps
    that motion and draws only the line (several lines seen by one moving camera)."""
    if speed <= 0 or window <= 0:
        raise ValueError(f"speed and window must be positive, got {speed}, {window}")
    if not 0 < depth[0] <= depth[1]:
        raise ValueError(f"depth must be an increasing positive range, got {depth}")
    if forward < 0:
        raise ValueError(f"forward must be non-negative, got {forward}")
    K_inv = np.linalg.inv(camera.K)
    for _ in range(1000):
        x1 = [rng.uniform(0, camera.width / 2), rng.uniform(0, camera.height)]
        x2 = [rng.uniform(camera.width / 2, camera.width), rng.uniform(0, camera.height)]
        b1, b2 = (K_inv @ np.array([*x, 1.0]) for x in (x1, x2))
        p1 = b1 / np.linalg.norm(b1) * rng.uniform(*depth)
        p2 = b2 / np.linalg.norm(b2) * rng.uniform(*depth)
        heading = rng.normal(size=3)
        heading /= np.linalg.norm(heading)
        heading = heading + forward * np.array([0.0, 0.0, 1.0])
        axis = rng.normal(size=3)
        scene = LineScene(
            p1, p2,
            speed * heading / np.linalg.norm(heading) if velocity is None
            else np.asarray(velocity, dtype=float),
            np.deg2rad(angular_speed_deg) * axis / np.linalg.norm(axis) if omega is None
            else np.asarray(omega, dtype=float),
            float(window))
        s = rng.uniform(0, 1, size=200)
        t = rng.uniform(0, window, size=200)
        px, z = _project(p1 + s[:, None] * (p2 - p1), t, scene, camera)
        if np.linalg.norm(np.cross(p2 - p1, scene.velocity)) < 1e-9:
            continue
        visible = (z > 0.1) & camera.inside(np.nan_to_num(px, nan=-1.0))
        if visible.mean() >= min_visible:
            return scene
    raise ValueError("could not draw a visible line scene; relax min_visible or the motion")


def compensate_rotation(events: Events, omega: np.ndarray, camera: Camera) -> np.ndarray:
    """Unit bearings ``f_j = R(t_j) K^-1 [x_j, 1]`` in the reference frame (paper, Sec. 3):
    with the rotation known (from an IMU), every event is rotated back to the frame at t = 0."""
    homo = np.column_stack([events.pixels, np.ones(len(events))]) @ np.linalg.inv(camera.K).T
    bearings = np.einsum("nij,nj->ni", rotation_exp(omega, events.times), homo)
    return bearings / np.linalg.norm(bearings, axis=1, keepdims=True)


def derotated_pixels(bearings: np.ndarray, camera: Camera) -> np.ndarray:
    """Pixel coordinates of compensated bearings in the reference camera, ``K f / f_z``: the
    rotation-compensated image in which the spatio-temporal plane baseline works."""
    homo = bearings @ camera.K.T
    return homo[:, :2] / homo[:, 2:3]
