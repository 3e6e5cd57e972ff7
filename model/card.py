"""The model card of a model folder (``config.json``), readable without torch (runtimes, the API in Redis mode)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "evotok/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A model folder cannot be loaded; the message says what is wrong and where."""


def read_card(folder: Path | str) -> dict[str, Any]:
    """``<folder>/config.json`` as a dict; raises ``CheckpointError`` if missing, not JSON or another format."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a model folder needs {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if card.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {card.get('format')!r}, expected {FORMAT!r}")
    return card
