"""How much worse a model reconstructs photos it never trained on, at equal difficulty.

    .venv/bin/python scripts/generalisation_gap.py --model v5=weights/evotok-small --model v1=<v1 folder> \
        --out docs/eval/generalisation-gap.json

The training photos (wallpapers: sky, water, leaves) are far easier than the held-out ones (baboon fur, a
bridge's lattice), so the plain difference of their PSNRs mixes content and generalisation. Each crop's
difficulty is measured without any model: the PSNR of the crop after bicubic downsampling to 16x16 (the token
grid) and back. For every held-out crop, the training crops within ``--tolerance`` dB of its difficulty are its
matched set; the gap is the mean over held-out crops of (its PSNR − the mean PSNR of its matched set). Crops
are ``evotok eval``'s fixed 256x256 crops (held-out and training photos of the split); reconstruction at the
model's pixel depth, torch, fp32, CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """``(N,)`` PSNR in dB of ``(N, H, W, 3)`` uint8 pairs (``evotok eval``'s per-image PSNR)."""
    from evotok.model.train.evaluate import psnr as image_psnr

    return np.array([image_psnr(x, y) for x, y in zip(a, b, strict=True)])


def thumbnail_psnr(crops: npt.NDArray[np.uint8], side: int = 16) -> npt.NDArray[np.float64]:
    """Model-free difficulty: PSNR after bicubic resizing to ``side`` x ``side`` and back."""
    size = crops.shape[1]
    back = np.stack([np.asarray(Image.fromarray(c).resize((side, side), Image.Resampling.BICUBIC)
                                .resize((size, size), Image.Resampling.BICUBIC)) for c in crops])
    return psnr(crops, back)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=model folder (repeatable)")
    p.add_argument("--split", type=Path, default=Path("data/split.json"))
    p.add_argument("--tolerance", type=float, default=0.5, help="difficulty match, dB")
    p.add_argument("--out", type=Path, default=None, help="write every number here (JSON)")
    args = p.parse_args()
    from evotok.export.runtime import load_runtime
    from evotok.model.train.data import held_out_crops
    from evotok.model.train.photos import load_split

    split = load_split(args.split)
    crops = {"held_out": held_out_crops(split.held_out, 256), "train": held_out_crops(split.train, 256)}
    difficulty = {k: thumbnail_psnr(v) for k, v in crops.items()}
    report: dict[str, object] = {"crops": {k: len(v) for k, v in crops.items()},
                                 "thumbnail_psnr": {k: float(v.mean()) for k, v in difficulty.items()},
                                 "models": {}}
    print(f"crops: held-out {len(crops['held_out'])}, training {len(crops['train'])}; 16x16 thumbnail PSNR: "
          f"held-out {difficulty['held_out'].mean():.2f}, training {difficulty['train'].mean():.2f} dB")
    for label, folder in (spec.split("=", 1) for spec in args.model):
        rt = load_runtime(folder, "torch", device="cpu", precision="fp32")
        score = {k: psnr(v, np.concatenate([rt.decode(rt.encode(v[i:i + 16])) for i in range(0, len(v), 16)]))
                 for k, v in crops.items()}
        gaps = []
        for s, d in zip(score["held_out"], difficulty["held_out"], strict=True):
            near = np.abs(difficulty["train"] - d) < args.tolerance
            if near.sum() >= 3:
                gaps.append(float(s - score["train"][near].mean()))
        row = {"psnr_held_out": float(score["held_out"].mean()), "psnr_train": float(score["train"].mean()),
               "matched_held_out_crops": len(gaps), "matched_gap_db": float(np.mean(gaps))}
        report["models"][label] = row  # type: ignore[index]
        print(f"{label}: held-out {row['psnr_held_out']:.2f} dB, training {row['psnr_train']:.2f} dB; at equal "
              f"difficulty held-out minus training {row['matched_gap_db']:+.2f} dB ({len(gaps)} crops matched)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
