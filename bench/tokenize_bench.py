"""``evotok bench tokenize``: ``evotok tokenize`` img/s with ``--engine local`` vs ``--engine ray`` on the same shards.

Builds ``--images`` JPEGs (deterministic crops of the offline photo set, ``evotok data``) as img2dataset-style
WebDataset tars (``key.jpg`` + ``key.txt`` + ``key.json``, 100 per tar), then runs the real CLI once per
configuration into Parquet, each in a fresh output folder, and reports:

- ``wall s``: the whole command (interpreter start, model load, for ray also cluster start and actors);
- ``loop img/s``: the CLI's own summary (samples / seconds of the processing loop, after start-up);
- whether every shard file is byte-identical to the first configuration's.

Usage::

    evotok bench tokenize [--images 500] [--weights DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# name -> extra CLI arguments
CONFIGS: dict[str, list[str]] = {
    "local": ["--engine", "local"],
    "local, 1 thread": ["--engine", "local", "--threads", "1"],
    "ray, 1 actor x 1 CPU": ["--engine", "ray", "--num-cpus", "1"],
}


def build_shards(folder: Path, n: int, per_tar: int = 100) -> None:
    import webdataset as wds
    from PIL import Image

    from evotok.paths import REPO_ROOT

    photos = sorted(
        p for p in (REPO_ROOT / "data" / "photos").rglob("*") if p.suffix.lower() in {".jpg", ".png"}
    )
    if not photos:
        raise SystemExit("no photos under data/photos; run `evotok data` first")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(0, n, per_tar):
        with wds.TarWriter(str(folder / f"{t // per_tar:05d}.tar"), encoder=False) as sink:
            for i in range(t, min(t + per_tar, n)):
                with Image.open(photos[i % len(photos)]) as img:
                    rgb = img.convert("RGB")
                w, h = rgb.size
                side = int(min(w, h) * rng.uniform(0.5, 0.9))
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                crop = rgb.crop((x, y, x + side, y + side)).resize((384, 384), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                crop.save(buf, format="JPEG", quality=90)
                key = f"{i:09d}"
                sink.write(
                    {
                        "__key__": key,
                        "jpg": buf.getvalue(),
                        "txt": b"",
                        "json": json.dumps({"key": key}).encode(),
                    }
                )


def run(shards: Path, out: Path, extra: list[str], weights: str | None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "evotok.cli",
        "tokenize",
        str(shards),
        "--out",
        str(out),
        "--format",
        "parquet",
    ]
    cmd += ["--no-progress", *extra, *(["--weights", weights] if weights else [])]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    found = re.search(r"(\d+) images, (\d+) failures in ([\d.]+) s \(([\d.]+) img/s\)", line)
    assert found, line
    digest = hashlib.sha256()
    for f in sorted(out.glob("shard-*.parquet")):
        digest.update(f.read_bytes())
    return {
        "images": int(found[1]),
        "failures": int(found[2]),
        "loop_s": float(found[3]),
        "loop_img_s": float(found[4]),
        "wall_s": wall,
        "wall_img_s": (int(found[1]) + int(found[2])) / wall,
        "shards_sha256": digest.hexdigest(),
        "summary": line,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="evotok bench tokenize", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--weights", help="model folder (default: the shipped model)")
    p.add_argument("--work", type=Path, help="folder for shards and outputs (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="evotok-tokenize-bench-"))
    shards = work / "shards"
    if not shards.exists():
        build_shards(shards, args.images)
    from evotok.export.runtime import load_runtime

    load_runtime(args.weights).close()  # exports/caches the ONNX files once, outside the timed runs
    results: dict[str, Any] = {}
    for name, extra in CONFIGS.items():
        results[name] = run(shards, work / f"out-{len(results)}", extra, args.weights)
    first = next(iter(results.values()))["shards_sha256"]
    lines = ["| configuration | images | wall s | wall img/s | loop s | loop img/s | same bytes as local |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['images'] + r['failures']} | {r['wall_s']:.1f} | {r['wall_img_s']:.1f} | "
            f"{r['loop_s']:.1f} | {r['loop_img_s']:.1f} | {'yes' if r['shards_sha256'] == first else 'NO'} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["shards_sha256"] == first for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
