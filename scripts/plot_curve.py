"""Training curve of an `evotok train` run: training PSNR (smoothed) by step, and held-out PSNR@1/@4 of
snapshots evaluated with `evotok eval --no-fid --limit N`.

    .venv/bin/python scripts/plot_curve.py runs/evotok-small/metrics.csv \
        --heldout 4000=runs/eval-4000/eval.json --heldout 10000=docs/eval/eval.json \
        --mark 6000=perceptual --mark 8500=256px --out docs/eval/training-curve.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", type=Path, help="metrics.csv of the run")
    p.add_argument("--heldout", action="append", default=[], help="STEP=eval.json (repeatable)")
    p.add_argument("--mark", action="append", default=[], help="STEP=label: a vertical line (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with args.metrics.open() as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["step"]) for r in rows])
    psnr = np.array([float(r["psnr_train"]) for r in rows])
    k = 25
    smooth = np.convolve(psnr, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps[k - 1:], smooth, color="0.6", label=f"training crops, mean over {k * 10} steps (stratified depths)")
    held = []
    for spec in args.heldout:
        step, path = spec.split("=", 1)
        e = json.loads(Path(path).read_text())
        held.append((int(step), e["psnr_by_depth"][0], e["psnr_by_depth"][-1], e["pixel_depth"]))
    if held:
        held.sort()
        x = [h[0] for h in held]
        ax.plot(x, [h[2] for h in held], "o-", color="C0", label=f"held-out PSNR@{held[-1][3]}")
        ax.plot(x, [h[1] for h in held], "s--", color="C1", label="held-out PSNR@1")
    for spec in args.mark:
        step, label = spec.split("=", 1)
        ax.axvline(int(step), color="0.8", linestyle=":")
        ax.text(int(step), ax.get_ylim()[0] + 0.2, f" {label}", color="0.4", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
