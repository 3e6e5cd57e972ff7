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
    from evotok.tools.procs import free_port

    return free_port()


SCHEDULED = dict(crop=16, final_crop=32, final_crop_from=3, final_batch_size=2, depth_mode="stratified",
                 lr_schedule="cosine", warmup_steps=2, lr_min_ratio=0.1)


def test_schedules_crop_depth_and_lr(photo_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(photo_dir, tmp_path, 10, **SCHEDULED))
    from evotok.model.train.data import CropSampler

    trainer.sampler = CropSampler(sorted(photo_dir.rglob("*.png")), 32)
    assert trainer.batch(2).shape == (4, 3, 16, 16)  # phase 1: 16px crops, batch 4
    assert trainer.batch(3).shape == (2, 3, 32, 32)  # from final_crop_from: 32px crops, batch 2
    lr = 3e-3
    assert trainer.lr_at(0) == pytest.approx(lr / 2) and trainer.lr_at(1) == pytest.approx(lr)
    assert trainer.lr_at(2) == pytest.approx(lr) and trainer.lr_at(10) == pytest.approx(0.1 * lr)
    assert all(trainer.lr_at(s) >= trainer.lr_at(s + 1) for s in range(2, 10))
    # stratified: every prefix depth 1..pixel_depth gets an equal share of a batch, rotating with the step
    pd = trainer.cfg.pixel_depth
    for step in range(3):
        trainer.step = step
        depths = trainer.pixel_depths(2 * pd, torch.device("cpu")).tolist()
        assert sorted(depths) == sorted(list(range(1, pd + 1)) * 2)
        assert depths[0] == 1 + step % pd


