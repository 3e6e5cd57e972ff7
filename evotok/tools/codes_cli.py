"""``evotok encode`` and ``evotok decode``: images <-> code files, with the model in process or a server.

    evotok encode photo.jpg -o codes.npy                 # (h, w, D) uint16
    evotok encode a.jpg b.png -o codes.json --depth 4    # (2, h, w, 4), JSON
    evotok decode codes.npy -o out.png [--depth 4]       # (B, ...) files -> out-0.png, out-1.png, ...
    ... --server http://127.0.0.1:8000 [--api-key KEY]   # through the HTTP API instead of in process

Code files: ``.npy`` holds uint16 codes, ``(h, w, d)`` for one image or ``(B, h, w, d)`` for several (no
pickle). ``.json`` holds ``{"codes": nested lists (same layout), "shape", "depth", "model": {name,
weights_hash}, "sources": [image paths]}``, the API's JSON shape plus the sources.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.tools.backends import CodesBackend, ImageFailure, make_backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodesFile:
    """What a code file holds: ``codes`` (h, w, d) or (B, h, w, d) uint16, plus JSON-only metadata."""

    codes: npt.NDArray[np.uint16]
    model: dict[str, Any] | None = None
    sources: list[str] | None = None


def save_codes(path: Path, f: CodesFile) -> None:
    if path.suffix == ".npy":
        np.save(path, np.ascontiguousarray(f.codes, dtype=np.uint16), allow_pickle=False)
    elif path.suffix == ".json":
        body = {
            "codes": f.codes.tolist(),
            "shape": list(f.codes.shape),
            "depth": int(f.codes.shape[-1]),
            "model": f.model,
            "sources": f.sources,
        }
        path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    else:
        raise ValueError(f"{path}: the output must end in .npy or .json")


def load_codes(path: Path) -> CodesFile:
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        model = sources = None
    elif path.suffix == ".json":
        body = json.loads(path.read_text())
        arr, model, sources = np.asarray(body["codes"]), body.get("model"), body.get("sources")
    else:
        raise ValueError(f"{path}: code files end in .npy or .json")
    if arr.dtype.kind not in "iu" or arr.ndim not in (3, 4):
        raise ValueError(
            f"{path}: expected integer codes (h, w, d) or (B, h, w, d), got {arr.dtype} {arr.shape}"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"{path}: code values outside [0, 65535]")
    return CodesFile(arr.astype(np.uint16), model, sources)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="EvoTok server URL (default: run the model in this process)")
    p.add_argument(
        "--api-key", default=os.environ.get("EVOTOK_API_KEY"), help="bearer token (env EVOTOK_API_KEY)"
    )
    p.add_argument("--weights", help="model folder for local mode (default: the shipped model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--depth", type=int, help="keep the first d depths (default: all)")


def run_encode(images: list[Path], out: Path, backend: CodesBackend, depth: int | None) -> CodesFile:
    """Encode image files; any unreadable image aborts (nothing is written)."""
    info = backend.info
    if depth is not None and not 1 <= depth <= info.num_depths:
        raise ValueError(f"--depth must be in 1..{info.num_depths}")
    results = backend.encode_files([p.read_bytes() for p in images])
    bad = [(p, r) for p, r in zip(images, results, strict=True) if isinstance(r, ImageFailure)]
    if bad:
        raise ValueError("; ".join(f"{p}: {r.code}: {r.message}" for p, r in bad))
    codes = np.stack([r for r in results if not isinstance(r, ImageFailure)])[..., :depth]  # (B, h, w, d)
    f = CodesFile(
        codes[0] if len(images) == 1 else codes,
        {"name": info.name, "weights_hash": info.weights_hash},
        [str(p) for p in images],
    )
    save_codes(out, f)
    return f


def run_decode(codes_path: Path, out: Path, backend: CodesBackend, depth: int | None) -> list[Path]:
    """Decode a code file to PNG(s): one image -> ``out``; a batch -> ``out-<i>.png`` each."""
    codes = load_codes(codes_path).codes
    batch = codes[None] if codes.ndim == 3 else codes
    if depth is not None:
        batch = batch[..., :depth]
    paths = (
        [out]
        if batch.shape[0] == 1
        else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(batch))]
    )
    for c, path in zip(batch, paths, strict=True):
        path.write_bytes(backend.decode(c))
    return paths


def _fail(exc: Exception) -> int:
    sys.stderr.write(f"evotok: {exc}\n")
    return 1


def encode_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok encode", description="Encode images to residual codes.")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="codes.npy or codes.json")
    _common(p)
    args = p.parse_args(argv)
    if args.out.suffix not in (".npy", ".json"):
        p.error("-o must end in .npy or .json")
    from evotok.client import EvoTokError

    try:
        backend = make_backend(args.server, api_key=args.api_key, weights=args.weights, backend=args.backend)
        try:
            f = run_encode(args.images, args.out, backend, args.depth)
        finally:
            backend.close()
    except (OSError, ValueError, EvoTokError) as exc:
        return _fail(exc)
    sys.stdout.write(f"{args.out}: codes {tuple(f.codes.shape)} uint16\n")
    return 0


def decode_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok decode", description="Decode residual codes to PNG images.")
    p.add_argument("codes", type=Path, help="codes.npy or codes.json")
    p.add_argument("-o", "--out", type=Path, required=True, help="out.png")
    _common(p)
    args = p.parse_args(argv)
    from evotok.client import EvoTokError

    try:
        backend = make_backend(args.server, api_key=args.api_key, weights=args.weights, backend=args.backend)
        try:
            paths = run_decode(args.codes, args.out, backend, args.depth)
        finally:
            backend.close()
    except (OSError, ValueError, KeyError, EvoTokError) as exc:
        return _fail(exc)
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0
