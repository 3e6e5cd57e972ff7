"""The model card without a Runtime: read ``config.json`` beside the weights (used by the API in Redis mode).

In ``EVOTOK_QUEUE=redis`` mode the API process holds no model; ``GET /info`` and request validation
(grid, depths, codebook size) come from the model folder's ``config.json``. The file is written by the
model code; the reader accepts the model config either at the top level or under one of the keys
``model`` / ``config`` / ``model_config``, and the hash under ``hash`` / ``weights_hash`` / ``sha256``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evotok.export.types import ModelInfo

_CONFIG_KEYS = ("model", "config", "model_config")
_HASH_KEYS = ("hash", "weights_hash", "sha256", "content_hash")
_REQUIRED = ("image_size", "grid", "num_depths", "codebook_size", "pixel_depth", "semantic_depth", "semantic_dim")


def _model_section(raw: dict[str, Any]) -> dict[str, Any]:
    if all(k in raw for k in _REQUIRED):
        return raw
    for key in _CONFIG_KEYS:
        section = raw.get(key)
        if isinstance(section, dict) and all(k in section for k in _REQUIRED):
            return section
    missing = [k for k in _REQUIRED if k not in raw]
    raise ValueError(f"config.json has no model config with keys {list(_REQUIRED)} (missing at top level: {missing})")


def load_model_info(weights_dir: Path | str, backend: str = "remote", precision: str = "fp32") -> ModelInfo:
    """Build a ``ModelInfo`` from ``<weights_dir>/config.json`` (raises FileNotFoundError / ValueError)."""
    path = Path(weights_dir) / "config.json"
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    cfg = _model_section(raw)
    weights_hash = next((str(raw[k]) for k in _HASH_KEYS if k in raw), "")
    if not weights_hash:
        weights_hash = next((str(cfg[k]) for k in _HASH_KEYS if k in cfg), "unknown")
    name = str(raw.get("name") or cfg.get("name") or Path(weights_dir).name)
    curve = raw.get("semantic_by_depth") or cfg.get("semantic_by_depth") or ()
    return ModelInfo(
        name=name,
        weights_hash=weights_hash,
        image_size=int(cfg["image_size"]),
        grid=int(cfg["grid"]),
        num_depths=int(cfg["num_depths"]),
        codebook_size=int(cfg["codebook_size"]),
        pixel_depth=int(cfg["pixel_depth"]),
        semantic_depth=int(cfg["semantic_depth"]),
        semantic_dim=int(cfg["semantic_dim"]),
        backend=backend,
        precision=precision,
        semantic_by_depth=tuple(float(x) for x in curve),
    )
