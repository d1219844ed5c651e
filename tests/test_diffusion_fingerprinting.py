"""WOUAF weight modulation (lib.diffusion.fingerprinting) and post-processing (lib.vision)."""

import pytest
import torch
import torch.nn.functional as F

from lib.diffusion.fingerprinting import (
    FingerprintModulation,
    ModulatedDecoder,
    attribute,
    bit_accuracy,
    fingerprint_loss,
    modulated_layer_names,
    psnr,
    random_fingerprints,
)
from lib.diffusion.testbed import models
from lib.vision.postprocess import (
    crop_resize,
    dct_quantise,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    quality_table,
    random_postprocess,
)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    vae = models.autoencoder().eval()
    mod = FingerprintModulation.for_decoder(vae.decoder, bits=8, style_dim=16)
    return vae, ModulatedDecoder(vae, mod)


def test_layers_are_the_official_ones(decoder):
    vae, _ = decoder
    names = [n for n, _ in modulated_layer_names(vae.decoder)]
    assert "mid_block.attentions.0.to_q" in names and "up_blocks.2.resnets.1.conv2" in names
    assert not any("conv_in" in n or "conv_out" in n or "shortcut" in n for n in names)


def test_no_bits_is_the_original_decoder_and_bake_matches(decoder):
    vae, md = decoder
    z = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        plain = ((vae.decode(z / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(md.decode(z), plain)
        bits = random_fingerprints(3, 8, torch.Generator().manual_seed(1))
        batched = md.decode(z, bits)
        for i in range(3):
            user = md.bake(bits[i])
            own = ((user.decode(z[i:i + 1] / user.config.scaling_factor).sample + 1) / 2)
            torch.testing.assert_close(batched[i:i + 1], own.clamp(0, 1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], plain[0])


def test_input_scaling_equals_weight_modulation():
    conv = torch.nn.Conv2d(5, 4, 3, padding=1)
    x, s = torch.randn(2, 5, 6, 6), torch.rand(2, 5) + 0.5
    w = s[:, None, :, None, None] * conv.weight[None]
    grouped = F.conv2d(x.reshape(1, 10, 6, 6), w.reshape(8, 5, 3, 3), padding=1, groups=2)
    expected = grouped.reshape(2, 4, 6, 6) + conv.bias[None, :, None, None]
    torch.testing.assert_close(conv(x * s[:, :, None, None]), expected, atol=1e-5, rtol=1e-5)


def test_metrics_and_attribution():
    bits = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 0]])
    logits = torch.tensor([[2.0, -1, 3, -0.5], [-1.0, -1, 1, -2]])
    torch.testing.assert_close(bit_accuracy(logits, bits), torch.tensor([0.75, 1.0]))
    registry = torch.cat([torch.zeros(1, 4), bits])
    assert attribute(logits, registry).tolist() == [1, 2]
    x = torch.rand(2, 3, 8, 8)
    assert torch.isclose(psnr((x + 0.1).clamp(0, 1) * 0 + 0.5, torch.full_like(x, 0.6)),
                         torch.tensor(20.0)).all()
    users = random_fingerprints(200, 8, torch.Generator().manual_seed(0), distinct=True)
    assert torch.unique(users, dim=0).shape[0] == 200


def test_training_step_reduces_bit_loss(decoder):
    vae, _ = decoder
    torch.manual_seed(0)
    mod = FingerprintModulation.for_decoder(vae.decoder, bits=4, style_dim=8)
    md = ModulatedDecoder(vae, mod)
    opt = torch.optim.Adam(mod.parameters(), lr=3e-3)
    z, g = torch.randn(8, 4, 8, 8), torch.Generator().manual_seed(0)
    bits = random_fingerprints(8, 4, g)
    ref = md.decode(z).detach()
    losses = []
    for _ in range(25):
        x = md.decode(z, bits)
        loss, parts = fingerprint_loss(mod.read_bits(x), bits, x, ref, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["bce"])
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in md.vae.parameters())


def test_postprocess_shapes_and_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    for y in (gaussian_blur(x, 1.0), gaussian_noise(x, 0.1, g), crop_resize(x, 0.75),
              dct_quantise(x, 50), jpeg(x, 50), random_postprocess(x, g, p=1.0)):
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    torch.testing.assert_close(crop_resize(x, 1.0), x)
    assert (dct_quantise(x, 100) - x).abs().max() < 0.02
    smooth = gaussian_blur(x, 2.0)
    err_dct = (dct_quantise(smooth, 50) - smooth).abs().mean()
    err_jpeg = (jpeg(smooth, 50) - smooth).abs().mean()
    assert 0.2 < float(err_dct / err_jpeg) < 5
    assert quality_table(50)[0, 0] == 16
    x.requires_grad_(True)
    dct_quantise(x, 50).sum().backward()
    assert x.grad.abs().sum() > 0


def test_bad_input():
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, -1)
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(x, -0.1)
    with pytest.raises(ValueError, match="keep"):
        crop_resize(x, 0)
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 0)
    with pytest.raises(ValueError, match="multiples of 8"):
        dct_quantise(torch.rand(1, 3, 12, 12), 50)
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        gaussian_blur(torch.rand(3, 32, 32), 1.0)
    with pytest.raises(ValueError, match="p must"):
        random_postprocess(x, torch.Generator(), p=2)
    with pytest.raises(ValueError, match="distinct"):
        random_fingerprints(5, 2, distinct=True)
    with pytest.raises(ValueError, match="differ"):
        bit_accuracy(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="registry"):
        attribute(torch.zeros(2, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="non-negative"):
        fingerprint_loss(torch.zeros(1, 2), torch.zeros(1, 2), x, x, -1.0)
    with pytest.raises(ValueError, match="equal length"):
        FingerprintModulation(4, 8, ["a"], [1, 2])
    vae = models.autoencoder()
    mod = FingerprintModulation.for_decoder(vae.decoder, bits=4, style_dim=8)
    md = ModulatedDecoder(vae, mod)
    with pytest.raises(ValueError, match="0/1 bits"):
        md.decode(torch.randn(1, 4, 8, 8), torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match="shape"):
        md.decode(torch.randn(1, 4, 8, 8), torch.ones(1, 5))
    with pytest.raises(ValueError, match="fingerprints for"):
        md.decode(torch.randn(2, 4, 8, 8), torch.ones(1, 4))
    with pytest.raises(ValueError, match="decoder has no"):
        modulated_layer_names(torch.nn.Linear(2, 2))
