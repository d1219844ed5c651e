"""Stages flawed_unet / oms of make testbed: shipped hashes, records, schedule; brightness."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DDIMScheduler

from lib.diffusion.testbed import loader
from lib.diffusion.testbed.brightness import background_brightness, spread
from lib.diffusion.testbed.data import generate
from lib.diffusion.testbed.train_flawed_schedule import TERMINAL_SIGNAL, flawed_scheduler

STAGES = ("flawed_unet", "oms", "flawed_style_lora")


def test_shipped_hashes_and_records():
    manifest = loader.read_manifest()
    for stage in STAGES:
        loader.verify(loader.WEIGHTS, manifest, [stage])
        record = manifest["training"][stage]
        assert record["seconds"] < 600 and record["threads"] == 1
    assert manifest["training"]["flawed_unet"]["fine_tuned_from"] == "unet"
    assert manifest["training"]["flawed_unet"]["final"]["caption_accuracy"] >= 0.9
    assert manifest["training"]["flawed_style_lora"]["fine_tuned_from"].startswith("the flawed")
    final = manifest["training"]["oms"]["final"]
    assert final["dark_brightness"] < 0.25 < 0.75 < final["bright_brightness"]
    for f in ("flawed_unet/diffusion_pytorch_model.safetensors",
              "oms/diffusion_pytorch_model.safetensors",
              "flawed_style_lora/adapter_model.safetensors"):
        assert (loader.WEIGHTS / f).stat().st_size < 2.5e6


def test_shipped_scheduler_is_the_flawed_one():
    shipped = DDIMScheduler.from_pretrained(loader.WEIGHTS / "flawed_unet")
    assert float(shipped.alphas_cumprod[-1]) ** 0.5 == pytest.approx(TERMINAL_SIGNAL, abs=1e-6)
    assert shipped.config.beta_end == pytest.approx(flawed_scheduler().config.beta_end)
    unet = loader.load_component(loader.WEIGHTS, "flawed_unet")
    assert next(unet.parameters()).dtype.is_floating_point


def test_background_brightness_tracks_the_generator():
    data = generate(512, seed=3, split="train")
    b = background_brightness(data.images_tensor())
    assert np.corrcoef(b, data.labels.brightness)[0, 1] > 0.99
    assert spread(np.arange(101.0)) == pytest.approx(80.0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        background_brightness(np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="rows"):
        background_brightness(np.zeros((2, 3, 32, 32)), rows=0)
    with pytest.raises(ValueError, match="two values"):
        spread(np.zeros(1))
    with pytest.raises(ValueError, match="low < high"):
        spread(np.zeros(5), 90, 10)
