"""The shipped texture stages of the testbed (texture_classifier, texture_unet, texture_lcm):
hashes, training records, sizes, and that the distilled model draws what it is asked for."""

import numpy as np
import torch

from lib.diffusion.testbed import loader
from lib.diffusion.testbed.texture_model import TextureDenoiser, sample_maps
from lib.diffusion.testbed.train_textures import judge_textures, validation_captions
from lib.vision.tileability import seam_score

STAGES = ("texture_classifier", "texture_unet", "texture_lcm")


def test_texture_hashes_records_and_sizes():
    manifest = loader.read_manifest()
    for stage in STAGES:
        loader.verify(loader.WEIGHTS, manifest, [stage])
        record = manifest["training"][stage]
        assert record["threads"] == 1 and record["steps"] > 0
        folder = loader.WEIGHTS / loader.FOLDERS[stage]
        assert sum(p.stat().st_size for p in folder.iterdir()) < 3e6
    final = {s: manifest["training"][s]["final"] for s in STAGES}
    assert min(final["texture_classifier"]["family"], final["texture_classifier"]["colour"]) > 0.9
    assert final["texture_unet"]["family"] >= 0.85 and final["texture_lcm"]["family"] >= 0.8


def test_shipped_lcm_draws_the_caption_in_four_steps():
    judge = loader.load_component(loader.WEIGHTS, "texture_classifier")
    model = loader.load_component(loader.WEIGHTS, "texture_lcm")
    assert isinstance(model, TextureDenoiser) and next(model.parameters()).dtype == torch.float32
    captions = validation_captions(seed=5, n=32)
    maps = sample_maps(model, captions, mode="feature", steps=4, seed=1)
    scores = judge_textures(judge, maps[:, :3], captions)
    assert scores["colour"] > 0.8 and scores["family"] > 0.6  # chance: 1/6 and 1/8
    assert float(np.median(seam_score(maps[:, :3].numpy()))) < 1.5
