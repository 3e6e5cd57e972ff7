"""``evotok eval`` machinery on the tiny model: every metric has the right length and range, the figure is written."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from evotok.model.checkpoint import load_model
from evotok.model.train.evaluate import (
    evaluate,
    frechet_distance,
    kernel_inception_distance,
    plot_evolution,
)
from evotok.model.train.model_card import write_card
from evotok.model.train.trainer import build_teacher


def test_evaluate_tiny(tiny_weights: Path, tmp_path: Path) -> None:
    model, loaded = load_model(tiny_weights)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    result = evaluate(model, loaded.hash, crops, build_teacher(model.cfg), fid=False, batch=4)
    cfg = model.cfg
    assert len(result.psnr_by_depth) == cfg.pixel_depth and len(result.ssim_by_depth) == cfg.pixel_depth
    assert len(result.semantic_cos_by_depth) == cfg.num_depths
    assert len(result.usage_by_depth) == cfg.num_depths
    assert all(0 < u <= 1 for u in result.usage_by_depth)
    assert all(1 <= p <= cfg.codebook_size for p in result.perplexity_by_depth)
    assert all(-1 <= c <= 1 for c in result.semantic_cos_by_depth)
    assert all(np.isfinite(result.psnr_by_depth))
    plot_evolution(result, tmp_path / "evo.png")
    assert (tmp_path / "evo.png").stat().st_size > 1000
    folder = tmp_path / "w"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_weights / name).read_bytes())
    write_card(folder, result, command="cmd", eval_command="eval", notes=["n"])
    card = json.loads((folder / "config.json").read_text())
    assert card["metrics"]["semantic_by_depth"] == result.semantic_cos_by_depth
    assert "PSNR" in (folder / "MODEL_CARD.md").read_text()
    load_model(folder)  # the card edit leaves the weights' hash valid
    assert asdict(result)["num_crops"] == 6


def test_fid_and_kid_are_zero_for_identical_sets_and_grow_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    assert abs(frechet_distance(a, a)) < 1e-6
    same_dist = rng.normal(size=(200, 16))  # an independent sample of the same distribution: KID ~ 0
    assert abs(kernel_inception_distance(a, same_dist)) < 0.05
    b = a + 1.0
    assert frechet_distance(a, b) == pytest.approx(16.0, rel=0.05)
    assert kernel_inception_distance(a, b) > 0.1


def test_colour_error_sees_a_cast() -> None:
    """A model whose decoder adds a constant red cast shows it in colour_error / colour_shift_rgb."""
    from evotok.model.config import get_preset
    from evotok.model.evotok import EvoTok

    torch.manual_seed(0)
    model = EvoTok(get_preset("evotok-tiny"), pretrained_backbone=False).eval()
    crops = np.random.default_rng(0).integers(60, 190, (4, 32, 32, 3), dtype=np.uint8)
    base = evaluate(model, "x", crops, None, fid=False, batch=4)
    with torch.no_grad():
        model.decoder.conv_out.bias[0] += 0.2  # +0.2 in [-1, 1] = +25.5/255 on red, before clamping
    cast = evaluate(model, "x", crops, None, fid=False, batch=4)
    assert cast.colour_shift_rgb[0] - base.colour_shift_rgb[0] > 15
    assert abs(cast.colour_shift_rgb[1] - base.colour_shift_rgb[1]) < 1e-9
    assert cast.colour_error_by_depth[-1] > base.colour_error_by_depth[-1]


def test_card_notes_come_from_the_model_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from evotok.model.train.cli import card_notes

    assert card_notes(tmp_path) == []
    (tmp_path / "CARD_NOTES.md").write_text("# notes\n\n- first note,\n  wrapped\n- second\n")
    assert card_notes(tmp_path) == ["first note, wrapped", "second"]


def test_decoder_ceiling_beyond_the_pixel_depth() -> None:
    """psnr_all_depths repeats psnr_by_depth on 1..pixel_depth and goes on to D; psnr_unquantized reads the
    latent itself, so a decoder that ignores its input scores the same at every depth and unquantized."""
    from evotok.model.config import get_preset
    from evotok.model.evotok import EvoTok

    torch.manual_seed(0)
    model = EvoTok(get_preset("evotok-tiny"), pretrained_backbone=False).eval()
    crops = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    r = evaluate(model, "x", crops, None, fid=False, batch=2)
    pd, depths = model.cfg.pixel_depth, model.cfg.num_depths
    assert len(r.psnr_all_depths) == depths and r.psnr_unquantized is not None
    assert r.psnr_all_depths[:pd] == pytest.approx(r.psnr_by_depth, abs=1e-9)
    assert len(set(np.round(r.psnr_all_depths, 6))) > 1  # a random decoder does read its input
    with torch.no_grad():
        model.post_quant_conv.weight.zero_()
    flat = evaluate(model, "x", crops, None, fid=False, batch=2)
    assert flat.psnr_all_depths == pytest.approx([flat.psnr_unquantized] * depths, abs=1e-9)


def test_eval_cli_crops_the_photos_asked_for(tiny_weights: Path, tmp_path: Path) -> None:
    """``evotok eval --photos train`` crops the split's training photos with the held-out crop rule; the card
    is written from held-out photos only."""
    from PIL import Image

    from evotok.model.train.cli import eval_main

    rng = np.random.default_rng(1)
    entries: dict[str, list[dict[str, str]]] = {"train": [], "held_out": []}
    for kind, n in (("train", 3), ("held_out", 1)):
        for i in range(n):
            path = tmp_path / "photos" / f"{kind}{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
            entries[kind].append({"path": str(path.relative_to(tmp_path)), "sha256": "-"})
    split = tmp_path / "split.json"
    split.write_text(json.dumps(entries))
    for photos, crops in (("train", 3), ("held_out", 1)):
        out = tmp_path / f"eval-{photos}"
        assert eval_main(["--weights", str(tiny_weights), "--split", str(split), "--out", str(out), "--no-fid",
                          "--photos", photos]) == 0
        result = json.loads((out / "eval.json").read_text())
        assert result["num_crops"] == crops
        assert any("TRAINING photos" in n for n in result["notes"]) == (photos == "train")
    with pytest.raises(SystemExit):
        eval_main(["--weights", str(tiny_weights), "--split", str(split), "--photos", "train", "--write-card"])
