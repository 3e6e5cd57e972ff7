"""``evotok tokenize`` over WebDataset and Parquet sources into npy / parquet / webdataset shards.

Every source is built from the same photo set in the test (tars with ``webdataset.TarWriter``, Parquet with
pyarrow and with ``datasets``), tokenized with the fake runtime in process, and read back with pyarrow,
``datasets`` and ``webdataset``: each source x format gives the same codes per key as the folder -> npy run.
Interruptions: in process (an exception after a chunk) for every format, and a real SIGKILL of the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evotok.tokenize import TokenizeConfig, tokenize
from evotok.tokenize.sinks import webdataset_member_key
from tests.client.server import REPO
from tests.tools.tokenize_data import (
    fake_backend,
    kill_midway,
    read_codes,
    read_failures,
    run_cli,
    snapshot,
    start_cli,
    write_parquet_datasets,
    write_parquet_pyarrow,
    write_photos,
    write_tars,
)

SHARD, CHUNK = 5, 2  # 14 samples -> 3 shards (5, 5, 4), chunks of 2
FORMATS = ("npy", "parquet", "webdataset")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("datasets")
    samples = write_photos(root / "folder")
    tars = write_tars(root / "wds", samples)
    write_parquet_pyarrow(root / "pq", samples)
    write_parquet_datasets(root / "hf", samples)
    return {
        "root": root,
        "samples": samples,
        "specs": {
            "folder": [str(root / "folder")],
            "webdataset-dir": [str(root / "wds")],
            "webdataset-files": [str(p) for p in tars],
            "webdataset-brace": [str(root / "wds" / "{00000..00001}.tar")],
            "parquet-pyarrow": [str(root / "pq")],
            "parquet-datasets": [str(root / "hf")],
        },
    }


def run(specs: list[str], out: Path, fmt: str = "npy", **kw: Any) -> Any:
    on_chunk = kw.pop("on_chunk", None)
    cfg = TokenizeConfig(specs, out, shard_size=SHARD, chunk_size=CHUNK, progress=False, out_format=fmt, **kw)
    return tokenize(cfg, fake_backend(), on_chunk=on_chunk)


@pytest.fixture(scope="module")
def reference(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The folder -> npy run that every other combination must match."""
    out = tmp_path_factory.mktemp("reference")
    run(data["specs"]["folder"], out)
    codes, failures = read_codes(out), read_failures(out)
    assert len(codes) + len(failures) == len(data["samples"]) == 14
    assert failures.get("broken/truncated") == "invalid_image"  # a truncated JPEG never decodes
    return {"codes": codes, "failures": failures}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "source", ["folder", "webdataset-dir", "webdataset-files", "parquet-pyarrow", "parquet-datasets"]
)
def test_source_x_format_gives_the_folder_codes_per_key(
    data: dict[str, Any], reference: dict[str, Any], tmp_path: Path, source: str, fmt: str
) -> None:
    report = run(data["specs"][source], tmp_path / "out", fmt)
    assert report.manifest_written and report.shards_written == [0, 1, 2]
    codes = read_codes(tmp_path / "out")
    assert sorted(codes) == sorted(reference["codes"])
    for key, expected in reference["codes"].items():
        np.testing.assert_array_equal(codes[key], expected, err_msg=key)
    assert read_failures(tmp_path / "out") == reference["failures"]
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["source"]["kind"] == source.split("-")[0]
    assert not any(Path(f).is_absolute() for f in plan["source"]["files"])


def test_brace_pattern_matches_the_directory(data: dict[str, Any], tmp_path: Path) -> None:
    run(data["specs"]["webdataset-brace"], tmp_path / "brace", "webdataset")
    run(data["specs"]["webdataset-dir"], tmp_path / "dir", "webdataset")
    assert snapshot(tmp_path / "brace") == snapshot(tmp_path / "dir")


