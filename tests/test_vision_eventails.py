"""Eventails: simulation conventions, the two minimal solvers, RANSAC, the plane baseline,
velocity averaging, degenerate configurations and input checks."""

import numpy as np
import pytest
from scipy.optimize import least_squares, root
from scipy.spatial.transform import Rotation

from lib.vision.event_simulation import (
    Camera,
    Events,
    LineScene,
    compensate_rotation,
    random_line_scene,
    rotation_exp,
    simulate_line_events,
)
from lib.vision.eventails import (
    DegenerateEvents,
    angle_deg,
    average_velocity,
    eventail_conditioning,
    eventail_line,
    eventail_matrix,
    eventail_residual_px,
    ransac_eventail,
    select_in_front,
    solve_eventail_linear,
    two_plane_equations,
    two_plane_solve,
)
from lib.vision.ransac import ransac
from lib.vision.spacetime_plane import fit_spacetime_plane, spacetime_plane_residual_px

CAM = Camera()


def _scene_events(seed, n=5, noise=0.0, **kw):
    rng = np.random.default_rng(seed)
    scene = random_line_scene(rng, CAM, **kw)
    events = simulate_line_events(rng, scene, CAM, n, noise)
    return scene, events, compensate_rotation(events, scene.omega, CAM)


def test_rotation_matches_scipy_and_projection_convention():
    omega = np.array([0.3, -0.2, 0.5])
    t = np.linspace(0, 1, 7)
    ref = Rotation.from_rotvec(omega[None] * t[:, None]).as_matrix()
    assert np.abs(rotation_exp(omega, t) - ref).max() < 1e-14
    # events projected independently with scipy satisfy the eventail after compensation
    rng = np.random.default_rng(0)
    scene = random_line_scene(rng, CAM)
    s, t = rng.uniform(size=50), rng.uniform(0, scene.window, size=50)
    pts = scene.p1 + s[:, None] * (scene.p2 - scene.p1) - t[:, None] * scene.velocity
    cam = Rotation.from_rotvec(scene.omega[None] * t[:, None]).inv().apply(pts)
    px = (cam @ CAM.K.T)[:, :2] / cam[:, 2:3]
    f = compensate_rotation(Events(px, t), scene.omega, CAM)
    assert eventail_residual_px(scene.plucker, f, t, CAM).max() < 1e-9


def test_linear_and_two_plane_solvers_recover_line_and_velocity():
    for seed in range(20):
        scene, events, f = _scene_events(seed)
        k = solve_eventail_linear(f, events.times)
        line = eventail_line(k, f, events.times)
        assert angle_deg(line.direction, scene.direction, unsigned=True) < 1e-7
        assert angle_deg(line.partial_velocity, scene.partial_velocity) < 1e-7
        sols = two_plane_solve(f, events.times)
        assert len(sols) == 2
        for sol in sols:
            assert np.abs(two_plane_equations(sol.unknowns, f @ sol.rotation.T,
                                              events.times)).max() < 1e-10
            assert angle_deg(sol.pb - sol.pa, scene.direction, unsigned=True) < 1e-7
        # the dual pair: Pa' = -Pb, Pb' = -Pa, v' = -v
        a, b = sols
        assert np.allclose(a.pa, -b.pb) and np.allclose(a.pb, -b.pa)
        assert np.allclose(a.velocity, -b.velocity)
        assert min(angle_deg(s.velocity, scene.partial_velocity) for s in sols) < 1e-7
        front = select_in_front(sols, f, events.times)
        assert angle_deg(front.velocity, scene.partial_velocity) < 1e-7


def test_newton_on_two_plane_system_lands_on_a_closed_form_root():
    scene, events, f = _scene_events(3)
    sols = two_plane_solve(f, events.times)
    fr = f @ sols[0].rotation.T
    rng = np.random.default_rng(1)
    roots = np.stack([s.unknowns for s in sols])
    hits = 0
    for _ in range(10):
        x0 = roots[0] * (1 + 0.2 * rng.normal(size=6))
        sol = root(two_plane_equations, x0, args=(fr, events.times), method="hybr", tol=1e-14)
        if np.abs(sol.fun).max() < 1e-12:
            hits += 1
            gap = np.abs(roots - sol.x).max(axis=1).min() / np.abs(roots).max()
            assert gap < 1e-8
    assert hits >= 8


def test_degenerate_configurations_are_flagged():
    rng = np.random.default_rng(0)
    p1, p2 = np.array([-1.0, 0.2, 4.0]), np.array([1.0, -0.1, 4.5])
    omega = np.array([0.1, 0.2, 0.0])
    # velocity along the line: its image does not move
    along = LineScene(p1, p2, 0.8 * (p2 - p1) / np.linalg.norm(p2 - p1), omega, 0.5)
    # velocity inside the plane through the camera centre and the line
    inplane = LineScene(p1, p2, 0.6 * p1 / np.linalg.norm(p1), omega, 0.5)
    for scene in (along, inplane):
        ev = simulate_line_events(rng, scene, CAM, 5)
        f = compensate_rotation(ev, omega, CAM)
        assert eventail_conditioning(f, ev.times) < 1e-9
        with pytest.raises(DegenerateEvents):
            two_plane_solve(f, ev.times)


