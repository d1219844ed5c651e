"""Tests for lib.diffusion.pair_rectification, toy_data and the shipped toy weights."""

import math
import shutil

import numpy as np
import pytest
import torch

from lib.diffusion.pair_rectification import (
    GaussianEpsilon,
    TimeMLP,
    VPSchedule,
    coupling_mse,
    ddim_sample,
    epsilon_drift,
    euler_flow_sample,
    make_pairs,
    path_curvature,
    predict,
    train_flow,
    train_vp,
    vp_target,
)
from lib.diffusion.toy_data import eight_gaussians, two_moons
from lib.diffusion.toy_weights import WEIGHTS, load_models, read_manifest


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
def test_schedule_matches_diffusers(kind):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule=kind, **({"beta_start": 0.00085, "beta_end": 0.012}
                                              if kind == "scaled_linear" else {}))
    ours = VPSchedule(kind)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_trailing_grid_matches_diffusers(steps):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(steps)
    assert VPSchedule("linear").trailing_timesteps(steps) == ref.timesteps.tolist()


def test_ddim_converges_to_closed_form_flow_map_of_gaussian_data():
    sch = VPSchedule()
    oracle = GaussianEpsilon(sch, torch.tensor([0.5, -1.0]), 0.5)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    exact = oracle.flow_map(z)
    err = {k: coupling_mse(ddim_sample(oracle, sch, z, k), exact) for k in (10, 100, 1000)}
    assert err[1000] < 1e-4 and err[1000] < err[100] < err[10]


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_predict_inverts_each_parameterisation(param):
    sch, t = VPSchedule(), 400
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    alpha, sigma = sch.alpha_sigma(t)
    xt = alpha * x0 + sigma * eps

    class Oracle(torch.nn.Module):
        def forward(self, x, time):
            return vp_target(x0, eps, alpha, sigma, param)

    eps_hat, x0_hat = predict(Oracle(), sch, xt, t, param)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)


def test_constant_epsilon_makes_one_ddim_step_exact():
    # a model whose noise prediction is constant along the path (first order) is solved
    # exactly by one DDIM step: every number of steps lands on the same point
    sch = VPSchedule()
    eps = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))

    class Constant(torch.nn.Module):
        def forward(self, x, time):
            return eps

    alpha_T, sigma_T = sch.alpha_sigma(sch.T - 1)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    xT = alpha_T * x0 + sigma_T * eps
    one, traj, ts = ddim_sample(Constant(), sch, xT, 1, return_trajectory=True)
    many = ddim_sample(Constant(), sch, xT, 50)
    torch.testing.assert_close(one, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(many, x0, atol=1e-4, rtol=1e-4)
    _, traj, ts = ddim_sample(Constant(), sch, xT, 10, return_trajectory=True)
    assert epsilon_drift(Constant(), sch, traj, ts) < 1e-6


def test_path_curvature_of_line_and_quarter_circle():
    s = torch.linspace(0, 1, 101)[:, None, None]
    line = torch.cat([s, 2 * s], dim=-1)
    assert path_curvature(line) == pytest.approx(1.0, abs=1e-5)
    angle = s * math.pi / 2
    arc = torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
    assert path_curvature(arc) == pytest.approx(math.pi / (2 * math.sqrt(2)), rel=1e-3)


def test_training_reduces_losses_and_pairs_are_deterministic():
    torch.manual_seed(0)
    sch = VPSchedule()
    data = eight_gaussians(512, np.random.default_rng(0))
    model = TimeMLP(width=32, depth=2)
    log = train_vp(model, sch, data, steps=300, batch=128, log_every=100)
    assert log.losses[-1] < log.losses[0]
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = make_pairs(model, sch, noise, ode_steps=20)[1]
    b = make_pairs(model, sch, noise, ode_steps=20)[1]
    assert torch.equal(a, b)
    flow = TimeMLP(width=32, depth=2)
    log = train_flow(flow, a, noise, steps=300, batch=64, log_every=100)
    assert log.losses[-1] < log.losses[0]
    paired = train_vp(TimeMLP(width=32, depth=2), sch, a, noise, steps=50, batch=32,
                      log_every=25)
    assert len(paired.losses) == 2
    assert euler_flow_sample(flow, noise, 3).shape == noise.shape


def test_toy_data():
    x = eight_gaussians(4000, np.random.default_rng(0))
    assert x.shape == (4000, 2) and x.norm(dim=1).mean() == pytest.approx(2.0, abs=0.02)
    assert two_moons(100, np.random.default_rng(0)).shape == (100, 2)


def test_bad_input_raises():
    sch = VPSchedule()
    model = TimeMLP(width=8, depth=1)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="kind"):
        VPSchedule("cosine")
    with pytest.raises(ValueError, match="beta_start"):
        VPSchedule(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="T must"):
        VPSchedule(T=1)
    with pytest.raises(ValueError, match="steps must"):
        sch.trailing_timesteps(0)
    with pytest.raises(ValueError, match="timesteps must"):
        sch.alpha_sigma(1000)
    with pytest.raises(ValueError, match="param"):
        predict(model, sch, x, 10, "score")
    with pytest.raises(ValueError, match="timestep"):
        predict(model, sch, x, -1)
    with pytest.raises(ValueError, match="noise must"):
        ddim_sample(model, sch, torch.zeros(4), 2)
    with pytest.raises(ValueError, match="steps must"):
        euler_flow_sample(model, x, 0)
    with pytest.raises(ValueError, match="must match"):
        train_vp(model, sch, x, torch.zeros(3, 2), steps=1)
    with pytest.raises(ValueError, match="lr"):
        train_vp(model, sch, x, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="x0 and noise"):
        train_flow(model, x, torch.zeros(4, 3), steps=1)
    with pytest.raises(ValueError, match="ode_steps"):
        make_pairs(model, sch, x, ode_steps=0)
    with pytest.raises(ValueError, match="shapes differ"):
        coupling_mse(x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="trajectory"):
        path_curvature(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="positive"):
        eight_gaussians(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="std must"):
        GaussianEpsilon(sch, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="dim, width"):
        TimeMLP(width=0)


def test_shipped_weights_match_their_hashes(tmp_path):
    manifest = read_manifest()
    assert set(manifest["sha256"]) >= {"teacher.safetensors", "rd_eps.safetensors",
                                       "reflow.safetensors"}
    models, _ = load_models()
    assert models["teacher"](torch.zeros(3, 2), 0.5).shape == (3, 2)
    copy = tmp_path / "w"
    shutil.copytree(WEIGHTS, copy)
    path = copy / "teacher.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_models(copy)
    with pytest.raises(ValueError, match="missing"):
        read_manifest(tmp_path)
