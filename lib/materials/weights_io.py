"""Load the CDVAE chapter's shipped weights after checking their SHA-256 hashes."""

from __future__ import annotations

import json
from pathlib import Path

from lib.util.shipped_weights import load_verified

WEIGHTS = Path(__file__).resolve().parent / "weights" / "periodic_score_vae"


def manifest(folder: Path = WEIGHTS) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}: run "
                                "`python -m lib.materials.train_periodic_score_vae`")
    return json.loads(path.read_text())


def load_models(folder: Path = WEIGHTS) -> dict:
    """The three trained models ("periodic", "nonperiodic", "direct"), in eval mode; raises
    ``ValueError`` when a file's hash does not match the manifest."""
    from lib.materials.periodic_score_vae import CrystalVAE, DirectDecoderVAE

    info = manifest(folder)
    net = info["training"]["net"]
    models = {"periodic": CrystalVAE(**net, periodic=True),
              "nonperiodic": CrystalVAE(**net, periodic=False),
              "direct": DirectDecoderVAE(**net)}
    for name, model in models.items():
        path = Path(folder) / f"{name}.safetensors"
        model.load_state_dict(load_verified(path, info["sha256"].get(path.name)))
        model.eval()
    return models
