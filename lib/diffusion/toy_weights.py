"""Shipped weights of the 2-D rectification miniature: safetensors plus a SHA-256 manifest.

:func:`save_models` writes one ``<name>.safetensors`` per :class:`TimeMLP` and a
``manifest.json`` holding their hashes, the architecture and the training record;
:func:`load_models` checks every hash before reading (only JSON and safetensors are read, so
loading cannot execute code). ``python -m lib.diffusion.train_toy_rectification`` makes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from lib.diffusion.pair_rectification import TimeMLP
from lib.util.shipped_weights import load_verified, sha256_file

WEIGHTS = Path(__file__).resolve().parent / "weights" / "toy_rectification"


def save_models(models: dict[str, TimeMLP], folder: Path, architecture: dict,
                training: dict) -> Path:  # fmt: skip
    """Write each model as ``<name>.safetensors`` and the manifest; returns the manifest path."""
    from safetensors.torch import save_file

    if not models:
        raise ValueError("no models to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, model in models.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        hashes[path.name] = sha256_file(path)
    manifest = {"sha256": hashes, "architecture": architecture, "training": training}
    out = folder / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(folder: Path = WEIGHTS) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing; run "
                         "`python -m lib.diffusion.train_toy_rectification`")
    return json.loads(path.read_text())


def load_models(folder: Path = WEIGHTS) -> tuple[dict[str, TimeMLP], dict]:
    """All models of the manifest, each verified against its SHA-256, in eval mode; and the
    manifest itself (architecture and training record)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    models = {}
    for filename, expected in manifest["sha256"].items():
        model = TimeMLP(**manifest["architecture"])
        model.load_state_dict(load_verified(folder / filename, expected))
        models[filename.removesuffix(".safetensors")] = model.eval().requires_grad_(False)
    return models, manifest
