"""``evotok tokenize --engine ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``, no mocks).

One cluster for the module: the ray engine must write byte-identical output to the local engine, and a ray
driver SIGKILLed mid-run (the real CLI in a subprocess, connected to the same cluster) must resume to the same
bytes. Actors run the fake runtime (shaped like the shipped model), built from a picklable factory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from evotok.tokenize import TokenizeConfig, tokenize
from evotok.tokenize.ray_engine import pool_size, tokenize_ray
from tests.client.server import REPO
from tests.tools.tokenize_data import (
    fake_backend,
    kill_midway,
    run_cli,
    snapshot,
    write_parquet_pyarrow,
    write_photos,
    write_tars,
)

pytestmark = pytest.mark.slow
SHARD, CHUNK = 5, 2


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A 2-CPU local cluster; workers import ``tests`` through PYTHONPATH, inherited from this process."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("ray-data")
    samples = write_photos(root / "folder")
    write_tars(root / "wds", samples)
    write_parquet_pyarrow(root / "pq", samples)
    return {"webdataset": [str(root / "wds")], "parquet": [str(root / "pq")]}


def config(specs: list[str], out: Path, fmt: str) -> TokenizeConfig:
    return TokenizeConfig(specs, out, shard_size=SHARD, chunk_size=CHUNK, progress=False, out_format=fmt)


@pytest.mark.parametrize(("source", "fmt"), [("webdataset", "parquet"), ("parquet", "webdataset")])
def test_ray_output_is_byte_identical_to_local(
    ray_address: str, sources: dict[str, list[str]], tmp_path: Path, source: str, fmt: str
) -> None:
    report = tokenize_ray(config(sources[source], tmp_path / "ray", fmt), partial(fake_backend, 0.0))
    assert report.engine == "ray" and report.manifest_written and report.samples_processed == 14
    tokenize(config(sources[source], tmp_path / "local", fmt), fake_backend())
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    again = tokenize_ray(config(sources[source], tmp_path / "ray", fmt), partial(fake_backend, 0.0))
    assert again.samples_processed == 0 and again.shards_skipped == [0, 1, 2]  # a finished run is a no-op


def test_ray_driver_killed_and_resumed_is_byte_identical(
    ray_address: str, sources: dict[str, list[str]], tmp_path: Path
) -> None:
    args = [*sources["webdataset"], "--format", "webdataset", "--shard-size", str(SHARD)]
    args += ["--chunk-size", str(CHUNK), "--no-progress", "--engine", "ray", "--address", ray_address]
    tokenize(config(sources["webdataset"], tmp_path / "local", "webdataset"), fake_backend())
    killed = tmp_path / "killed"
    # 0.3 s per batch: the kill lands after 3 of the 8 chunks are persisted
    kill_midway(killed, *args, "--out", str(killed), delay_s=0.3, chunks_before_kill=3)
    resumed = run_cli(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    found = re.search(
        r"^ray: (\d+) images, (\d+) failures in [\d.]+ s \([\d.]+ img/s\)", resumed.stdout, re.M
    )
    assert found and int(found[1]) + int(found[2]) < 14, resumed.stdout  # persisted chunks were not redone
    assert snapshot(killed) == snapshot(tmp_path / "local")


@pytest.mark.parametrize(
    ("resources", "cpus", "gpus", "expected"),
    [
        ({"CPU": 2.0}, 1.0, 0.0, 1),  # one CPU stays free for read tasks
        ({"CPU": 16.0}, 2.0, 0.0, 7),
        ({"CPU": 32.0, "GPU": 4.0}, 1.0, 1.0, 4),
        ({"CPU": 4.0, "GPU": 8.0}, 1.0, 1.0, 3),  # CPUs bound the GPU actors too
        ({"CPU": 2.0}, 2.0, 0.0, None),  # the pool would take every CPU: refused
        ({"CPU": 8.0}, 1.0, 1.0, None),  # no GPU in the cluster
    ],
)
def test_pool_size_leaves_cpus_for_reads(
    resources: dict[str, float], cpus: float, gpus: float, expected: Any
) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="no room for one actor"):
            pool_size(resources, cpus, gpus)
    else:
        assert pool_size(resources, cpus, gpus) == expected