def test_parquet_output_loads_with_datasets_and_pyarrow(
    data: dict[str, Any], reference: dict[str, Any], tmp_path: Path
) -> None:
    import datasets
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    run(data["specs"]["webdataset-dir"], out, "parquet")
    files = sorted(str(p) for p in out.glob("shard-*.parquet"))
    meta = json.loads(pq.read_schema(files[0]).metadata[b"evotok"])
    assert meta["model"]["name"] == "fake" and meta["model"]["weights_hash"] == "0" * 64
    assert meta["preprocessing"]["resize"] == "center-crop"
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.column_names == ["key", "codes", "shape", "width", "height"]
    assert len(ds) == len(reference["codes"])
    ds = ds.with_format("numpy")
    for row in ds:
        expected = reference["codes"][row["key"]]
        assert list(row["shape"]) == [16, 16, 16]
        np.testing.assert_array_equal(row["codes"].reshape(row["shape"]), expected)
    astronaut = next(
        r
        for r in datasets.load_dataset("parquet", data_files=files, split="train")
        if r["key"] == "people/astronaut"
    )
    assert (astronaut["width"], astronaut["height"]) == (512, 512)


def test_per_sample_failures_are_recorded_not_fatal(data: dict[str, Any], tmp_path: Path) -> None:
    """A tar sample without an image, a key used twice, a null Parquet image, bytes that are no image."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    good = data["samples"][0]
    with wds.TarWriter(str(tmp_path / "a.tar"), encoder=False) as sink:
        sink.write({"__key__": "ok", good[1]: good[2]})
        sink.write({"__key__": "caption-only", "txt": b"no image here"})
        sink.write({"__key__": "garbage", "jpg": b"not a jpeg"})
    with wds.TarWriter(str(tmp_path / "b.tar"), encoder=False) as sink:
        sink.write({"__key__": "ok", good[1]: good[2]})  # the same key again, in another shard
    report = run([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], tmp_path / "wds-out", "webdataset")
    assert report.manifest_written and report.failures == 3
    assert read_failures(tmp_path / "wds-out") == {
        "caption-only": "no_image",
        "garbage": "invalid_image",
        "ok": "duplicate_key",
    }
    assert list(read_codes(tmp_path / "wds-out")) == ["ok"]

    pq.write_table(
        pa.table({"key": ["a", "b"], "image": pa.array([good[2], None], pa.binary())}), tmp_path / "n.parquet"
    )
    report = run([str(tmp_path / "n.parquet")], tmp_path / "pq-out", "parquet")
    assert read_failures(tmp_path / "pq-out") == {"b": "missing_image"} and list(
        read_codes(tmp_path / "pq-out")
    ) == ["a"]


def test_keys_with_dots_survive_the_webdataset_format(tmp_path: Path) -> None:
    from tests.tools.photos import write_photo_set

    write_photo_set(tmp_path / "src")
    (tmp_path / "src" / "people" / "astronaut.jpg").rename(tmp_path / "src" / "people" / "astro.v2%.jpg")
    run([str(tmp_path / "src")], tmp_path / "out", "webdataset")
    assert "people/astro.v2%" in read_codes(tmp_path / "out")
    assert webdataset_member_key("people/astro.v2%") == "people/astro%2Ev2%25"
    names = []
    for tar in sorted((tmp_path / "out").glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            names += tf.getnames()
    assert "people/astro%2Ev2%25.codes.npy" in names and "people/astro%2Ev2%25.json" in names


def test_ray_and_data_extras_stay_out_of_the_serving_image() -> None:
    """The Dockerfile installs only the extras it names; Ray and the data libraries are not among them."""
    import runpy

    dockerfile = (REPO / "Dockerfile").read_text()
    extras = re.findall(r"requirements\.py pyproject\.toml ([\w,]+)", dockerfile)
    assert extras, "the Dockerfile no longer resolves its requirements with requirements.py"
    requirements = runpy.run_path(str(REPO / "deploy" / "docker" / "requirements.py"))["requirements"]
    for group in extras:
        assert not {"ray", "data"} & set(group.split(",")), group
        reqs = requirements(REPO / "pyproject.toml", group.split(","))
        assert not [r for r in reqs if r.startswith(("ray", "pyarrow", "webdataset", "datasets"))], reqs
    # the package and its CLI import neither Ray nor the data libraries until a run needs them
    code = "import sys, evotok.tokenize.cli; print(sorted(m for m in ('ray', 'pyarrow', 'webdataset') if m in sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert imported.stdout.strip() == "[]", imported.stdout


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_then_resumed_is_byte_identical(data: dict[str, Any], tmp_path: Path, fmt: str) -> None:
    specs = data["specs"]["parquet-pyarrow"]
    run(specs, tmp_path / "straight", fmt)
    processed = []
    for stop_after in (2, 5):  # inside shard 0, then inside shard 1 (shard 0 finished on the way)

        def stop(shard: int, done: int, stop_after: int = stop_after) -> None:
            if done >= stop_after:
                processed.append(done)
                raise Interrupted

        with pytest.raises(Interrupted):
            run(specs, tmp_path / "resumed", fmt, on_chunk=stop)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    report = run(specs, tmp_path / "resumed", fmt)
    # every sample processed exactly once over the three runs: a persisted chunk is never redone
    assert report.manifest_written and sum(processed) + report.samples_processed == 14
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "straight")


def test_resume_refuses_a_different_format(data: dict[str, Any], tmp_path: Path) -> None:
    run(data["specs"]["parquet-pyarrow"], tmp_path / "out", "parquet")
    with pytest.raises(ValueError, match=r"different run \(differs in \['format'\]\)"):
        run(data["specs"]["parquet-pyarrow"], tmp_path / "out", "webdataset")


@pytest.mark.slow
def test_cli_killed_and_resumed_is_byte_identical(data: dict[str, Any], tmp_path: Path) -> None:
    """The real CLI in a subprocess, SIGKILLed mid-run (fake runtime slowed to 0.2 s per batch), resumed."""
    args = [*data["specs"]["webdataset-dir"], "--format", "parquet", "--shard-size", str(SHARD)]
    args += ["--chunk-size", str(CHUNK), "--no-progress"]
    straight = run_cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    summary = (
        r"^local: (\d+) images, (\d+) failures in [\d.]+ s \([\d.]+ img/s\); wrote 3 shards, skipped 0 done"
    )
    found = re.match(summary, straight.stdout)
    assert found and int(found[1]) + int(found[2]) == 14, straight.stdout
    assert "manifest.json written" in straight.stdout

    killed = tmp_path / "killed"
    kill_midway(killed, *args, "--out", str(killed), delay_s=0.2, chunks_before_kill=4)
    resumed = run_cli(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"skipped [12] done", resumed.stdout), resumed.stdout
    assert snapshot(killed) == snapshot(tmp_path / "straight")


def test_docs_read_back_snippets_run(data: dict[str, Any], reference: dict[str, Any], tmp_path: Path) -> None:
    """The Python blocks of docs/datasets.md, run on real parquet and webdataset output (``tokens/``,
    ``tokens-wds/``), print the key and shape they read."""
    run(data["specs"]["folder"], tmp_path / "tokens", "parquet")
    run(data["specs"]["folder"], tmp_path / "tokens-wds", "webdataset")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "datasets.md").read_text(), re.S)
    assert len(blocks) == 3
    first_key = sorted(reference["codes"])[0]
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        key, shape = done.stdout.strip().split(" ", 1)
        assert key == first_key and shape in ("(16, 16, 16)", "(16, 16, 4)"), done.stdout


@pytest.mark.slow
def test_torchrun_ranks_match_one_process(data: dict[str, Any], tmp_path: Path) -> None:
    """Two ranks (RANK / WORLD_SIZE as torchrun sets them) into one folder == one local process."""
    args = [*data["specs"]["parquet-datasets"], "--format", "webdataset", "--shard-size", str(SHARD)]
    args += [
        "--chunk-size",
        str(CHUNK),
        "--no-progress",
        "--engine",
        "torchrun",
        "--out",
        str(tmp_path / "ranks"),
    ]
    ranks = [start_cli(*args, env={"RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    assert outs[0][0].startswith("rank 0/2:") and "wrote 2 shards" in outs[0][0], outs[0]
    assert outs[1][0].startswith("rank 1/2:") and "wrote 1 shards" in outs[1][0], outs[1]
    run(data["specs"]["parquet-datasets"], tmp_path / "one", "webdataset")
    assert snapshot(tmp_path / "ranks") == snapshot(tmp_path / "one")
    alone = run_cli(*args)  # without torchrun's environment
    assert alone.returncode == 2 and "runs under torchrun" in alone.stderr


@pytest.mark.parametrize(
    ("local_rank", "visible", "expected"), [("3", None, "3"), ("1", "4,5,6,7", "5"), (None, "2", "2")]
)
def test_torchrun_ranks_get_their_own_gpu(
    monkeypatch: pytest.MonkeyPatch, local_rank: str | None, visible: str | None, expected: str
) -> None:
    from evotok.tokenize.cli import pin_local_gpu

    for name, value in (("LOCAL_RANK", local_rank), ("CUDA_VISIBLE_DEVICES", visible)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    pin_local_gpu()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == expected
