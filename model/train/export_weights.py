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


def export_from_trainer(trainer: Any, folder: Path, last_losses: dict[str, float] | None = None) -> str:
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
    }
    model = trainer.model.eval()
    return save_weights(model, folder, provenance=provenance)
