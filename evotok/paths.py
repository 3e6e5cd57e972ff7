"""Well-known locations: the shipped weights and the engine cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = "evotok-small"


def default_weights_dir() -> Path:
    """The shipped small model: ``$EVOTOK_WEIGHTS`` if set, else ``weights/evotok-small`` in the checkout."""
    env = os.environ.get("EVOTOK_WEIGHTS")
    if env:
        return Path(env)
    return REPO_ROOT / "weights" / SHIPPED_MODEL


def default_cache_dir() -> Path:
    """Where exported engines go: ``$EVOTOK_CACHE_DIR`` if set, else ``.cache/evotok`` beside the weights' repo."""
    env = os.environ.get("EVOTOK_CACHE_DIR")
    if env:
        return Path(env)
    return REPO_ROOT / ".cache" / "evotok"
