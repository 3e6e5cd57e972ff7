"""Well-known locations: the shipped weights and the engine cache.

Each is resolved in the same order: the environment variable, else the source checkout this package runs
from (an editable install, ``make venv``), else what an installed wheel carries or a per-user folder:

* weights: ``$EVOTOK_WEIGHTS``, else ``<checkout>/weights/evotok-small``, else the packaged copy
  ``evotok/_shipped/evotok-small`` (the wheel maps ``weights/`` to ``evotok._shipped``; the model folder comes
  with its ready ONNX export in ``onnx/``, read in place, see ``evotok.export.onnx_export.ensure_exported``);
* engine cache: ``$EVOTOK_CACHE_DIR``, else ``<checkout>/.cache/evotok``, else ``$XDG_CACHE_HOME/evotok``
  (``~/.cache/evotok``): exports for other weights never go into site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SHIPPED_MODEL = "evotok-small"
PACKAGED_WEIGHTS = PACKAGE_DIR / "_shipped" / SHIPPED_MODEL


def in_checkout() -> bool:
    """True when this package runs from a source checkout (``evotok/`` beside ``pyproject.toml``), not from
    site-packages."""
    return (REPO_ROOT / "pyproject.toml").is_file()  # this file is REPO_ROOT/evotok/paths.py either way


def default_weights_dir() -> Path:
    """The shipped small model: ``$EVOTOK_WEIGHTS``, else ``weights/evotok-small`` in the checkout, else the
    copy inside the installed package. When none exists, the checkout path (for the error message)."""
    env = os.environ.get("EVOTOK_WEIGHTS")
    if env:
        return Path(env)
    checkout = REPO_ROOT / "weights" / SHIPPED_MODEL
    if in_checkout() and checkout.is_dir():
        return checkout
    if (PACKAGED_WEIGHTS / "config.json").is_file():
        return PACKAGED_WEIGHTS
    return checkout


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/evotok``, else ``~/.cache/evotok``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "evotok"


def default_cache_dir() -> Path:
    """Where exported engines go: ``$EVOTOK_CACHE_DIR``, else ``.cache/evotok`` in the checkout, else the
    user cache dir (never site-packages)."""
    env = os.environ.get("EVOTOK_CACHE_DIR")
    if env:
        return Path(env)
    if in_checkout():
        return REPO_ROOT / ".cache" / "evotok"
    return user_cache_dir()
