"""Shipped safetensors weights: the SHA-256 digest and a load that refuses a file whose digest
does not match its manifest (nothing is unpickled)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, expected: str | None) -> Path:
    """``path`` after checking that it exists and its SHA-256 equals ``expected``.

    Raises ``ValueError`` when the file or its expected digest is missing, or the digests differ.
    """
    path = Path(path)
    if expected is None or not path.is_file():
        raise ValueError(f"{path} or its hash in the manifest is missing")
    if (actual := sha256_file(path)) != expected:
        raise ValueError(f"SHA-256 of {path} is {actual}, the manifest says {expected}")
    return path


def load_verified(path: str | Path, expected: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file after checking its SHA-256 against ``expected``.

    Raises ``ValueError`` when the file or its expected digest is missing, or the digests differ.
    """
    from safetensors.torch import load_file

    return load_file(str(verify_file(path, expected)))
