"""The model card without a Runtime: read ``config.json`` beside the weights (used by the API in Redis mode).

In ``EVOTOK_QUEUE=redis`` mode the API process holds no model (and may have no torch installed);
``GET /info`` and request validation (grid, depths, codebook size) come from the model folder's
``config.json`` (``{"format", "name", "hash", "config": {...}, "metrics": {...}}``, written by
``evotok.model.checkpoint``). Parsing uses the torch-free ``EvoTokConfig`` and the same
``evotok.export.boundary.model_info`` mapping the runtimes use, so both sides report the same card.
"""

from __future__ import annotations

import json
from pathlib import Path

from evotok.export.boundary import model_info
from evotok.export.types import ModelInfo
from evotok.model.config import EvoTokConfig


def load_model_info(weights_dir: Path | str, backend: str = "remote", precision: str = "fp32") -> ModelInfo:
    """``ModelInfo`` from ``<weights_dir>/config.json`` (raises FileNotFoundError / ValueError)."""
    path = Path(weights_dir) / "config.json"
    card = json.loads(path.read_text())
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict) or "hash" not in card:
        raise ValueError(f"{path}: expected a model card with 'hash' and a 'config' object")
    cfg = EvoTokConfig.from_dict(card["config"])
    return model_info(card, cfg, str(card["hash"]), backend=backend, precision=precision, providers=())
