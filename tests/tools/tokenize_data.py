"""Helpers for the dataset tokenization tests: one photo set written as a folder, as WebDataset tars (with the
``webdataset`` package) and as Parquet (with pyarrow and with ``datasets``), a picklable fake backend, and
readers that turn each output format back into ``{key: codes}``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evotok.tools.backends import LocalBackend
from tests.client.server import REPO, fake_runtime
from tests.tools.photos import write_photo_set

IMAGE_SUFFIXES = (".jpg", ".png", ".webp")


def fake_backend(delay_s: float = 0.0) -> LocalBackend:
    """The fake runtime (shaped like the shipped model) behind the local backend; picklable via partial."""
    return LocalBackend(fake_runtime(delay_s))


def folder_samples(root: Path) -> list[tuple[str, str, bytes]]:
    """(key, extension, bytes) of the photo set's images in the folder source's order."""
    from evotok.tokenize import list_images

    return [
        (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1], (root / name).read_bytes())
        for name in list_images(root)
    ]


def write_photos(root: Path) -> list[tuple[str, str, bytes]]:
    write_photo_set(root)
    return folder_samples(root)


def write_tars(folder: Path, samples: list[tuple[str, str, bytes]], parts: int = 2) -> list[Path]:
    """img2dataset-like shards (``key.jpg`` + ``key.txt`` + ``key.json``) written with ``webdataset.TarWriter``."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    per = (len(samples) + parts - 1) // parts
    for p in range(parts):
        path = folder / f"{p:05d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for key, ext, data in samples[p * per : (p + 1) * per]:
                meta = json.dumps({"key": key, "caption": f"a photo of {key}"}).encode()
                sink.write({"__key__": key, ext: data, "txt": f"a photo of {key}".encode(), "json": meta})
        paths.append(path)
    return paths


def write_parquet_pyarrow(folder: Path, samples: list[tuple[str, str, bytes]], parts: int = 2) -> list[Path]:
    """``key`` + ``jpg`` (binary) columns, as img2dataset's parquet output; small row groups (4 rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = (len(samples) + parts - 1) // parts
    paths = []
    for p in range(parts):
        part = samples[p * per : (p + 1) * per]
        table = pa.table(
            {
                "key": pa.array([k for k, _, _ in part], pa.string()),
                "jpg": pa.array([d for _, _, d in part], pa.binary()),
                "caption": pa.array([f"a photo of {k}" for k, _, _ in part], pa.string()),
            }
        )
        path = folder / f"part-{p:05d}.parquet"
        pq.write_table(table, path, row_group_size=4)
        paths.append(path)
    return paths


def write_parquet_datasets(folder: Path, samples: list[tuple[str, str, bytes]]) -> Path:
    """A Hub-style dataset folder (``data/train-*.parquet``) written by ``datasets`` with an ``Image`` column
    (stored as the ``{bytes, path}`` struct)."""
    import datasets

    features = datasets.Features({"key": datasets.Value("string"), "image": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {
            "key": [k for k, _, _ in samples],
            "image": [{"bytes": d, "path": f"{k}.{ext}"} for k, ext, d in samples],
        },
        features=features,
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


# --- reading outputs back --------------------------------------------------------------------------------
def read_codes(out: Path) -> dict[str, np.ndarray]:
    """``{key: codes (h, w, D) uint16}`` of a finished run, in whichever format it was written."""
    fmt = json.loads((out / "manifest.json").read_text())["format"]
    codes: dict[str, np.ndarray] = {}
    if fmt == "npy":
        for man_path in sorted(out.glob("shard-*.json")):
            man = json.loads(man_path.read_text())
            arr = np.load(out / man["codes_file"], allow_pickle=False)
            for img in man["images"]:
                codes[img["key"]] = arr[img["row"]]
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for path in sorted(out.glob("shard-*.parquet")):
            table = pq.read_table(path)
            assert str(table.schema.field("codes").type) == "fixed_size_list<element: uint16>[4096]"
            for key, flat, shape in zip(
                table.column("key").to_pylist(),
                table.column("codes").to_pylist(),
                table.column("shape").to_pylist(),
                strict=True,
            ):
                codes[key] = np.asarray(flat, np.uint16).reshape(shape)
    else:
        import webdataset as wds

        urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            info = json.loads(sample["json"])
            arr = np.load(io.BytesIO(sample["codes.npy"]), allow_pickle=False)
            assert arr.dtype == np.uint16 and list(arr.shape) == info["shape"]
            codes[info["key"]] = arr
    return codes


def read_failures(out: Path) -> dict[str, str]:
    return {f["key"]: f["code"] for f in json.loads((out / "manifest.json").read_text())["failures"]}


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished run (partial chunks must be gone)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert not any(name.startswith(".partial") for name in files), sorted(files)
    return files


# --- the CLI in a subprocess, with the fake runtime -------------------------------------------------------
def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.tools.tokenize_fake_cli", *args]


def cli_env(delay_s: float = 0.0) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "EVOTOK_TEST_DELAY_S": str(delay_s)}


def run_cli(*args: str, delay_s: float = 0.0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), env=cli_env(delay_s), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command(*args),
        env={**cli_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def kill_midway(out: Path, *args: str, delay_s: float, chunks_before_kill: int, timeout: float = 180) -> None:
    """Start the CLI, SIGKILL it once ``chunks_before_kill`` chunks are persisted (shards count as theirs)."""
    proc = subprocess.Popen(
        cli_command(*args), env=cli_env(delay_s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if persisted_chunks(out) >= chunks_before_kill:
                break
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err.decode()[-2000:]}"
    assert not (out / "manifest.json").exists(), "the run finished before the kill"


def persisted_chunks(out: Path) -> int:
    """Chunks persisted so far, counting a finished shard as its chunks (from its manifest)."""
    n = len(list(out.glob(".partial/*/chunk-*.json")))
    plan_path = out / "plan.json"
    if plan_path.exists():
        try:
            plan: dict[str, Any] = json.loads(plan_path.read_text())
        except ValueError:
            return n
        per_shard = -(-plan["shard_size"] // plan["chunk_size"])
        n += per_shard * len(list(out.glob("shard-*.json")))
    return n
