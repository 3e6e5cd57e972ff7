"""The output folder of a tokenize run: its fixed plan, persisted chunks, finished shards and manifest.

Every engine drives the same ``RunDir``; they differ only in where chunks are read and encoded. Layout (every
file written atomically: temp file, fsync, rename)::

    OUT/plan.json               the run's fixed plan: source files and samples (keys), sizes, format, model
    OUT/shard-00000.<ext>       codes of the shard's readable images in plan order (npy / parquet / tar)
    OUT/shard-00000.json        shard manifest: images (key, source, original size, row), failures, shapes,
                                model name + weights hash, preprocessing, sha256 of the data file
    OUT/manifest.json           every shard, totals, all failures (written once all shards exist)
    OUT/.partial/shard-00000/   chunk files of an unfinished shard (removed when the shard is written)

Samples are cut into shards of ``shard_size`` in plan order, shards into chunks of ``chunk_size``. A chunk is
persisted (``chunk-NNNNN.npy`` + ``.json``, the ``.json`` last) before it counts as done; a shard file is
assembled from its chunks, in plan order, once all of them exist; the shard's ``.json`` is written last and
marks it done. So a run killed at any point and resumed with the same arguments redoes at most the chunks in
flight and writes byte-identical files, whatever the engine and whatever order chunks finished in. Manifests
hold no timestamps and no absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evotok.tokenize.sinks import LAYOUT, SUFFIX, WRITERS, npy_bytes
from evotok.tokenize.sources import Sample, Source
from evotok.tokenize.work import Result
from evotok.tools.backends import ImageFailure

FORMAT_VERSION = 2


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Chunk:
    shard: int
    index: int
    start: int  # plan positions [start, stop)
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class RunDir:
    """Plan, chunk and shard bookkeeping for one output folder (see the module docstring)."""

    def __init__(
        self,
        out: Path,
        source: Source,
        samples: Sequence[Sample],
        *,
        out_format: str,
        shard_size: int,
        chunk_size: int,
        model: dict[str, Any],
        preprocessing: dict[str, Any],
    ) -> None:
        if shard_size < 1 or chunk_size < 1:
            raise ValueError("shard and chunk sizes must be >= 1")
        if out_format not in WRITERS:
            raise ValueError(f"unknown format {out_format!r}; choose one of {sorted(WRITERS)}")
        self.out, self.source, self.samples = out, source, list(samples)
        self.format, self.shard_size, self.chunk_size = out_format, shard_size, chunk_size
        self.model, self.preprocessing = model, preprocessing
        self.grid_shape = (model["grid"], model["grid"], model["num_depths"])
        self.num_shards = (len(self.samples) + shard_size - 1) // shard_size
        first: dict[str, int] = {}
        self.duplicate_of: dict[int, int] = {}  # plan position -> position of the key's first sample
        for pos, s in enumerate(self.samples):
            if s.key in first:
                self.duplicate_of[pos] = first[s.key]
            else:
                first[s.key] = pos

    # --- plan --------------------------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source.record(),
            "samples": [s.to_list() for s in self.samples],
            "format": self.format,
            "shard_size": self.shard_size,
            "chunk_size": self.chunk_size,
            "num_shards": self.num_shards,
            "model": self.model,
            "preprocessing": self.preprocessing,
        }

    def open(self) -> None:
        """Create the folder and write ``plan.json``, or check that it holds this same run."""
        self.out.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        path = self.out / "plan.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != plan:
                diff = [k for k in plan if old.get(k) != plan[k]]
                raise ValueError(
                    f"{self.out} holds a different run (differs in {diff}); "
                    "resume with the same source, format, model and sizes, or use a new --out"
                )
        else:
            atomic_write(path, json_bytes(plan))

    # --- shards and chunks -------------------------------------------------------------------------------
    def shard_name(self, i: int) -> str:
        return f"shard-{i:05d}"

    def shard_done(self, i: int) -> bool:
        name = self.shard_name(i)
        return (self.out / f"{name}.json").exists() and (self.out / f"{name}{SUFFIX[self.format]}").exists()

    def chunks(self, i: int) -> list[Chunk]:
        start, stop = i * self.shard_size, min((i + 1) * self.shard_size, len(self.samples))
        c = self.chunk_size
        return [Chunk(i, j, a, min(a + c, stop)) for j, a in enumerate(range(start, stop, c))]

    def chunk_start(self, pos: int) -> int:
        """The first plan position of the chunk holding ``pos``."""
        shard_start = pos // self.shard_size * self.shard_size
        return shard_start + (pos - shard_start) // self.chunk_size * self.chunk_size

    def _partial(self, i: int) -> Path:
        return self.out / ".partial" / self.shard_name(i)

    def chunk_done(self, chunk: Chunk) -> bool:
        return (self._partial(chunk.shard) / f"chunk-{chunk.index:05d}.json").exists()

    def shard_images(self, i: int) -> int:
        return sum(len(c) for c in self.chunks(i))

    def clean_finished(self, i: int) -> None:
        """Remove chunks left by a run killed after writing shard ``i``, before removing its chunks."""
        shutil.rmtree(self._partial(i), ignore_errors=True)

    def locator(self, pos: int) -> str:
        return self.source.locator(self.samples[pos])

    def write_chunk(self, chunk: Chunk, results: Sequence[Result]) -> int:
        """Persist a chunk's results (one per position, in order); returns its number of failures."""
        if len(results) != len(chunk):
            raise RuntimeError(f"chunk {chunk} got {len(results)} results; this is a bug")
        images, failures, codes = [], [], []
        for pos, (r, size) in zip(range(chunk.start, chunk.stop), results, strict=True):
            key, source = self.samples[pos].key, self.locator(pos)
            if isinstance(r, ImageFailure):
                failures.append({"key": key, "source": source, "code": r.code, "message": r.message})
                continue
            if r.shape != self.grid_shape:
                raise RuntimeError(f"{source}: backend returned codes {r.shape}, expected {self.grid_shape}")
            images.append({"key": key, "source": source, "size": size})
            codes.append(r)
        arr = np.stack(codes).astype(np.uint16) if codes else np.zeros((0, *self.grid_shape), np.uint16)
        partial = self._partial(chunk.shard)
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write(partial / f"chunk-{chunk.index:05d}.npy", npy_bytes(arr))
        # the .json last: it marks the chunk done
        atomic_write(
            partial / f"chunk-{chunk.index:05d}.json", json_bytes({"images": images, "failures": failures})
        )
        return len(failures)

    def duplicate_failure(self, pos: int) -> ImageFailure | None:
        first = self.duplicate_of.get(pos)
        if first is None:
            return None
        return ImageFailure(
            "duplicate_key", f"key {self.samples[pos].key!r} already used by {self.locator(first)}"
        )

    def assemble_shard(self, i: int) -> None:
        """Write shard ``i`` from its persisted chunks (all must exist), then its manifest, then drop the chunks."""
        partial = self._partial(i)
        images: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        parts = []
        for chunk in self.chunks(i):
            meta = json.loads((partial / f"chunk-{chunk.index:05d}.json").read_text())
            parts.append(np.load(partial / f"chunk-{chunk.index:05d}.npy", allow_pickle=False))
            images += meta["images"]
            failures += meta["failures"]
        codes = np.concatenate(parts).astype(np.uint16)  # (N, h, w, D)
        for row, entry in enumerate(images):
            entry["row"] = row
        name = self.shard_name(i)
        meta_common = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "preprocessing": self.preprocessing,
        }
        data = WRITERS[self.format](codes, images, {**meta_common, "shard": i})
        data_file = f"{name}{SUFFIX[self.format]}"
        manifest = {
            **meta_common,
            "shard": i,
            "format": self.format,
            "codes_file": data_file,
            "codes_sha256": hashlib.sha256(data).hexdigest(),
            "codes_shape": list(codes.shape),
            "dtype": "uint16",
            "layout": LAYOUT,
            "images": images,
            "failures": failures,
        }
        atomic_write(self.out / data_file, data)
        atomic_write(self.out / f"{name}.json", json_bytes(manifest))  # last: marks the shard done
        shutil.rmtree(partial, ignore_errors=True)

    def maybe_write_manifest(self) -> bool:
        """Write ``manifest.json`` if every shard is done (another rank may still be working)."""
        shards = []
        for i in range(self.num_shards):
            path = self.out / f"{self.shard_name(i)}.json"
            if not path.exists():
                return False
            shards.append(json.loads(path.read_text()))
        manifest = {
            "format_version": FORMAT_VERSION,
            "format": self.format,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "shard_size": self.shard_size,
            "num_samples": len(self.samples),
            "num_images": sum(s["codes_shape"][0] for s in shards),
            "num_failures": sum(len(s["failures"]) for s in shards),
            "shards": [
                {
                    "shard": s["shard"],
                    "codes_file": s["codes_file"],
                    "manifest": f"{self.shard_name(s['shard'])}.json",
                    "num_images": s["codes_shape"][0],
                    "codes_sha256": s["codes_sha256"],
                }
                for s in shards
            ],
            "failures": [f for s in shards for f in s["failures"]],
        }
        atomic_write(self.out / "manifest.json", json_bytes(manifest))
        partial = self.out / ".partial"
        if partial.exists() and not any(partial.iterdir()):
            partial.rmdir()
        return True


def model_record(info: Any) -> dict[str, Any]:
    """The model fields a run records (``ModelInfo`` -> JSON): a resumed run must use the same model."""
    return {
        "name": info.name,
        "weights_hash": info.weights_hash,
        "image_size": info.image_size,
        "grid": info.grid,
        "num_depths": info.num_depths,
        "codebook_size": info.codebook_size,
    }
