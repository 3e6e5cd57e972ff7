"""Shared fixtures: tiny model folders on disk, free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evotok.tools.procs import free_port

__all__ = ["free_port"]

# The service's gRPC port (Open Inference Protocol) defaults to 8001, as Triton; apps and servers started by the
# tests leave it off unless a test asks for a free port (tests/oip), so parallel runs never fight over 8001.
os.environ["EVOTOK_GRPC_PORT"] = "0"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ``evotok-tiny`` model folder (weights + config), built once per session."""
    from evotok.model.checkpoint import save_weights
    from evotok.model.config import get_preset
    from evotok.model.evotok import EvoTok

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-weights")
    save_weights(EvoTok(get_preset("evotok-tiny")).eval(), folder)
    return folder
