"""The mask-conditioned (asymmetric) decoder, latent inpainting and the region metrics."""

import numpy as np
import pytest
import torch

from lib.diffusion.inpainting import (
    border_band,
    boundary_gradient_error,
    inpaint_latents,
    latent_mask,
    random_masks,
    region_psnr,
)
from lib.diffusion.mask_conditioned_decoder import (
    AsymmetricDecoder,
    decode_masked,
    feature_plan,
    mask_blend,
    paste_back,
    to_diffusers,
)
from lib.diffusion.testbed import loader, models


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return models.autoencoder().eval()


def test_feature_plan_matches_decoder_shapes():
    assert feature_plan((32, 64, 64)) == [(32, 1), (64, 1), (64, 2), (64, 4)]
    # Stable Diffusion's decoder: the head at 128 channels, then 256, 512 x3 down to 1/8
    assert feature_plan((128, 256, 512, 512)) == [(128, 1), (256, 1), (512, 2), (512, 4),
                                                   (512, 8)]  # fmt: skip


def test_without_prior_or_with_full_mask_it_is_the_vanilla_decoder(vae):
    dec = AsymmetricDecoder.from_autoencoder(vae).eval()
    z, x = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = vae.decode(z).sample
        torch.testing.assert_close(dec.decode(z).sample, ref)
        torch.testing.assert_close(dec.decode(z, image=x, mask=torch.ones(2, 1, 32, 32)).sample,
                                   ref)  # fmt: skip


def test_forward_matches_diffusers_asymmetric_autoencoder(vae):
    torch.manual_seed(1)
    dec = AsymmetricDecoder.from_autoencoder(vae).eval()
    ref = to_diffusers(vae, dec)
    z, x = torch.randn(3, 4, 8, 8), torch.rand(3, 3, 32, 32) * 2 - 1
    m = random_masks(3, np.random.default_rng(0))
    with torch.no_grad():
        ours, theirs = dec.decode(z, image=x, mask=m).sample, ref.decode(z, image=x, mask=m).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_known_pixels_enter_only_through_the_unmasked_region(vae):
    dec = AsymmetricDecoder.from_autoencoder(vae).eval()
    z, x = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 32, 32) * 2 - 1
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    y = x.clone()
    y[..., 8:24, 8:24] = -x[..., 8:24, 8:24]  # change only hidden pixels
    with torch.no_grad():
        torch.testing.assert_close(dec(z, x, m), dec(z, y, m))


def test_mask_blend_and_paste_back():
    h, c = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :] = 1  # top half unknown -> keeps h (zeros) there
    out = mask_blend(h, c, m)
    assert out[..., :2, :].sum() == 0 and (out[..., 2:, :] == 1).all()
    img, dec = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    pasted = paste_back(dec, img, m)
    torch.testing.assert_close(pasted[..., 4:, :], img[..., 4:, :])
    torch.testing.assert_close(pasted[..., :4, :], dec[..., :4, :])


def test_wider_decoder_has_more_parameters(vae):
    one = AsymmetricDecoder.from_autoencoder(vae)
    two = AsymmetricDecoder.from_autoencoder(vae, width_mult=2.0)
    assert tuple(two.config.block_out_channels) == (64, 128, 128)
    assert models.parameter_count(two) > 3 * models.parameter_count(one)
    assert two(torch.randn(1, 4, 8, 8)).shape == (1, 3, 32, 32)


def test_save_load_round_trip(vae, tmp_path):
    dec = AsymmetricDecoder.from_autoencoder(vae).eval()
    dec.save_pretrained(tmp_path / "d", safe_serialization=True)
    back = AsymmetricDecoder.from_pretrained(tmp_path / "d", use_safetensors=True).eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(z), dec(z))


def test_masks_are_binary_and_seeded():
    a = random_masks(16, np.random.default_rng(3))
    b = random_masks(16, np.random.default_rng(3))
    assert torch.equal(a, b) and a.shape == (16, 1, 32, 32)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    frac = a.mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac < 1).all()
    assert (random_masks(2, np.random.default_rng(0), kind="full") == 1).all()
    lm = latent_mask(a, 4)
    assert lm.shape == (16, 1, 8, 8) and (lm.sum() >= a.sum() / 16)


