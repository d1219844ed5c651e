"""lib.util.shipped_weights: digests, and refusals of missing or altered files."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from lib.util.shipped_weights import load_verified, sha256_file, verify_file


def test_digest_matches_hashlib_on_a_file_larger_than_one_chunk(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # 2.3 MB: several 1 MiB chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_load_verified_round_trip_and_refusals(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path))
    digest = sha256_file(path)
    assert torch.equal(load_verified(path, digest)["w"], torch.arange(6.0).reshape(2, 3))
    assert verify_file(path, digest) == path
    with pytest.raises(ValueError, match="hash in the manifest is missing"):
        load_verified(path, None)
    with pytest.raises(ValueError, match="missing"):
        verify_file(tmp_path / "absent.safetensors", digest)
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    with pytest.raises(ValueError, match="SHA-256"):
        load_verified(path, digest)
