"""Training smoke tests on the tiny config: loss falls, resume is bit-exact, torchrun with 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evotok.model.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / "sub" / f"{name}.png")
    return folder


def _cfg(photo_dir: Path, out: Path, steps: int, **kw: object) -> TrainConfig:
    base = dict(preset="evotok-tiny", out=str(out), data=str(photo_dir), steps=steps, batch_size=4, crop=32,
                lr=3e-3, disc_start=3, log_every=1, sample_every=10_000, ckpt_every=10_000, threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_loss_decreases(photo_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(_cfg(photo_dir, tmp_path, 40, disc_start=1000))
    from evotok.model.train.data import CropSampler

    trainer.sampler = CropSampler(sorted(photo_dir.rglob("*.png")), 32)
    fixed = trainer.batch(0)
    first = trainer.train_step(fixed)["mse"]
    for _ in range(40):
        last = trainer.train_step(fixed)["mse"]
    assert last < 0.7 * first, (first, last)


def test_resume_continues_bit_for_bit(photo_dir: Path, tmp_path: Path) -> None:
    straight = Trainer(_cfg(photo_dir, tmp_path / "a", 6))
    straight.fit(resume=False, progress=False)
    first = Trainer(_cfg(photo_dir, tmp_path / "b", 3))
    first.fit(resume=False, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    resumed = Trainer(_cfg(photo_dir, tmp_path / "b", 6))
    resumed.fit(resume=True, progress=False)
    assert resumed.step == straight.step == 6
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.disc.state_dict().items():
        assert torch.equal(value, resumed.disc.state_dict()[key]), key
    rows_a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [",".join(c for i, c in enumerate(r.split(",")) if i != 1) for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)  # same losses at every step (minutes column aside)


def test_export_weights_after_training(photo_dir: Path, tmp_path: Path) -> None:
    from evotok.model.checkpoint import load_model
    from evotok.model.train.export_weights import export_from_trainer

    trainer = Trainer(_cfg(photo_dir, tmp_path / "run", 2))
    trainer.fit(resume=False, progress=False)
    export_from_trainer(trainer, tmp_path / "w")
    model, loaded = load_model(tmp_path / "w")
    assert loaded.card["provenance"]["steps"] == 2
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encode(x), trainer.model.eval().encode(x))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(photo_dir: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "evotok.cli", "train",
           "--preset", "evotok-tiny", "--data", str(photo_dir), "--steps", "4", "--crop", "32", "--batch-size", "2",
           "--out", str(tmp_path / "ddp"), "--no-progress", "--threads", "1", "--set", "disc_start=2", "--set", "log_every=1",
           "--export-weights", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4
    assert (tmp_path / "w" / "model.safetensors").exists()
    assert np.isfinite([float(v) for v in (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()[-1].split(",")[2:]]).all()


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()
