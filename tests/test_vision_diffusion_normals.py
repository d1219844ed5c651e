"""Tests for the height-field normal testbed and the StableNormal-style estimators."""

import json

import numpy as np
import pytest
import torch

from lib.vision.diffusion_normals import (
    KINDS,
    NormalUNet,
    context_features,
    ddim_sample,
    load_estimators,
    stablenormal,
    train_estimator,
    yoso,
    yoso_loss,
)
from lib.vision.heightfield_normals import (
    angular_error,
    heights_to_normals,
    render_heightfield_dataset,
    seed_spread,
    shade,
    sharpness_ratio,
)
from lib.vision.train_normal_estimators import WEIGHTS


def test_render_is_seeded_and_normals_are_unit():
    a, b = render_heightfield_dataset(4, seed=3, size=24), render_heightfield_dataset(4, 3, size=24)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (4, 1, 24, 24) and a.normals.shape == (4, 3, 24, 24)
    np.testing.assert_allclose(np.linalg.norm(a.normals, axis=1), 1, atol=1e-5)
    assert (a.normals[:, 2] > 0).all() and 0 < a.edges.mean() < 1
    assert 0 <= a.images.min() and a.images.max() <= 1


def test_flat_field_points_up_and_shades_by_light_elevation():
    n = heights_to_normals(np.zeros((5, 5)))
    np.testing.assert_allclose(n[2], 1)
    light = np.array([0.6, 0.0, 0.8])
    np.testing.assert_allclose(shade(n, light, ambient=0.0), 0.8)


def test_metrics():
    n = heights_to_normals(np.random.default_rng(0).normal(size=(6, 6)))
    assert angular_error(n, n).max() < 1e-3
    assert angular_error(-n, n).min() > 179
    same = np.stack([n, n])
    assert seed_spread(same).max() < 1e-3
    mask = np.ones((6, 6), bool)
    assert sharpness_ratio(n, n, mask) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        render_heightfield_dataset(0, 0)
    with pytest.raises(ValueError):
        render_heightfield_dataset(2, 0, azimuth_range=0)
    with pytest.raises(ValueError):
        heights_to_normals(np.zeros(4))
    with pytest.raises(ValueError):
        shade(np.zeros((3, 2, 2)), np.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError):
        angular_error(np.zeros((3, 2, 2)), np.zeros((3, 2, 3)))
    with pytest.raises(ValueError):
        seed_spread(np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError):
        sharpness_ratio(np.ones((3, 2, 2)), np.ones((3, 2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError):
        NormalUNet(size=22)
    with pytest.raises(ValueError):
        train_estimator("gan", np.zeros((2, 1, 24, 24), np.float32),
                        np.zeros((2, 3, 24, 24), np.float32), 1)
    net = NormalUNet(size=24)
    img = torch.rand(1, 1, 24, 24)
    with pytest.raises(ValueError):
        ddim_sample(net, img, 0, torch.Generator())
    with pytest.raises(ValueError):
        net(torch.zeros(1, 3, 24, 24), 0, img, context_features(img))
    with pytest.raises(ValueError):
        yoso_loss(net, img, torch.zeros(1, 3, 24, 24), shrink=-1.0, start_scale=0.5)


def test_shrinkage_term_is_zero_for_a_noise_blind_net_and_training_runs():
    data = render_heightfield_dataset(8, seed=1, size=24)
    net, report = train_estimator("yoso", data.images, data.normals, steps=3, batch=4, log=None)
    assert len(report.losses) == 3 and np.isfinite(report.losses).all()
    img = torch.from_numpy(data.images[:2])
    g = torch.Generator().manual_seed(0)
    out = yoso(net, img, g)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1, atol=1e-4)

    class Blind(torch.nn.Module):
        def forward(self, x, t, image, feats=None):
            return torch.zeros_like(x) + image

    target = torch.zeros(2, 3, 24, 24)
    loss = yoso_loss(Blind(), img, target, shrink=10.0, start_scale=1.0)
    expected = img.expand(-1, 3, -1, -1).pow(2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_shipped_weights_match_manifest_and_run():
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {f"{k}.safetensors" for k in KINDS}
    assert sum((WEIGHTS / name).stat().st_size for name in manifest["sha256"]) < 2_000_000
    nets, meta = load_estimators(WEIGHTS)
    img = torch.from_numpy(render_heightfield_dataset(2, seed=5, size=meta["size"]).images)
    out = stablenormal(nets["yoso"], nets["refiner"], img, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, meta["size"], meta["size"]) and torch.isfinite(out).all()


def test_tampered_weights_are_refused(tmp_path):
    for f in WEIGHTS.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    path = tmp_path / "yoso.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256"):
        load_estimators(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_estimators(tmp_path / "nowhere")
