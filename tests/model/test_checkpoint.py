"""Checkpoint round trip is bit-exact; corrupted or mismatched folders are refused with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from evotok.model.checkpoint import CheckpointError, load_model, load_weights, save_weights
from evotok.model.config import get_preset
from evotok.model.evotok import EvoTok


def test_round_trip_is_bit_exact(tiny_weights: Path) -> None:
    model, loaded = load_model(tiny_weights)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state[key]), key
    again = load_weights(tiny_weights)
    assert again.hash == loaded.hash
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model2, _ = load_model(tiny_weights)
    assert torch.equal(model.encode(x), model2.encode(x))
    assert torch.equal(model.decode(model.encode(x)), model2.decode(model2.encode(x)))


def test_save_load_save_gives_same_hash(tiny_weights: Path, tmp_path: Path) -> None:
    model, loaded = load_model(tiny_weights)
    assert save_weights(model, tmp_path) == loaded.hash


def test_flipped_byte_is_refused(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_weights, folder)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_weights(folder)


def test_truncated_file_is_refused(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_weights, folder)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_weights(folder)


def test_missing_files_and_config_mismatch(tiny_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(tmp_path)
    folder = tmp_path / "m"
    shutil.copytree(tiny_weights, folder)
    card = json.loads((folder / "config.json").read_text())
    card["config"]["quantizer"]["codebook_size"] = 31
    (folder / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="disagree"):
        load_weights(folder)


def test_weights_for_another_config_are_refused(tmp_path: Path) -> None:
    cfg = get_preset("evotok-tiny")
    other = cfg.replace(semantic_decoder=cfg.semantic_decoder.__class__(depth=4, width=24, num_blocks=1, num_heads=2, out_dim=16))
    folder = tmp_path / "m"
    save_weights(EvoTok(other).eval(), folder)
    # rewrite the config in both places to claim the original config: load must name the mismatch
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    from evotok.model.checkpoint import content_hash

    digest = content_hash(state)
    save_file(state, str(folder / "model.safetensors"),
              metadata={"format": "evotok/1", "config": json.dumps(cfg.to_dict()), "content_sha256": digest})
    card = json.loads((folder / "config.json").read_text())
    card["config"] = cfg.to_dict()
    (folder / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not match config"):
        load_model(folder)
