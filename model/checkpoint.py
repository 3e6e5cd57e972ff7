"""Weights on disk: ``model.safetensors`` + ``config.json``, with a content hash checked on load.

Layout of a model folder::

    model.safetensors   tensors; metadata: {"format": "evotok/1", "config": <json>, "content_sha256": <hex>}
    config.json         {"format", "name", "hash", "config": {...}, "provenance": {...}, "metrics": {...}}
    golden.npz          (optional) fixed images + fp32 reference codes for the runtime self-test

The hash covers every tensor's name, dtype, shape and bytes (sorted by name), so it identifies the
weights independently of file layout. No pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# The card (config.json) part is torch-free, in model/card.py; re-exported here for existing callers.
from evotok.model.card import CONFIG_FILE as CONFIG_FILE
from evotok.model.card import FORMAT as FORMAT
from evotok.model.card import WEIGHTS_FILE as WEIGHTS_FILE
from evotok.model.card import CheckpointError as CheckpointError
from evotok.model.card import read_card as read_card
from evotok.model.config import EvoTokConfig


def content_hash(state: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class LoadedWeights:
    config: EvoTokConfig
    state: dict[str, Tensor]
    hash: str
    card: dict[str, Any] = field(default_factory=dict)  # config.json contents (provenance, metrics)


def inference_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's persistent state dict, detached and contiguous on CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(
    model: torch.nn.Module,
    folder: Path | str,
    *,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Write ``model.safetensors`` and ``config.json``; returns the content hash."""
    from safetensors.torch import save_file

    cfg: EvoTokConfig = model.cfg  # type: ignore[assignment]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = inference_state(model)
    digest = content_hash(state)
    meta = {"format": FORMAT, "config": json.dumps(cfg.to_dict()), "content_sha256": digest}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(folder / WEIGHTS_FILE)
    card = {
        "format": FORMAT,
        "name": cfg.name,
        "hash": digest,
        "config": cfg.to_dict(),
        "provenance": dict(provenance or {}),
        "metrics": dict(metrics or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return digest


def load_weights(folder: Path | str, *, verify: bool = True) -> LoadedWeights:
    """Read a model folder; checks the format, the config and (unless ``verify=False``) the content hash."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    card = read_card(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    try:
        cfg = EvoTokConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad or missing config metadata ({e})") from e
    try:
        card_cfg = EvoTokConfig.from_dict(card["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad model config ({e})") from e
    if card_cfg != cfg:
        raise CheckpointError(f"{folder}: config.json and the weights file disagree on the model config")
    digest = content_hash(state)
    if verify:
        expected = {meta.get("content_sha256"), card.get("hash")}
        if expected != {digest}:
            raise CheckpointError(
                f"{path}: content hash mismatch (file says {meta.get('content_sha256')}, config.json says "
                f"{card.get('hash')}, tensors hash to {digest}); the file is corrupted or was modified"
            )
    return LoadedWeights(config=cfg, state=state, hash=digest, card=card)


def load_model(folder: Path | str, *, verify: bool = True, device: str = "cpu") -> tuple[Any, LoadedWeights]:
    """Build the model from a folder and load its weights strictly, in eval mode."""
    from evotok.model.evotok import EvoTok

    loaded = load_weights(folder, verify=verify)
    model = EvoTok(loaded.config, pretrained_backbone=False)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(loaded.state))
    unexpected = sorted(set(loaded.state) - set(ours))
    wrong = [k for k in set(ours) & set(loaded.state) if ours[k].shape != loaded.state[k].shape]
    if wrong:
        k = sorted(wrong)[0]
        raise CheckpointError(
            f"{folder}: weights do not match config {loaded.config.name!r}: {len(wrong)} tensors have other shapes, "
            f"e.g. {k}: file {tuple(loaded.state[k].shape)} vs config {tuple(ours[k].shape)}"
        )
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match config {loaded.config.name!r}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    model.load_state_dict(loaded.state, strict=True)
    return model.to(device).eval(), loaded