def test_plane_fit_is_exact_on_three_events_and_matches_scipy():
    rng = np.random.default_rng(0)
    px, t = rng.uniform(0, 100, (3, 2)), rng.uniform(0, 1, 3)
    plane = fit_spacetime_plane(px, t)
    assert spacetime_plane_residual_px(plane, px, t).max() < 1e-9
    px, t = rng.uniform(0, 100, (40, 2)), rng.uniform(0, 1, 40)
    plane = fit_spacetime_plane(px, t)

    def resid(p):
        return (p[0] * px[:, 0] + p[1] * px[:, 1] + p[2] * t + p[3]) / np.hypot(p[0], p[1])

    ref = least_squares(resid, plane + 0.05, xtol=1e-14, ftol=1e-14).x
    assert abs((resid(ref) ** 2).sum() - (resid(plane) ** 2).sum()) < 1e-8 * (resid(ref) ** 2).sum()
    assert np.isnan(fit_spacetime_plane(px[:3], np.zeros(3))).all()


def test_ransac_eventail_keeps_all_noise_free_events_and_rejects_outliers():
    scene, events, f = _scene_events(4, n=120)
    rng = np.random.default_rng(0)
    res = ransac_eventail(f, events.times, CAM, 1.0, 60, rng)
    assert res.inlier_fraction == 1.0
    noise = Events(rng.uniform(0, 600, (30, 2)), rng.uniform(0, 0.5, 30))
    both = Events(np.vstack([events.pixels, noise.pixels]),
                  np.concatenate([events.times, noise.times]))
    fb = compensate_rotation(both, scene.omega, CAM)
    res = ransac_eventail(fb, both.times, CAM, 1.0, 200, rng)
    assert res.inliers[:120].all() and res.inliers[120:].mean() < 0.3


def test_average_velocity_recovers_direction_from_lines():
    rng = np.random.default_rng(2)
    first = random_line_scene(rng, CAM)
    lines = [first] + [random_line_scene(rng, CAM, velocity=first.velocity, omega=first.omega)
                       for _ in range(2)]
    dirs, partial = [], []
    for sc in lines:
        ev = simulate_line_events(rng, sc, CAM, 5)
        f = compensate_rotation(ev, sc.omega, CAM)
        line = eventail_line(solve_eventail_linear(f, ev.times), f, ev.times)
        dirs.append(line.direction)
        partial.append(line.partial_velocity)
    v = average_velocity(np.array(dirs), np.array(partial))
    assert angle_deg(v, first.velocity) < 1e-7
    with pytest.raises(DegenerateEvents):
        average_velocity(np.array([dirs[0], dirs[0]]), np.array([partial[0], partial[0]]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        Camera(focal=-1)
    with pytest.raises(ValueError):
        Events(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError):
        Events(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError):
        rotation_exp(np.zeros(2), 0.1)
    rng = np.random.default_rng(0)
    scene = random_line_scene(rng, CAM)
    with pytest.raises(ValueError):
        simulate_line_events(rng, scene, CAM, 0)
    with pytest.raises(ValueError):
        simulate_line_events(rng, scene, CAM, 5, pixel_noise=-1)
    with pytest.raises(ValueError):
        random_line_scene(rng, CAM, depth=(5.0, 3.0))
    f, t = np.ones((4, 3)), np.zeros(4)
    with pytest.raises(ValueError):
        solve_eventail_linear(f, t)
    with pytest.raises(ValueError):
        eventail_matrix(np.ones((4, 2)), t)
    with pytest.raises(ValueError):
        two_plane_solve(np.ones((6, 3)), np.zeros(6))
    with pytest.raises(ValueError):
        two_plane_equations(np.zeros(5), f, t)
    with pytest.raises(ValueError):
        eventail_line(np.zeros(5), f, t)
    with pytest.raises(DegenerateEvents):
        eventail_line(np.array([1.0, 0, 0, 2.0, 0, 0]), f, t)
    with pytest.raises(ValueError):
        eventail_residual_px(np.zeros(5), f, t, CAM)
    with pytest.raises(ValueError):
        fit_spacetime_plane(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError):
        spacetime_plane_residual_px(np.zeros(3), np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError):
        average_velocity(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError):
        select_in_front([], f, t)
    with pytest.raises(ValueError):
        angle_deg(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError):
        ransac(3, 5, None, None, 1.0, 10, rng)
    with pytest.raises(ValueError):
        ransac(10, 3, None, None, 0.0, 10, rng)
