"""Tests for the displacement network, its training loop, shipped weights and training pool."""

import shutil

import numpy as np
import pytest
import torch

from lib.registration.displacement_network import (
    WEIGHTS,
    DisplacementUNet,
    load_networks,
    read_manifest,
    save_networks,
    train_network,
)
from lib.registration.metrics import evaluate_registration
from lib.registration.organ_phantoms import make_organ_pairs
from lib.registration.train_displacement_networks import (
    CHUNK,
    concat_pairs,
    training_pairs,
)
from lib.registration.volume_preserving import gaussian_blur, registration_loss
from lib.util.shipped_weights import sha256_file


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: two threads contending with other processes run 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_untrained_network_is_the_identity_map_and_shapes():
    net = DisplacementUNet(width=4)
    x = torch.rand(3, 1, 32, 48)
    assert net.control_grid(x, x).shape == (3, 2, 8, 12)
    with torch.no_grad():
        disp = net(x, x)
    assert disp.shape == (3, 2, 32, 48)
    assert float(disp.abs().max()) == 0.0


def test_training_lowers_the_similarity_loss():
    torch.manual_seed(0)
    p = make_organ_pairs(8, np.random.default_rng(0), size=32, tumour_radius=(2.0, 4.0))
    net = DisplacementUNet(width=8)

    def batches():
        while True:
            yield {"moving": p.moving, "fixed": p.fixed}

    def loss_fn(disp, batch, blurred):
        return registration_loss(disp, batch["moving"], batch["fixed"], p.moving_organ)

    with torch.no_grad():
        before = float(loss_fn(net(p.moving, p.fixed), {"moving": p.moving, "fixed": p.fixed},
                               False).mean())
    log = train_network(net, batches(), loss_fn, steps=100, lr=5e-3, log_every=20)
    assert log.steps == [20, 40, 60, 80, 100] and log.seconds_per_step > 0
    assert log.losses[-1] < 0.8 * before


def test_registration_loss_terms():
    p = make_organ_pairs(2, np.random.default_rng(1))
    zero = torch.zeros(2, 2, 64, 64)
    sim = registration_loss(zero, p.moving, p.fixed, p.moving_organ)
    expected = 100 * (p.moving - p.fixed).pow(2).mean((1, 2, 3))
    assert torch.allclose(sim, expected)
    # the volume term is 0 (its minimum, 1, minus 1) for the identity map; the mask only
    # down-weights the similarity
    ones = torch.ones_like(p.moving)
    masked = registration_loss(zero, p.moving, p.fixed, p.moving_organ, tumour_mask=ones,
                               vp_weight=3.0)
    assert torch.allclose(masked, torch.zeros(2), atol=1e-6)


def test_gaussian_blur_keeps_constants_and_mass():
    x = torch.full((2, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(x, 1.5), x)
    spike = torch.zeros(1, 1, 31, 31)
    spike[..., 15, 15] = 1
    assert float(gaussian_blur(spike, 1.5).sum()) == pytest.approx(1.0, abs=1e-5)


def test_training_pool_is_chunked_and_prefix_stable():
    first = training_pairs(CHUNK)
    both = training_pairs(2 * CHUNK)
    assert len(both) == 2 * CHUNK
    assert torch.equal(both.moving[:CHUNK], first.moving)
    assert not torch.equal(both.moving[CHUNK:], first.moving)
    assert len(concat_pairs([first, first])) == 2 * CHUNK


def test_evaluate_registration_of_the_identity():
    p = make_organ_pairs(3, np.random.default_rng(2))
    r = evaluate_registration(torch.zeros(3, 2, 64, 64), p.moving_organ, p.moving_tumour,
                              p.fixed_organ)
    assert np.allclose(r["tsr"], 1.0) and r["stsr"] == pytest.approx(1.0)
    assert r["dice"].shape == (3,)


def test_shipped_networks_match_their_hashes_and_run(tmp_path):
    manifest = read_manifest()
    assert set(manifest["sha256"]) == {"similarity.safetensors", "two_stage.safetensors"}
    for name, digest in manifest["sha256"].items():
        assert sha256_file(WEIGHTS / name) == digest
        assert (WEIGHTS / name).stat().st_size < 1_000_000
    nets, _ = load_networks()
    x = torch.rand(2, 1, 64, 64)
    assert nets["two_stage"](x, x).shape == (2, 2, 64, 64)
    copy = tmp_path / "w"
    shutil.copytree(WEIGHTS, copy)
    path = copy / "similarity.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_networks(copy)
    with pytest.raises(ValueError, match="missing"):
        read_manifest(tmp_path)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="width"):
        DisplacementUNet(width=0)
    net = DisplacementUNet(width=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 20, 20))
    with pytest.raises(ValueError, match="share one"):
        net(torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="steps"):
        train_network(net, iter([]), lambda d, b, f: d.sum(), steps=0)
    with pytest.raises(ValueError, match="no networks"):
        save_networks({}, tmp_path, {})
    with pytest.raises(ValueError, match="one width"):
        save_networks({"a": DisplacementUNet(2), "b": DisplacementUNet(3)}, tmp_path, {})
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="tumour_mask"):
        registration_loss(torch.zeros(1, 2, 16, 16), x, x, x, vp_weight=1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)
    with pytest.raises(ValueError, match="multiple"):
        training_pairs(CHUNK + 1)
    with pytest.raises(ValueError, match="nothing"):
        concat_pairs([])
