"""Tests for lib.registration: warps, Jacobians, inversion, phantoms, metrics, the two stages."""

import numpy as np
import pytest
import torch

from lib.registration.deformation import (
    invert_displacement,
    jacobian_determinant,
    smoothness,
    upsample_displacement,
    warp,
)
from lib.registration.metrics import dice, square_tumour_size_ratio, tumour_size_ratio
from lib.registration.organ_phantoms import make_organ_pairs
from lib.registration.volume_preserving import (
    adaptive_volume_preserving_loss,
    register,
    relative_volume_change,
    soft_tumour_mask,
    stage_one_mask,
)


def scaling_field(size: int, s: float) -> torch.Tensor:
    """u(x) = (s - 1)(x - centre): phi scales about the centre by s, det = s^2."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    c = (size - 1) / 2
    return torch.stack(((s - 1) * (xx - c), (s - 1) * (yy - c)))[None]


def test_jacobian_of_a_scaling_is_s_squared():
    assert torch.allclose(jacobian_determinant(scaling_field(20, 1.3)),
                          torch.full((1, 20, 20), 1.69, dtype=torch.float64))


def test_jacobian_of_a_smooth_field_matches_the_closed_form():
    n = 64
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                            torch.arange(n, dtype=torch.float64), indexing="ij")
    k, a = 2 * np.pi / n, 1.5
    u = torch.stack((a * torch.sin(k * yy), a * torch.sin(k * xx)))[None]
    exact = 1 - (a * k) ** 2 * torch.cos(k * yy) * torch.cos(k * xx)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    assert float((jacobian_determinant(u) - exact)[inner].abs().max()) < 1e-3


def test_warp_direction_a_zoom_in_enlarges_a_disk():
    # phi scales by 0.5: the warped image samples the moving image at half the distance from the
    # centre, so a disk grows by 2 in radius and the Jacobian (0.25) is below 1
    n = 41
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    disk = (((xx - 20) ** 2 + (yy - 20) ** 2) <= 25).to(torch.float32)[None, None]
    u = scaling_field(n, 0.5).to(torch.float32)
    area = float((warp(disk, u) > 0.5).sum())
    assert 3.5 < area / float(disk.sum()) < 4.5
    assert torch.allclose(jacobian_determinant(u), torch.tensor(0.25))


def test_inverse_displacement_composes_to_identity():
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 2, 6, 6, generator=g) * 2.0
    u = upsample_displacement(coarse, (48, 48))
    v = invert_displacement(u)
    residual = (v + warp(u, v)).norm(dim=1)[:, 6:-6, 6:-6]
    assert float(residual.max()) < 1e-3


def test_smoothness_is_zero_for_a_translation():
    assert float(smoothness(torch.full((1, 2, 8, 8), 3.0)).max()) == 0.0


def test_metrics():
    a = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 1
    b = torch.zeros(1, 1, 4, 4)
    b[..., :1, :] = 1
    assert float(dice(a, b)) == pytest.approx(2 * 4 / 12)
    # tumour halves while the organ keeps its size
    assert float(tumour_size_ratio(b, a, a, a)) == pytest.approx(0.5)
    assert float(square_tumour_size_ratio(torch.tensor([0.5, 2.0, 1.0]))) == pytest.approx(3.0)


def test_soft_mask_and_volume_loss_values():
    assert float(soft_tumour_mask(torch.tensor(1.5))) == pytest.approx(0.5)
    zero = torch.zeros(1, 2, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    assert float(adaptive_volume_preserving_loss(zero, mask, torch.ones(1, 1, 1))) == 1.0
    organ = torch.ones(1, 1, 8, 8)
    assert torch.allclose(relative_volume_change(zero, organ), torch.ones(1, 8, 8))


def test_phantoms_shapes_and_tumour_inside_organ():
    p = make_organ_pairs(3, np.random.default_rng(0))
    assert p.moving.shape == (3, 1, 64, 64) and len(p) == 3
    assert bool(((p.moving_tumour > 0) <= (p.moving_organ > 0)).all())
    assert float(p.moving_tumour.sum()) > 0


def test_similarity_shrinks_and_two_stage_preserves_the_tumour():
    torch.manual_seed(0)
    p = make_organ_pairs(3, np.random.default_rng(1))
    sim = register(p.moving, p.fixed, p.moving_organ, steps=150)
    mask = stage_one_mask(sim.disp, p.moving_organ)
    two = register(p.moving, p.fixed, p.moving_organ, tumour_mask=mask, vp_weight=3.0, steps=150)

    def tsr(disp):
        return tumour_size_ratio(warp(p.moving_tumour, disp), p.moving_tumour,
                                 warp(p.moving_organ, disp), p.moving_organ)
    assert float(tsr(sim.disp).median()) < 0.5
    assert 0.8 < float(tsr(two.disp).median()) < 1.2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        jacobian_determinant(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="match"):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 9, 9))
    with pytest.raises(ValueError, match="iterations"):
        invert_displacement(torch.zeros(1, 2, 8, 8), iterations=0)
    with pytest.raises(ValueError, match="empty"):
        dice(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="negative"):
        square_tumour_size_ratio(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="sharpness"):
        soft_tumour_mask(torch.ones(2), sharpness=0)
    with pytest.raises(ValueError, match="tumour_radius"):
        make_organ_pairs(2, np.random.default_rng(0), tumour_radius=(9.0, 20.0))
    with pytest.raises(ValueError, match="n must be"):
        make_organ_pairs(0, np.random.default_rng(0))
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="tumour_mask"):
        register(x, x, x, vp_weight=1.0)
    with pytest.raises(ValueError, match="clamp"):
        relative_volume_change(torch.zeros(1, 2, 8, 8), torch.ones(1, 1, 8, 8), clamp=1.0)