def test_resume_across_the_crop_switch_is_bit_exact(photo_dir: Path, tmp_path: Path) -> None:
    straight = Trainer(_cfg(photo_dir, tmp_path / "a", 6, **SCHEDULED))
    straight.fit(resume=False, progress=False)
    Trainer(_cfg(photo_dir, tmp_path / "b", 2, **SCHEDULED)).fit(resume=False, progress=False)
    resumed = Trainer(_cfg(photo_dir, tmp_path / "b", 6, **SCHEDULED))
    resumed.fit(resume=True, progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_cell_colour_loss_sees_cell_means_only() -> None:
    """Zero when every 16x16 cell keeps its mean colour (detail moved around inside it), positive for a shift."""
    from evotok.model.train.losses import cell_colour_loss

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ripple = torch.ones(16, 16)
    ripple[::2] = -1  # zero mean over each cell
    detail = x + 0.1 * ripple.repeat(2, 2)
    assert float(cell_colour_loss(detail, x, 16)) < 1e-12
    shifted = x.clone()
    shifted[:, 0, :16, :16] += 0.2  # red up in one cell of four
    assert float(cell_colour_loss(shifted, x, 16)) == pytest.approx(0.2**2 / 12, rel=1e-5)


def test_colour_weight_enters_the_loss(photo_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(photo_dir, tmp_path, 1, disc_start=1000, w_colour=2.0))
    from evotok.model.train.data import CropSampler

    trainer.sampler = CropSampler(sorted(photo_dir.rglob("*.png")), 32)
    row = trainer.train_step(trainer.batch(0))
    assert row["colour"] > 0
    off = Trainer(_cfg(photo_dir, tmp_path / "off", 1, disc_start=1000))
    off.sampler = trainer.sampler
    assert off.train_step(off.batch(0))["colour"] == 0.0


def test_fine_tuning_stage_starts_from_a_model_folder(photo_dir: Path, tmp_path: Path) -> None:
    """init_from loads a folder's weights when the run has no checkpoint; a resumed run keeps its own; the
    exported provenance names the folder's hash and its training; another preset's folder is refused."""
    from evotok.model.checkpoint import load_model
    from evotok.model.train.export_weights import export_from_trainer

    first = Trainer(_cfg(photo_dir, tmp_path / "one", 2))
    first.fit(resume=False, progress=False)
    stage1 = tmp_path / "stage1"
    digest = export_from_trainer(first, stage1)
    second = Trainer(_cfg(photo_dir, tmp_path / "two", 0, init_from=str(stage1)))
    second.fit(resume=True, progress=False)  # 0 steps: the weights are stage 1's exactly
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    more = Trainer(_cfg(photo_dir, tmp_path / "two", 2, init_from=str(stage1)))
    more.fit(resume=True, progress=False)
    assert more.step == 2
    export_from_trainer(more, tmp_path / "stage2")
    _, loaded = load_model(tmp_path / "stage2")
    init = loaded.card["provenance"]["init_from"]
    assert init["hash"] == digest and init["steps"] == 2 and init["train_config"]["steps"] == 2
    resumed = Trainer(_cfg(photo_dir, tmp_path / "two", 2, init_from=str(stage1)))
    resumed.fit(resume=True, progress=False)  # checkpoint at step 2 wins over init_from
    for key, value in more.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    other = Trainer(_cfg(photo_dir, tmp_path / "three", 1, init_from=str(stage1), preset="evotok-small"))
    with pytest.raises(RuntimeError, match="differs"):
        other.init_weights(stage1)


def test_resumed_run_keeps_its_metrics_columns(photo_dir: Path, tmp_path: Path) -> None:
    """A metrics.csv written before a column was added stays one table when the run is resumed."""
    Trainer(_cfg(photo_dir, tmp_path, 2, disc_start=1000)).fit(resume=False, progress=False)
    path = tmp_path / "metrics.csv"
    rows = path.read_text().splitlines()
    old_header = [c for c in rows[0].split(",") if c != "colour"]
    keep = [i for i, c in enumerate(rows[0].split(",")) if c != "colour"]
    path.write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in rows) + "\n")
    Trainer(_cfg(photo_dir, tmp_path, 4, disc_start=1000)).fit(resume=True, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[0].split(",") == old_header
    assert all(len(line.split(",")) == len(old_header) for line in lines)


def test_rotate_hue_keeps_grey_and_channel_means() -> None:
    from evotok.model.train.data import rotate_hue

    rng = np.random.default_rng(0)
    img = rng.integers(90, 166, size=(8, 8, 3), dtype=np.uint8)  # near grey: no rotation leaves 0..255
    assert np.array_equal(rotate_hue(img, 0.0), img)
    assert np.array_equal(rotate_hue(img, 2 * np.pi / 3), img[..., [2, 0, 1]])  # a third of a turn: RGB -> BRG
    turned = rotate_hue(img, 1.0).astype(int)
    assert np.abs(turned.sum(-1) - img.astype(int).sum(-1)).max() <= 2  # the grey axis component stays (rounding)
    assert not np.array_equal(turned, img)
    grey = np.full((2, 2, 3), 77, np.uint8)
    assert np.array_equal(rotate_hue(grey, 2.0), grey)


def test_hue_jitter_is_deterministic_and_off_by_default(photo_dir: Path) -> None:
    from evotok.model.train.data import CropSampler

    sampler = CropSampler(sorted(photo_dir.rglob("*.png")), 32)
    plain = sampler.batch(16, seed=5)
    assert np.array_equal(sampler.batch(16, seed=5, hue_jitter=0.0), plain)  # no extra random draws at 0
    jittered = sampler.batch(16, seed=5, hue_jitter=1.0)
    assert np.array_equal(sampler.batch(16, seed=5, hue_jitter=1.0), jittered)
    changed = [not np.array_equal(a, b) for a, b in zip(plain, jittered, strict=True)]
    assert sum(changed) >= 12  # every crop rotated (a few angles land near 0 or a few crops are near grey)


def test_card_reproduce_command_is_what_make_train_small_runs() -> None:
    """The model card's command (``TRAIN_SMALL_COMMAND``) and the Makefile's ``train-small`` are two copies of
    one recipe: they must not drift apart."""
    from evotok.model.train.cli import TRAIN_SMALL_COMMAND

    lines = (Path(__file__).parents[2] / "Makefile").read_text().split("\ntrain-small:", 1)[1].split("\n\n", 1)[0]
    steps = [ln.strip().replace("$(BIN)/", "") for ln in lines.splitlines() if ln.strip().startswith("$(BIN)/evotok")]
    trained = [s for s in steps if not s.startswith("evotok eval")]  # the card gives the eval command apart
    assert " && ".join(["evotok data", *trained]) == TRAIN_SMALL_COMMAND
