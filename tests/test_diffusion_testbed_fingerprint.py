"""The shipped WOUAF stages of the testbed: hashes, sizes, and that they load onto the decoder."""

import torch

from lib.diffusion.fingerprinting import ModulatedDecoder
from lib.diffusion.testbed import loader

STAGES = ("fingerprint", "fingerprint_plain")


def test_fingerprint_hashes_and_records():
    manifest = loader.read_manifest()
    for stage in STAGES:
        loader.verify(loader.WEIGHTS, manifest, [stage])
        record = manifest["training"][stage]
        assert record["bits"] == 16 and record["augment"] == (stage == "fingerprint")
        folder = loader.WEIGHTS / loader.FOLDERS[stage]
        assert sum(p.stat().st_size for p in folder.iterdir()) < 2e6


def test_fingerprint_parts_modulate_the_shipped_decoder():
    vae = loader.load_component(loader.WEIGHTS, "vae")
    part = loader.load_component(loader.WEIGHTS, "fingerprint")
    decoder = ModulatedDecoder(vae, part)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = decoder.decode(z, torch.tensor([[0.0, 1] * 8, [1.0, 0] * 8]))
        assert part.read_bits(x).shape == (2, 16)
