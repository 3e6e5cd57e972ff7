"""Fixtures: small model folders with data-seeded codebooks (so codes are diverse, as after training).

An untrained model has random N(0, 1) codebooks far from its tiny latents: every position would pick
the same code and any parity check would pass trivially. ``seeded_model`` rescales the latent and
seeds each depth's codebook with residuals of real inputs, like k-means initialisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evotok.model.checkpoint import save_weights
from evotok.model.config import get_preset
from evotok.model.evotok import EvoTok, images_to_tensor


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size, 3)`` uint8: blurred noise plus gradients (photo-like statistics, deterministic)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 8, 8, 3))
    rep = size // 8
    img = np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)
    ramp = np.linspace(-40, 40, size)[None, :, None, None]
    img = img + ramp + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@torch.no_grad()
def seeded_model(preset: str, seed: int = 0) -> EvoTok:
    torch.manual_seed(seed)
    model = EvoTok(get_preset(preset), pretrained_backbone=preset == "evotok-small").eval()
    model.encode_task_layer[2].weight.mul_(50.0)  # latents of order 1, like a trained task layer
    cfg = model.cfg
    x = images_to_tensor(smooth_images(8, cfg.image_size, seed + 1))
    residual = model.encode_latent(x).reshape(-1, cfg.latent_dim).float()
    for book in model.quantize.codebooks:
        pick = residual[torch.randint(0, residual.shape[0], (book.size,))]
        book.weight[: book.size] = pick + 0.05 * pick.std() * torch.randn_like(pick)
        book.embed_ema.copy_(book.weight[: book.size])
        residual = residual - book.weight[book.nearest(residual)]
    return model


def make_weights(folder: Path, preset: str, seed: int = 0) -> Path:
    save_weights(seeded_model(preset, seed), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("tiny"), "evotok-tiny")


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("small"), "evotok-small")


@pytest.fixture(scope="session")
def tiny_export(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evotok.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("tiny-onnx") / "export"
    export_onnx(tiny_dir, out)
    return out
