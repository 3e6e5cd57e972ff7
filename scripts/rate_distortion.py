"""Rate-distortion of the shipped tokenizer against JPEG, WebP and AVIF on the same 256x256 crops.

    .venv/bin/python scripts/rate_distortion.py --eval docs/eval/eval.json --out docs/eval/rate-distortion

The tokenizer's rate is fixed by its config: ``grid² · d · log2(codebook_size)`` bits per image at prefix depth d
(no entropy coding), so ``evotok eval``'s PSNR@d is a point at that rate. Each codec encodes every crop at a
sweep of qualities (Pillow, default encoder settings); its rate is the file size minus the file size of a flat
16x16 image at the same quality (the container and tables, which the tokenizer's codes do not carry: this
favours the codecs), its PSNR the mean over crops of each crop's PSNR (the same average as ``evotok eval``).
Writes ``OUT.json`` (every point, and each codec's PSNR interpolated at the tokenizer's rates) and ``OUT.png``.
``--extra LABEL=PHOTOS=EVAL.json`` adds a panel for another photo set of the split (``train``, evaluated by
``evotok eval --photos train``), to separate what the photos make hard from what the model lacks:

    evotok eval --photos train --no-fid --out runs/eval-train
    .venv/bin/python scripts/rate_distortion.py --extra "training photos=train=runs/eval-train/eval.json" \
        --out docs/eval/rate-distortion
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

CODECS: dict[str, tuple[str, list[int], dict[str, Any]]] = {
    "JPEG": ("JPEG", [1, 2, 3, 5, 8, 12, 20, 30, 50], {}),
    "WebP": ("WEBP", [0, 2, 5, 10, 20, 30, 50, 70], {"method": 6}),
    "AVIF": ("AVIF", [0, 5, 10, 20, 30, 40, 50, 60], {"speed": 6}),
}


def encoded(img: npt.NDArray[np.uint8], fmt: str, quality: int, options: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=quality, **options)
    return buf.getvalue()


def codec_curve(crops: npt.NDArray[np.uint8], fmt: str, qualities: list[int],
                options: dict[str, Any]) -> list[dict[str, float]]:
    """``[{quality, bpp, bpp_file, psnr}]``: bpp without the flat-image overhead, bpp_file the whole file."""
    from evotok.model.train.evaluate import psnr

    flat = np.full((16, 16, 3), 128, np.uint8)
    points = []
    for q in qualities:
        overhead = len(encoded(flat, fmt, q, options))
        sizes, scores = [], []
        for crop in crops:
            data = encoded(crop, fmt, q, options)
            sizes.append(len(data))
            scores.append(psnr(crop, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
        pixels = crops.shape[1] * crops.shape[2]
        points.append({"quality": q, "bpp": (float(np.mean(sizes)) - overhead) * 8 / pixels,
                       "bpp_file": float(np.mean(sizes)) * 8 / pixels, "psnr": float(np.mean(scores))})
    return points


def at_rate(points: list[dict[str, float]], bpp: float) -> float | None:
    """The codec's PSNR at ``bpp``, linear in log(bpp) between its two nearest points (None outside)."""
    pts = sorted((p["bpp"], p["psnr"]) for p in points if p["bpp"] > 0)
    for (r0, p0), (r1, p1) in itertools.pairwise(pts):
        if r0 <= bpp <= r1 and r1 > r0:
            t = (math.log(bpp) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return p0 + t * (p1 - p0)
    return None


def crop_set(split: Path, photos: str) -> npt.NDArray[np.uint8]:
    """``(N, 256, 256, 3)`` uint8: ``evotok eval``'s fixed crops of the split's ``photos`` (held_out | train)."""
    from evotok.model.train.data import held_out_crops
    from evotok.model.train.photos import load_split

    crops: npt.NDArray[np.uint8] = held_out_crops(getattr(load_split(split), photos), 256)
    return crops


def panel(label: str, split: Path, photos: str, eval_json: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    crops = crop_set(split, photos)
    ev = json.loads(eval_json.read_text())
    bits_per_depth = cfg["grid"] ** 2 * math.log2(cfg["quantizer"]["codebook_size"])
    rates = [bits_per_depth * (d + 1) / cfg["image_size"] ** 2 for d in range(len(ev["psnr_by_depth"]))]
    model = [{"depth": d + 1, "bpp": r, "psnr": p} for d, (r, p) in enumerate(zip(rates, ev["psnr_by_depth"],
                                                                                 strict=True))]
    codecs = {name: codec_curve(crops, fmt, qs, opts) for name, (fmt, qs, opts) in CODECS.items()}
    same_rate = {name: [at_rate(pts, r) for r in rates] for name, pts in codecs.items()}
    return {"label": label, "crops": len(crops), "eval": str(eval_json), "model": model, "codecs": codecs,
            "codec_psnr_at_model_rates": same_rate}


def plot(panels: list[dict[str, Any]], target: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, pan in zip(axes[0], panels, strict=True):
        for name, pts in pan["codecs"].items():
            pts = [p for p in pts if p["bpp"] > 0]
            ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], marker=".", label=name)
        m = pan["model"]
        ax.plot([p["bpp"] for p in m], [p["psnr"] for p in m], "k-o", label="evotok-small, depths 1-4")
        ax.axhline(target, color="crimson", ls="--", lw=1, label=f"target {target:g} dB at depth 4")
        ax.set_xscale("log")
        ax.set_xlim(0.02, 1.5)
        ax.set_xlabel("bits per pixel (codecs: without their container overhead)")
        ax.set_ylabel("PSNR (dB), mean over crops")
        ax.set_title(f"{pan['label']} ({pan['crops']} crops, 256x256)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=Path("weights/evotok-small"), help="model folder (its rates)")
    p.add_argument("--split", type=Path, default=Path("data/split.json"))
    p.add_argument("--eval", type=Path, default=Path("docs/eval/eval.json"), help="evotok eval of --split")
    p.add_argument("--extra", action="append", default=[], help="LABEL=PHOTOS=EVAL.json (repeatable)")
    p.add_argument("--target", type=float, default=23.0)
    p.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.png are written")
    args = p.parse_args()
    cfg = json.loads((args.weights / "config.json").read_text())["config"]
    panels = [panel("held-out photos", args.split, "held_out", args.eval, cfg)]
    for spec in args.extra:
        label, photos, ev = spec.split("=", 2)
        panels.append(panel(label, args.split, photos, Path(ev), cfg))
    args.out.with_suffix(".json").write_text(json.dumps({"panels": panels}, indent=1) + "\n")
    plot(panels, args.target, args.out.with_suffix(".png"))
    for pan in panels:
        print(f"{pan['label']} ({pan['crops']} crops)")
        for i, m in enumerate(pan["model"]):
            others = ", ".join(f"{name} {v[i]:.2f}" if v[i] is not None else f"{name} n/a"
                               for name, v in pan["codec_psnr_at_model_rates"].items())
            print(f"  depth {m['depth']}: {m['bpp']:.3f} bpp, evotok {m['psnr']:.2f} dB; at the same rate: {others}")


if __name__ == "__main__":
    main()