def test_region_metrics_by_brute_force():
    rng = np.random.default_rng(0)
    x, y = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    m = torch.from_numpy((rng.random((2, 1, 6, 6)) < 0.5).astype(np.float32))
    for i in range(2):
        sel = m[i, 0].bool()
        mse = ((x[i][:, sel] - y[i][:, sel]) ** 2).mean()
        assert region_psnr(x, y, m)[i].item() == pytest.approx(-10 * np.log10(mse.item()),
                                                              rel=1e-5)  # fmt: skip
        errs = []
        for r in range(6):
            for c in range(6):
                for dr, dc in ((0, 1), (1, 0)):
                    r2, c2 = r + dr, c + dc
                    if r2 < 6 and c2 < 6 and m[i, 0, r, c] != m[i, 0, r2, c2]:
                        d = (x[i, :, r2, c2] - x[i, :, r, c]) - (y[i, :, r2, c2] - y[i, :, r, c])
                        errs.append(d.abs().mean().item())
        assert boundary_gradient_error(x, y, m)[i].item() == pytest.approx(np.mean(errs),
                                                                          rel=1e-5)  # fmt: skip
    band = border_band(torch.nn.functional.pad(torch.ones(1, 1, 2, 2), (2, 2, 2, 2)))
    assert band.sum() == 16  # the 2x2 hole's 4 pixels and the 12 around them... minus none


def test_inpainting_keeps_the_known_latents():
    torch.manual_seed(0)
    unet = models.unet().eval()
    sched = models.unet_scheduler("ddim")
    known = torch.randn(2, 4, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[..., 2:5, 2:5] = 1
    states, empty = torch.randn(2, 16, 64), torch.randn(1, 16, 64)
    out = inpaint_latents(unet, sched, known, m, states, empty, steps=3,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(out * (1 - m), known * (1 - m))
    assert not torch.allclose(out * m, known * m)


def test_shipped_asymmetric_decoder_is_hash_checked():
    manifest = loader.read_manifest()
    loader.verify(loader.WEIGHTS, manifest, ["asym_decoder"])
    assert "asym_decoder" in manifest["training"]
    dec = loader.load_component(loader.WEIGHTS, "asym_decoder", manifest)
    assert next(dec.parameters()).dtype == torch.float32
    size = sum(p.stat().st_size for p in (loader.WEIGHTS / "asymmetric_decoder").iterdir())
    assert size < 2e6


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mask_blend(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4),
                            torch.zeros(1, 1, 8, 8)), "differ"),  # fmt: skip
        (lambda: feature_plan(()), "positive"),
        (lambda: AsymmetricDecoder(block_out_channels=(30, 64, 64)), "divisible"),
        (lambda: AsymmetricDecoder()(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 32, 32)),
         "both"),  # fmt: skip
        (lambda: AsymmetricDecoder()(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 32, 32),
                                     torch.zeros(1, 3, 32, 32)), "shape"),  # fmt: skip
        (lambda: decode_masked(AsymmetricDecoder(), torch.zeros(1, 4, 8, 8),
                               torch.full((1, 3, 32, 32), 2.0), torch.zeros(1, 1, 32, 32)),
         "0, 1"),  # fmt: skip
        (lambda: random_masks(0, np.random.default_rng(0)), "n >= 1"),
        (lambda: random_masks(2, np.random.default_rng(0), kind="star"), "kind"),
        (lambda: latent_mask(torch.zeros(1, 1, 30, 30), 4), "divide"),
        (lambda: region_psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4),
                             torch.zeros(1, 1, 4, 4)), "empty"),  # fmt: skip
        (lambda: boundary_gradient_error(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4),
                                         torch.ones(1, 1, 4, 4)), "border"),  # fmt: skip
        (lambda: border_band(torch.zeros(1, 1, 4, 4), 0), "width"),
        (lambda: AsymmetricDecoder.from_autoencoder(models.autoencoder(), width_mult=0),
         "positive"),  # fmt: skip
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_training_stage_runs(vae, tmp_path):
    """One step of the ``asym_decoder`` stage on a tiny batch; a missed criterion fails loudly."""
    from lib.diffusion.testbed import train as training
    from lib.diffusion.testbed.train_asymmetric_decoder import (
        masks_for_training,
        train_asymmetric_decoder,
    )

    torch.set_num_threads(1)
    model, record = train_asymmetric_decoder(tmp_path, 0, vae, max_steps=1, eval_every=1,
                                             batch_size=2, n_val=4, gain_target=-1e9,
                                             margin=1e9)  # fmt: skip
    assert record["steps"] == 1 and next(model.parameters()).dtype == torch.float16
    with pytest.raises(training.StageFailed, match="no quality criterion"):
        train_asymmetric_decoder(tmp_path / "x", 0, vae, max_steps=1, eval_every=1,
                                 batch_size=2, n_val=4, gain_target=1e9)  # fmt: skip
    full = masks_for_training(64, np.random.default_rng(0), p_full=1.0)
    assert (full == 1).all()
    with pytest.raises(ValueError, match="p_full"):
        masks_for_training(2, np.random.default_rng(0), p_full=2.0)
