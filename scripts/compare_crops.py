"""Side-by-side held-out crops: the original and each model's reconstruction at its pixel depth.

    .venv/bin/python scripts/compare_crops.py --model v2=weights-v2 --model v3=weights/evotok-small \
        --crops 0,9,18,27,36,45 --out docs/eval/v2-v3.png

Crops are `evotok eval`'s fixed 256x256 held-out crops (photos never trained on); rows are crops, columns are
the original then the models in the order given. Runs each model through the torch Runtime, fp32, CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=model folder (repeatable)")
    p.add_argument("--crops", default="0,9,18,27,36,45", help="indices into the held-out crops")
    p.add_argument("--split", type=Path, default=Path("data/split.json"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from evotok.export.runtime import load_runtime
    from evotok.model.train.data import held_out_crops
    from evotok.model.train.photos import load_split

    models = [spec.split("=", 1) for spec in args.model]
    first = load_runtime(models[0][1], "torch", device="cpu", precision="fp32")
    size = first.info.image_size
    crops = held_out_crops(load_split(args.split).held_out, size)
    picked = crops[[int(i) for i in args.crops.split(",")]]  # (N, S, S, 3) uint8
    columns = [("original", picked)]
    for label, folder in models:
        rt = load_runtime(folder, "torch", device="cpu", precision="fp32")
        columns.append((label, rt.decode(rt.encode(picked))))  # (N, S, S, 3) uint8 at the pixel depth
    pad, head = 4, 18
    grid = Image.new("RGB", (len(columns) * (size + pad) + pad, head + len(picked) * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, images) in enumerate(columns):
        x = pad + c * (size + pad)
        draw.text((x + 4, 3), label, fill="black")
        for r, image in enumerate(np.asarray(images, np.uint8)):
            grid.paste(Image.fromarray(image), (x, head + pad + r * (size + pad)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)


if __name__ == "__main__":
    main()
