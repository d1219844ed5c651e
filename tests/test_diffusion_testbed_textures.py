"""Tileable textures (lib.diffusion.testbed.textures) and the seam score
(lib.vision.tileability)."""

import numpy as np
import pytest

from lib.diffusion.testbed.textures import (
    ANNOTATED,
    FAMILIES,
    TEXTURE_VOCABULARY,
    generate_textures,
    scaled_crops,
    texture_caption,
)
from lib.vision.tileability import seam_score


def test_batches_are_seeded_shaped_and_captioned():
    a, b = generate_textures(64, seed=3), generate_textures(64, seed=3)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, generate_textures(64, seed=4).images)
    assert a.images.shape == (64, 3, 32, 32) and a.heights.shape == (64, 1, 32, 32)
    assert a.images.dtype == np.float32 and 0 <= a.images.min() and a.images.max() <= 1
    assert 0 <= a.heights.min() and a.heights.max() <= 1
    for caption, fam in zip(a.captions, a.family):
        words = caption.split()
        assert words[0] == "a" and words[-1] == "texture" and words[2] == FAMILIES[fam]
        assert set(words) <= set(TEXTURE_VOCABULARY)
    subset = generate_textures(200, seed=0, families=ANNOTATED)
    assert set(subset.family) == {0, 1, 2, 3}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_seamless_on_the_torus(family):
    """Pooled over many images, the jump across the wrap-around border equals the mean jump
    between interior neighbours (a visible seam would make it larger)."""
    x = generate_textures(6000, seed=11, families=[family]).images.astype(float)
    seam = (np.abs(x[..., :, 0] - x[..., :, -1]).mean()
            + np.abs(x[..., 0, :] - x[..., -1, :]).mean())
    interior = np.abs(np.diff(x, axis=3)).mean() + np.abs(np.diff(x, axis=2)).mean()
    # binary patterns put an edge on the border with the edge density's probability: noisy
    assert seam / interior == pytest.approx(1.0, abs=0.06)


def test_seam_score_is_one_for_periodic_and_large_for_cut_images():
    # one period of a sinusoid at 64 phases: the border is one more interior edge, on average
    x = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    phases = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    periodic = np.broadcast_to(np.sin(x[None, :] + phases[:, None])[:, None, None, :],
                               (64, 3, 32, 32))  # fmt: skip
    assert seam_score(periodic).mean() == pytest.approx(1.0, abs=0.02)
    ramp = np.broadcast_to(np.linspace(0, 1, 32)[None, None, :], (3, 32, 32))
    assert seam_score(ramp) > 20  # one jump of the whole range against 1/31 steps
    cut = generate_textures(256, seed=5, families=["wavy"]).images
    shifted = np.concatenate([cut[..., :16], cut[::-1, :, :, 16:]], axis=3)  # two halves
    assert np.median(seam_score(shifted)) > 1.5 * np.median(seam_score(cut))


def test_scaled_crops_do_not_tile_and_scale_one_is_a_roll():
    tex = generate_textures(256, seed=2)
    crops = scaled_crops(tex.images, seed=1)
    assert crops.shape == tex.images.shape and crops.dtype == np.float32
    assert np.array_equal(crops, scaled_crops(tex.images, seed=1))
    assert 0 <= crops.min() and crops.max() <= 1 + 1e-6
    assert np.median(seam_score(crops)) > 2.0 > 1.1 > np.median(seam_score(tex.images))
    # magnification 1 reads exactly one period at a shifted phase: still tileable
    one = scaled_crops(tex.images, seed=0, scale=(1.0, 1.0))
    assert np.median(seam_score(one)) < 1.1
    with pytest.raises(ValueError, match="maps must be"):
        scaled_crops(np.zeros((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="scale"):
        scaled_crops(tex.images[:2], scale=(2.0, 1.0))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="n must be"):
        generate_textures(0)
    with pytest.raises(ValueError, match="families"):
        generate_textures(4, families=["plaid"])
    with pytest.raises(ValueError, match="unknown texture family"):
        texture_caption("red", "plaid")
    with pytest.raises(ValueError, match="unknown colour"):
        texture_caption("teal", "wavy")
    with pytest.raises(ValueError, match="images must be"):
        seam_score(np.zeros((2, 32, 32)).reshape(1, 2, 32, 32)[..., :2])
    with pytest.raises(ValueError, match="finite"):
        seam_score(np.full((3, 8, 8), np.nan))
