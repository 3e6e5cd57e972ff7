"""Turn a training run into a shipped model folder (weights, config with provenance)."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from evotok.model.checkpoint import save_weights


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _stage(folder: Path) -> dict[str, Any]:
    """What a fine-tuning stage started from: the folder's hash and its own training (steps, minutes, recipe)."""
    from evotok.model.card import read_card

    card = read_card(folder)
    prov = card.get("provenance") or {}
    return {"folder": str(folder), "hash": card.get("hash"), "steps": prov.get("steps"),
            "wall_minutes": prov.get("wall_minutes"), "train_config": prov.get("train_config"),
            **({"output_refit": prov["output_refit"]} if prov.get("output_refit") else {}),
            **({"init_from": prov["init_from"]} if prov.get("init_from") else {})}


def export_from_trainer(trainer: Any, folder: Path, last_losses: dict[str, float] | None = None) -> str:
    """The trained model as a model folder; with ``refit_output`` its output bias is refitted first
    (``refit.py``, deterministic, recorded under ``provenance.output_refit``)."""
    model = trainer.model.eval()
    refit: dict[str, Any] | None = None
    if trainer.tcfg.refit_output:
        from evotok.model.train.refit import refit_from_data

        refit = refit_from_data(model, trainer.tcfg.data, stride=trainer.tcfg.refit_stride).to_dict()
    provenance = {
        "train_config": dataclasses.asdict(trainer.tcfg),
        "steps": trainer.step,
        "wall_minutes": round(trainer.elapsed_s / 60, 1),
        "world_size": trainer.dist.world,
        "device": str(trainer.device),
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "git_commit": _git_commit(),
        "last_train_losses": last_losses or {},
        **({"output_refit": refit} if refit is not None else {}),
        **({"init_from": _stage(Path(trainer.tcfg.init_from))} if trainer.tcfg.init_from else {}),
    }
    return save_weights(model, folder, provenance=provenance)


def refit_folder(folder: Path, data: str, out: Path | None = None, *, stride: int = 2) -> str:
    """``evotok refit``: refit a model folder's output bias (``refit.py``) and write it to ``out`` (default:
    in place), keeping the folder's provenance and adding ``output_refit``. Returns the new weights hash."""
    from evotok.model.checkpoint import load_model
    from evotok.model.train.refit import refit_from_data

    model, loaded = load_model(folder)
    provenance = dict(loaded.card.get("provenance") or {})
    if "output_refit" in provenance:
        raise ValueError(f"{folder}: the output bias was refitted already ({provenance['output_refit']})")
    provenance["output_refit"] = refit_from_data(model.eval(), data, stride=stride).to_dict()
    return save_weights(model, out or folder, provenance=provenance, metrics=loaded.card.get("metrics") or {})
