"""The closed-form output-bias refit (model/train/refit.py) on the tiny config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from evotok.model.checkpoint import load_model
from evotok.model.evotok import images_to_tensor
from evotok.model.train.export_weights import export_from_trainer, refit_folder
from evotok.model.train.refit import refit_output_bias
from evotok.model.train.trainer import Trainer
from tests.train.test_training import _cfg, photo_dir  # noqa: F401 - the module fixture


def _crops(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth photo-like ``(n, size, size, 3)`` uint8 crops, in two groups (two 'photos')."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(2):
        group = []
        for _ in range(n):
            a = rng.uniform(0, 1, (3, 3))
            img = np.stack([a[c, 0] * yy + a[c, 1] * xx + a[c, 2] * np.sin(6 * xx * yy) for c in range(3)], -1)
            group.append(np.clip(img / img.max() * 255, 0, 255).astype(np.uint8))
        out.append(np.stack(group))
    return out


@pytest.fixture()
def trained(photo_dir: Path, tmp_path: Path) -> Trainer:  # noqa: F811
    trainer = Trainer(_cfg(photo_dir, tmp_path / "run", 3))
    trainer.fit(resume=False, progress=False)
    trainer.model.eval()
    return trainer


def test_refit_lowers_the_mse_removes_the_mean_shift_and_keeps_the_codes(trained: Trainer) -> None:
    model = trained.model
    crops = _crops(4, model.cfg.image_size)
    x = images_to_tensor(np.concatenate(crops))
    codes_before = model.encode(x)
    with torch.no_grad():  # a colour cast the refit must take out: +0.2 on red in [-1, 1] units (25/255)
        model.decoder.conv_out.bias[0] += 0.2
    other = {k: v.clone() for k, v in model.state_dict().items() if k != "decoder.conv_out.bias"}
    result = refit_output_bias(model, crops, photos=2)
    assert result.crops == 8 and result.pixels == 8 * model.cfg.image_size ** 2 * model.cfg.pixel_depth
    assert result.mse_after < result.mse_before
    assert result.bias_delta_rgb[0] < -20  # the cast is taken out (-25.5/255 plus what training left)
    with torch.no_grad():  # after the refit the mean residual is zero in every channel
        raw = torch.cat([model.decode_latent(model.codes_to_latent(codes_before[..., :d]))
                         for d in range(1, model.cfg.pixel_depth + 1)])
    target = x.repeat(model.cfg.pixel_depth, 1, 1, 1)
    assert (target - raw).mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert float(((raw - target) ** 2).mean()) == pytest.approx(result.mse_after, rel=1e-4)  # from the sums
    for k, v in model.state_dict().items():  # only the output bias changed
        if k in other:
            assert torch.equal(v, other[k]), k
    assert torch.equal(model.encode(x), codes_before)


def test_refit_is_deterministic(trained: Trainer) -> None:
    crops = _crops(3, trained.model.cfg.image_size, seed=1)
    start = {k: v.clone() for k, v in trained.model.state_dict().items()}
    refit_output_bias(trained.model, crops, photos=2)
    first = trained.model.decoder.conv_out.bias.clone()
    trained.model.load_state_dict(start)
    refit_output_bias(trained.model, crops, photos=2)
    assert torch.equal(trained.model.decoder.conv_out.bias, first)


def test_export_with_refit_and_evotok_refit_on_a_folder(trained: Trainer, photo_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    plain = tmp_path / "plain"
    export_from_trainer(trained, plain)
    assert "output_refit" not in load_model(plain)[1].card["provenance"]
    digest = refit_folder(plain, str(photo_dir), tmp_path / "refit", stride=3)
    _model, loaded = load_model(tmp_path / "refit")
    info = loaded.card["provenance"]["output_refit"]
    assert loaded.hash == digest and info["photos"] == 1 and info["mse_after"] <= info["mse_before"]
    assert loaded.card["provenance"]["steps"] == 3  # the training provenance is kept
    with pytest.raises(ValueError, match="refitted already"):
        refit_folder(tmp_path / "refit", str(photo_dir), stride=3)
    trained.tcfg = dataclasses.replace(trained.tcfg, refit_output=True, refit_stride=3)
    export_from_trainer(trained, tmp_path / "exported")  # the recipe's path: refit at export
    exported = load_model(tmp_path / "exported")[1]
    assert exported.card["provenance"]["output_refit"]["photos"] == 1
    assert exported.hash == digest  # the same refit of the same weights, either way
