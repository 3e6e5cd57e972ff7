"""deploy/smoke_client.py against a real uvicorn server (fake runtime shaped like the shipped model).

The GPU-host smoke test (deploy/smoke.sh) cannot run here; its client can. Golden codes are produced by
the same deterministic fake runtime the server uses, so agreement must be 1.0; corrupting them must fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client.server import Server, fake_runtime, running_server
from tests.deploy.deploy_helpers import REPO

CLIENT = REPO / "deploy" / "smoke_client.py"
API_KEY = "smoke-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"EVOTOK_API_KEYS": json.dumps([API_KEY])}
    with running_server(tmp_path_factory.mktemp("smoke-uvicorn"), env=env) as s:
        yield s


def _golden(tmp: Path, corrupt: int = 0) -> Path:
    rt = fake_runtime()
    size = rt.info.image_size
    images = np.random.default_rng(7).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    codes = np.asarray(rt.encode(images), dtype=np.uint16)
    if corrupt:
        flat = codes.reshape(-1)
        flat[:corrupt] = (flat[:corrupt] + 1) % rt.info.codebook_size
    path = tmp / f"golden-{corrupt}.npz"
    np.savez(path, images=images, codes=codes)
    return path


def _run(server: Server, golden: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            "--url",
            server.url,
            "--golden",
            str(golden),
            "--api-key",
            API_KEY,
            "--requests",
            "24",
            "--concurrency",
            "8",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.e2e
def test_smoke_client_reports_agreement_and_throughput(server: Server, tmp_path: Path) -> None:
    rc, report = _run(server, _golden(tmp_path), "--min-agreement", "1.0")
    assert rc == 0, report
    assert report["code_agreement"] == 1.0
    assert len(report["code_agreement_by_depth"]) == 16
    assert len(report["round_trip_psnr_db"]) == 3
    tp = report["throughput"]
    assert tp["errors"] == 0 and tp["requests"] == 24 and tp["images_per_s"] > 0
    assert tp["p50_ms"] <= tp["p95_ms"] <= tp["p99_ms"]


@pytest.mark.e2e
def test_smoke_client_fails_on_disagreeing_codes(server: Server, tmp_path: Path) -> None:
    rc, report = _run(server, _golden(tmp_path, corrupt=500), "--min-agreement", "0.999")
    assert rc == 1 and not report["passed"]
    assert report["code_agreement"] < 0.999


@pytest.mark.e2e
def test_smoke_client_needs_the_api_key(server: Server, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            "--url",
            server.url,
            "--golden",
            str(_golden(tmp_path)),
            "--api-key",
            "wrong",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and ("401" in proc.stderr or "403" in proc.stderr)
