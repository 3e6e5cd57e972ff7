"""``evotok tokenize DATASET_DIR --out SHARDS_DIR``: a folder of images -> sharded uint16 codes + manifests.

Output layout (every file written atomically: temp file, fsync, rename)::

    SHARDS_DIR/plan.json              the run's fixed plan: sorted relative paths, shard size, model, preprocessing
    SHARDS_DIR/shard-00000.npy        codes (N, h, w, D) uint16 of the shard's readable images, in plan order
    SHARDS_DIR/shard-00000.json       shard manifest: source paths, original sizes (W, H), rows, failures,
                                      shapes, model name + weights hash, preprocessing, sha256 of the .npy
    SHARDS_DIR/manifest.json          top level: every shard, totals, all failures (written once all shards exist)
    SHARDS_DIR/.partial/shard-00000/  chunk files of an unfinished shard (removed when the shard is written)

Determinism and resume: files are listed recursively (image suffixes only), sorted by relative POSIX path and
cut into shards of ``--shard-size``; shards are cut into chunks of ``--chunk-size`` images. A chunk's codes are
persisted before the next chunk starts, a shard file is assembled from its chunks, and a finished shard is
recognised by its ``.json``. So an interrupted run resumed with the same arguments redoes at most the chunk
that was in flight, skips nothing, and produces byte-identical shards to an uninterrupted run. Manifests hold
no timestamps or absolute paths.

Distribution: with ``RANK``/``WORLD_SIZE`` set (``torchrun``), rank ``r`` takes shards ``i % WORLD_SIZE == r``;
all ranks write into the same SHARDS_DIR, and whichever finishes last writes ``manifest.json``.

Unreadable images (corrupt, unsupported format, alpha, too large) are recorded under ``failures`` in their
shard's manifest and in the top-level manifest; they never stop the run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.tools.backends import CodesBackend, ImageFailure, make_backend, preprocessing_record

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class TokenizeConfig:
    dataset: Path
    out: Path
    shard_size: int = 1024
    chunk_size: int = 64
    rank: int = 0
    world_size: int = 1
    progress: bool = True


@dataclass
class RunReport:
    """What this process did (for logs and tests)."""

    shards_total: int = 0
    shards_written: list[int] = field(default_factory=list)  # by this process
    shards_skipped: list[int] = field(default_factory=list)  # already complete
    images_encoded: int = 0  # images sent to the backend by this process
    failures: int = 0
    manifest_written: bool = False


# A hook called after each persisted chunk with (shard index, images encoded so far by this process).
ChunkHook = Callable[[int, int], None]


def list_images(dataset: Path) -> list[str]:
    """Relative POSIX paths of image files under ``dataset``, sorted (the run's fixed order)."""
    found = []
    for root, dirs, files in os.walk(dataset):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(root) / name).relative_to(dataset).as_posix())
    return sorted(found)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _npy_bytes(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _original_size(data: bytes) -> list[int] | None:
    """(W, H) from the header, or None if PIL cannot even read the header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return [int(img.size[0]), int(img.size[1])]
    except Exception:  # any unreadable header: the backend reports the precise failure
        return None


class Tokenizer:
    def __init__(self, cfg: TokenizeConfig, backend: CodesBackend, on_chunk: ChunkHook | None = None) -> None:
        if cfg.shard_size < 1 or cfg.chunk_size < 1:
            raise ValueError("shard and chunk sizes must be >= 1")
        if not 0 <= cfg.rank < cfg.world_size:
            raise ValueError(f"rank {cfg.rank} outside world size {cfg.world_size}")
        self.cfg, self.backend, self.on_chunk = cfg, backend, on_chunk
        info = backend.info
        self.model = {
            "name": info.name,
            "weights_hash": info.weights_hash,
            "image_size": info.image_size,
            "grid": info.grid,
            "num_depths": info.num_depths,
            "codebook_size": info.codebook_size,
        }
        self.grid_shape = (info.grid, info.grid, info.num_depths)
        self.preprocessing = preprocessing_record(info)
        self.report = RunReport()

    # --- plan ------------------------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        files = list_images(self.cfg.dataset)
        n = len(files)
        return {
            "format_version": FORMAT_VERSION,
            "files": files,
            "shard_size": self.cfg.shard_size,
            "chunk_size": self.cfg.chunk_size,
            "num_shards": (n + self.cfg.shard_size - 1) // self.cfg.shard_size,
            "model": self.model,
            "preprocessing": self.preprocessing,
        }

    def _check_plan(self, plan: dict[str, Any]) -> None:
        path = self.cfg.out / "plan.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != plan:
                diff = [k for k in plan if old.get(k) != plan[k]]
                raise ValueError(
                    f"{self.cfg.out} holds a different run (differs in {diff}); "
                    "resume with the same dataset, model and sizes, or use a new --out"
                )
        else:
            atomic_write(path, _json_bytes(plan))

    # --- run -------------------------------------------------------------------------------------------
    def run(self) -> RunReport:
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        self._check_plan(plan)
        files, num_shards = plan["files"], plan["num_shards"]
        self.report.shards_total = num_shards
        mine = [i for i in range(num_shards) if i % cfg.world_size == cfg.rank]
        todo = [i for i in mine if not self._shard_done(i)]
        self.report.shards_skipped = [i for i in mine if i not in todo]
        for (
            i
        ) in self.report.shards_skipped:  # killed after a shard was written, before its chunks were removed
            shutil.rmtree(cfg.out / ".partial" / f"shard-{i:05d}", ignore_errors=True)
        total = sum(len(self._shard_files(files, i)) for i in mine)
        done_before = total - sum(len(self._shard_files(files, i)) for i in todo)
        bar = self._progress(total, done_before)
        try:
            for i in todo:
                self._run_shard(i, self._shard_files(files, i), bar)
        finally:
            if bar is not None:
                bar.close()
        self.report.manifest_written = self._maybe_write_manifest(plan)
        return self.report

    def _shard_files(self, files: list[str], i: int) -> list[str]:
        s = self.cfg.shard_size
        return files[i * s : (i + 1) * s]

    def _shard_done(self, i: int) -> bool:
        return (self.cfg.out / f"shard-{i:05d}.json").exists() and (
            self.cfg.out / f"shard-{i:05d}.npy"
        ).exists()

    def _progress(self, total: int, initial: int) -> Any:
        if not self.cfg.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, unit="img", desc=f"tokenize rank {self.cfg.rank}", file=sys.stderr
        )

    def _run_shard(self, i: int, names: list[str], bar: Any) -> None:
        partial = self.cfg.out / ".partial" / f"shard-{i:05d}"
        partial.mkdir(parents=True, exist_ok=True)
        c = self.cfg.chunk_size
        chunks = [names[k : k + c] for k in range(0, len(names), c)]
        for j, chunk in enumerate(chunks):
            meta_path = partial / f"chunk-{j:05d}.json"
            if meta_path.exists():  # persisted before an interruption
                if bar is not None:
                    bar.update(len(chunk))
                continue
            self._run_chunk(chunk, partial / f"chunk-{j:05d}.npy", meta_path)
            self.report.images_encoded += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if self.on_chunk is not None:
                self.on_chunk(i, self.report.images_encoded)
        self._assemble_shard(i, len(chunks), partial)
        shutil.rmtree(partial, ignore_errors=True)
        self.report.shards_written.append(i)

    def _run_chunk(self, names: list[str], npy_path: Path, meta_path: Path) -> None:
        blobs: list[bytes] = []
        sizes: list[list[int] | None] = []
        read_errors: dict[int, ImageFailure] = {}
        for k, name in enumerate(names):
            try:
                data = (self.cfg.dataset / name).read_bytes()
            except OSError as exc:
                read_errors[k] = ImageFailure("unreadable_file", f"{type(exc).__name__}: {exc}")
                data = b""
            blobs.append(data)
            sizes.append(_original_size(data) if data else None)
        send = [k for k in range(len(names)) if k not in read_errors]
        results = dict(zip(send, self.backend.encode_files([blobs[k] for k in send]), strict=True))
        results.update(read_errors)
        images, failures, codes = [], [], []
        for k, name in enumerate(names):
            r = results[k]
            if isinstance(r, ImageFailure):
                failures.append({"path": name, "code": r.code, "message": r.message})
                continue
            if r.shape != self.grid_shape:
                raise RuntimeError(f"{name}: backend returned codes {r.shape}, expected {self.grid_shape}")
            images.append({"path": name, "size": sizes[k]})
            codes.append(r)
        arr = np.stack(codes).astype(np.uint16) if codes else np.zeros((0, *self.grid_shape), np.uint16)
        atomic_write(npy_path, _npy_bytes(arr))
        atomic_write(meta_path, _json_bytes({"images": images, "failures": failures}))  # marks the chunk done
        self.report.failures += len(failures)

    def _assemble_shard(self, i: int, num_chunks: int, partial: Path) -> None:
        images: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        parts = []
        for j in range(num_chunks):
            meta = json.loads((partial / f"chunk-{j:05d}.json").read_text())
            parts.append(np.load(partial / f"chunk-{j:05d}.npy", allow_pickle=False))
            images += meta["images"]
            failures += meta["failures"]
        codes = np.concatenate(parts).astype(np.uint16)  # (N, h, w, D)
        for row, entry in enumerate(images):
            entry["row"] = row
        npy = _npy_bytes(codes)
        name = f"shard-{i:05d}"
        manifest = {
            "format_version": FORMAT_VERSION,
            "shard": i,
            "codes_file": f"{name}.npy",
            "codes_sha256": hashlib.sha256(npy).hexdigest(),
            "codes_shape": list(codes.shape),
            "dtype": "uint16",
            "layout": "(N, h, w, depth): row n = images[n]; depth d means the first d codes per position",
            "model": self.model,
            "preprocessing": self.preprocessing,
            "images": images,
            "failures": failures,
        }
        atomic_write(self.cfg.out / f"{name}.npy", npy)
        atomic_write(self.cfg.out / f"{name}.json", _json_bytes(manifest))  # last: marks the shard done

    def _maybe_write_manifest(self, plan: dict[str, Any]) -> bool:
        shards = []
        for i in range(plan["num_shards"]):
            path = self.cfg.out / f"shard-{i:05d}.json"
            if not path.exists():
                return False  # another rank is still working; it writes the manifest when it finishes
            shards.append(json.loads(path.read_text()))
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "shard_size": plan["shard_size"],
            "num_files": len(plan["files"]),
            "num_images": sum(s["codes_shape"][0] for s in shards),
            "num_failures": sum(len(s["failures"]) for s in shards),
            "shards": [
                {
                    "shard": s["shard"],
                    "codes_file": s["codes_file"],
                    "manifest": f"shard-{s['shard']:05d}.json",
                    "num_images": s["codes_shape"][0],
                    "codes_sha256": s["codes_sha256"],
                }
                for s in shards
            ],
            "failures": [f for s in shards for f in s["failures"]],
        }
        atomic_write(self.cfg.out / "manifest.json", _json_bytes(manifest))
        partial = self.cfg.out / ".partial"
        if partial.exists() and not any(partial.iterdir()):
            partial.rmdir()
        return True


def tokenize(cfg: TokenizeConfig, backend: CodesBackend, on_chunk: ChunkHook | None = None) -> RunReport:
    """Run (or resume) a tokenization; see the module docstring for the output format."""
    return Tokenizer(cfg, backend, on_chunk).run()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="evotok tokenize", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("dataset", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="shards folder (resumes if it holds the same run)")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (fixed for a run)")
    p.add_argument(
        "--chunk-size", type=int, default=64, help="images per persisted chunk (resume granularity)"
    )
    p.add_argument("--server", help="EvoTok server URL (default: the model in this process)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight with --server")
    p.add_argument(
        "--api-key", default=os.environ.get("EVOTOK_API_KEY"), help="bearer token (env EVOTOK_API_KEY)"
    )
    p.add_argument("--weights", help="model folder for local mode (default: the shipped model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not args.dataset.is_dir():
        p.error(f"{args.dataset} is not a folder")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    cfg = TokenizeConfig(
        args.dataset, args.out, args.shard_size, args.chunk_size, rank, world, not args.no_progress
    )
    from evotok.client import EvoTokError

    try:
        backend = make_backend(
            args.server,
            api_key=args.api_key,
            concurrency=args.concurrency,
            weights=args.weights,
            backend=args.backend,
        )
        try:
            report = tokenize(cfg, backend)
        finally:
            backend.close()
    except (OSError, ValueError, EvoTokError) as exc:
        sys.stderr.write(f"evotok tokenize: {exc}\n")
        return 1
    sys.stdout.write(
        f"rank {rank}/{world}: wrote {len(report.shards_written)} shards, skipped {len(report.shards_skipped)} done, "
        f"{report.images_encoded} images encoded, {report.failures} failures"
        + ("; manifest.json written\n" if report.manifest_written else "\n")
    )
    return 0
