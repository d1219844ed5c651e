"""The MiniSD components, sampling loops, training script and shipped weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lib.diffusion import sampling
from lib.diffusion.testbed import loader, models
from lib.diffusion.testbed import train as training
from lib.diffusion.testbed.data import COLOURS, SHAPES
from lib.diffusion.testbed.evaluators import caption_accuracy, load_caption_classifier


def _random_dit(seed: int = 0, depth: int = 2) -> models.MiniDiT:
    torch.manual_seed(seed)
    dit = models.MiniDiT(width=32, depth=depth, heads=2)
    # adaLN-zero starts every branch at zero; perturb so that the tests see real attention.
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit.eval()


# ----------------------------------------------------------------------------- components


def test_component_sizes_and_shapes():
    vae, unet, text = models.autoencoder(), models.unet(), models.text_encoder()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.mean
    assert z.shape == (2, 4, 8, 8)
    assert vae.decode(z).sample.shape == x.shape
    states = text(torch.tensor([[26, 1, 7, 27] + [0] * 12] * 2))[0]
    assert states.shape == (2, 16, models.TEXT_WIDTH)
    assert unet(z, torch.tensor([10, 500]), encoder_hidden_states=states).sample.shape == z.shape
    total = sum(models.parameter_count(m) for m in (vae, unet, text, models.MiniDiT()))
    assert total < 5_000_000  # fp32 weights well under the 20 MB budget


def test_dit_subset_with_fresh_cache_equals_dense():
    dit = _random_dit()
    x, text = torch.randn(3, 4, 8, 8), torch.randn(3, 16, models.TEXT_WIDTH)
    cache = models.KVCache.empty(len(dit.blocks))
    with torch.no_grad():
        dense = dit(x, 0.4, text, kv_cache=cache)
        active = torch.tensor([0, 7, 9, 33, 63])
        subset = dit(x, 0.4, text, active=active, kv_cache=cache)
        alone = dit(x, 0.4, text, active=active)
    assert cache.filled
    torch.testing.assert_close(subset, dit.tokens_of(dense)[:, active], atol=1e-5, rtol=1e-5)
    # Without the cache the active tokens see only each other: a different result.
    assert (alone - subset).abs().max() > 1e-3


def test_dit_per_sample_subsets_match_shared_ones():
    dit = _random_dit(2)
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 16, models.TEXT_WIDTH)
    rows = torch.tensor([[0, 5, 9], [3, 4, 60]])
    cache = models.KVCache.empty(len(dit.blocks))
    with torch.no_grad():
        dit(x, 0.5, text, kv_cache=cache)
        both = dit(x, 0.5, text, active=rows, kv_cache=models.KVCache(list(cache.keys),
                                                                      list(cache.values)))
        for i in range(2):
            one = models.KVCache([k[i : i + 1] for k in cache.keys],
                                 [v[i : i + 1] for v in cache.values])  # fmt: skip
            alone = dit(x[i : i + 1], 0.5, text[i : i + 1], active=rows[i], kv_cache=one)
            torch.testing.assert_close(both[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_dit_subset_uses_refreshed_keys():
    # One block: the unchanged tokens' keys depend on their own input only (deeper blocks mix
    # tokens, so there the cached keys of inactive tokens go stale, which RAS accepts).
    dit = _random_dit(1, depth=1)
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 16, models.TEXT_WIDTH)
    cache = models.KVCache.empty(len(dit.blocks))
    with torch.no_grad():
        dit(x, 0.7, text, kv_cache=cache)
        x2 = x.clone()
        x2[:, :, 0, :4] += 1.0  # tokens 0..3 change
        out = dit(x2, 0.7, text, active=torch.arange(8), kv_cache=cache)
        dense2 = dit(x2, 0.7, text)
    # Tokens 0..7 include every changed token, so their fresh keys make the result exact.
    torch.testing.assert_close(out, dit.tokens_of(dense2)[:, :8], atol=1e-5, rtol=1e-5)


def test_dit_bad_input():
    dit = _random_dit()
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 16, models.TEXT_WIDTH)
    with pytest.raises(ValueError, match="active token indices"):
        dit(x, 0.5, text, active=torch.tensor([64]))
    with pytest.raises(ValueError, match="non-empty"):
        dit(x, 0.5, text, active=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        dit(x, 0.5, text, active=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="empty: run a dense pass"):
        dit(x, 0.5, text, active=torch.tensor([1]), kv_cache=models.KVCache.empty(2))
    with pytest.raises(ValueError, match="H\\*W"):
        dit(torch.randn(1, 4, 4, 4), 0.5, text)
    with pytest.raises(ValueError, match="divisible"):
        models.MiniDiT(width=30, heads=4)
    with pytest.raises(ValueError, match="'ddim' or 'ddpm'"):
        models.unet_scheduler("euler")


def test_dit_roundtrip_save_load(tmp_path):
    dit = _random_dit()
    dit.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    again = models.MiniDiT.from_pretrained(tmp_path, use_safetensors=True)
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 16, models.TEXT_WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(again(x, 0.3, text), dit(x, 0.3, text))


# ------------------------------------------------------------------------------- sampling


def test_guidance_formula():
    out = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    torch.testing.assert_close(sampling.guided(out, 3.0), torch.full((2, 3), 3.0))


class _ConstantVelocity(torch.nn.Module):
    def __init__(self, v: float) -> None:
        super().__init__()
        self.v = v

    def forward(self, x, sigma, states):
        return torch.full_like(x, self.v)


def test_flow_sampler_integrates_velocity():
    # x1 = noise, dx/dsigma = v: Euler from sigma=1 to 0 gives x0 = noise - v exactly.
    noise = torch.randn(2, 4, 8, 8)
    states, empty = torch.zeros(2, 16, 64), torch.zeros(1, 16, 64)
    out = sampling.sample_flow(_ConstantVelocity(0.5), models.dit_scheduler(), states, empty,
                               steps=7, guidance=2.0, latents=noise.clone())  # fmt: skip
    torch.testing.assert_close(out, noise - 0.5, atol=1e-5, rtol=1e-5)


def test_sampler_bad_input():
    states, empty = torch.zeros(1, 16, 64), torch.zeros(1, 16, 64)
    with pytest.raises(ValueError, match="steps"):
        sampling.sample_flow(_ConstantVelocity(0.0), models.dit_scheduler(), states, empty,
                             steps=0)  # fmt: skip
    with pytest.raises(ValueError, match="guidance"):
        sampling.sample_unet(models.unet(), models.unet_scheduler(), states, empty, guidance=0.5)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        sampling.encode(models.autoencoder(), torch.full((1, 3, 32, 32), 2.0))


# ------------------------------------------------------------------------ training script


def test_training_stages_run(tmp_path):
    """A few steps of every stage on tiny batches: the script works end to end."""
    torch.set_num_threads(1)
    text, record = training.train_text_encoder(tmp_path, 0, max_steps=2, eval_every=1,
                                               batch_size=16, target=0.0)  # fmt: skip
    assert record["steps"] == 1 and not any(p.requires_grad for p in text.parameters())
    vae, record = training.train_vae(tmp_path, 0, max_steps=2, eval_every=1, batch_size=4,
                                     psnr_target=0.0, accuracy_target=0.0, n_val=16,
                                     n_scale=32)  # fmt: skip
    assert vae.config.scaling_factor > 0 and np.isfinite(record["history"][0]["psnr"])
    for fn in (training.train_unet, training.train_dit):
        model, record = fn(tmp_path, 0, text, vae, max_steps=2, eval_every=1, batch_size=4,
                           pool_size=16, n_prompts=4, target=0.0)  # fmt: skip
        assert record["steps"] == 1 and 0.0 <= record["history"][0]["caption_accuracy"] <= 1.0
    # A stage that misses its criterion fails loudly instead of shipping weights.
    with pytest.raises(training.StageFailed, match="no quality criterion"):
        training.train_text_encoder(tmp_path / "x", 0, max_steps=1, eval_every=1, batch_size=8,
                                    target=2.0)  # fmt: skip


def test_checkpoint_resumes(tmp_path):
    module = torch.nn.Linear(2, 2)
    ckpt = training.Checkpoint(tmp_path, "demo")
    ckpt.save({"m": module}, 7, [{"step": 7}])
    other = torch.nn.Linear(2, 2)
    step, history = ckpt.load({"m": other})
    assert step == 7 and history == [{"step": 7}]
    torch.testing.assert_close(other.weight, module.weight)


# -------------------------------------------------------------------------- shipped weights


def test_manifest_covers_every_shipped_file():
    manifest = loader.read_manifest()
    for part in ("tokenizer", "scheduler", "flow_scheduler", "text_encoder", "vae", "unet", "dit",
                 "asym_decoder"):
        loader.verify(loader.WEIGHTS, manifest, [part])
        assert part in manifest["training"] or part in ("tokenizer", "scheduler",
                                                        "flow_scheduler")  # fmt: skip
    shipped = {str(p.relative_to(loader.WEIGHTS)) for p in loader.WEIGHTS.rglob("*")
               if p.is_file() and p.parts[-2] in loader.FOLDERS.values()}  # fmt: skip
    assert shipped == set(manifest["sha256"])
    size = sum(p.stat().st_size for p in loader.WEIGHTS.rglob("*") if p.is_file()
               and ".resume" not in p.parts)  # fmt: skip
    # testbed II adds about 4 MB (flawed UNet, OMS, LoRAs) and 6.3 MB (the three texture stages)
    assert size < 30e6


def test_tampered_weights_are_refused(tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(loader.WEIGHTS, folder, ignore=shutil.ignore_patterns(".resume"))
    target = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        loader.load("mini", path=folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = {k: v for k, v in manifest["sha256"].items() if not k.startswith("unet")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="records no files"):
        loader.load_component(folder, "unet")


def test_loader_bad_input():
    with pytest.raises(ValueError, match="'mini' or 'sd'"):
        loader.load("sdxl")
    with pytest.raises(ValueError, match="'unet' or 'dit'"):
        loader.load("mini", denoiser="vit")
    with pytest.raises(ValueError, match="local Stable Diffusion folder"):
        loader.load("sd", path="/nonexistent")


@pytest.mark.parametrize("denoiser", ["unet", "dit"])
def test_shipped_denoisers_follow_colour_and_shape(denoiser):
    """20-step guided samples from the shipped weights: caption accuracy >= 0.8 (colour+shape)."""
    torch.set_num_threads(1)
    model = loader.load("mini", denoiser=denoiser)
    rng = np.random.default_rng(123)
    prompts = [f"a {COLOURS[rng.integers(6)]} {SHAPES[rng.integers(4)]}" for _ in range(48)]
    images = model.sample(prompts, steps=20, guidance=3.0, seed=5)
    assert images.shape == (48, 3, 32, 32)
    acc = caption_accuracy(load_caption_classifier(), images, prompts)
    assert acc.accuracy >= 0.8, acc


def test_parallel_lanes_cover_every_stage_once():
    from lib.diffusion.testbed import train

    lanes = [s for lane in train.LANES for s in lane]
    assert len(lanes) == len(set(lanes)) and not set(lanes) & set(train.BASE_STAGES)
    assert set(lanes) | set(train.BASE_STAGES) == set(train.STAGES)
    # A lane's stage may depend on an earlier stage of its own lane, never on the other lane.
    order = {s: (i, lane.index(s)) for i, lane in enumerate(train.LANES) for s in lane}
    assert order["flawed_unet"][1] < order["oms"][1] < order["flawed_style_lora"][1]
    assert order["flawed_unet"][0] == order["flawed_style_lora"][0]
    assert order["texture_classifier"][1] < order["texture_unet"][1] < order["texture_lcm"][1]
    assert order["texture_classifier"][0] == order["texture_unet"][0] == order["texture_lcm"][0]
