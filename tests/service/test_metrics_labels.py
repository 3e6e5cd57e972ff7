"""One label vocabulary: every error code has an explicit ``reason``, API stage series use the core's ops."""

from __future__ import annotations

from fastapi.testclient import TestClient

from evotok.service import metrics
from evotok.service.core import OP_TABLE, OPS
from evotok.service.errors import ERROR_TABLE, ClientGone
from evotok.service.handlers import _HTTP_CODES
from tests.service.conftest import png_bytes
from tests.service.fakes import ServiceFakeRuntime


def test_every_error_code_has_an_explicit_reason() -> None:
    codes = {code for _, code in ERROR_TABLE.values()} | set(_HTTP_CODES.values())
    codes |= {"internal", "http_error", ClientGone.code}
    missing = sorted(c for c in codes if c not in metrics._REASON_OF_CODE)
    assert not missing, f"error codes without a metrics reason (they would count as 'other'): {missing}"
    assert metrics.reason_of_code("server_busy") == "server_busy"
    assert metrics.reason_of_code("request_timeout") == "request_timeout"
    assert metrics.reason_of_code("invalid_image") == "invalid_input"
    assert metrics.reason_of_code("a_code_nobody_added") == "other"  # never mislabelled as the client's fault


def test_reasons_are_documented() -> None:
    doc = metrics.__doc__ or ""
    for reason in metrics.REASONS:
        assert f"``{reason}``" in doc, reason


def _stage_counts(text: str) -> dict[tuple[str, str, str], float]:
    """(op, stage, bucket) -> sample count of ``evotok_stage_duration_seconds``."""
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("evotok_stage_duration_seconds_count{"):
            head, value = line.rsplit(" ", 1)
            labels = dict(part.split("=", 1) for part in head[head.index("{") + 1:-1].split(","))
            key = (labels["op"].strip('"'), labels["stage"].strip('"'), labels["bucket"].strip('"'))
            out[key] = float(value)
    return out


def test_api_stages_use_the_core_op_vocabulary(client: TestClient) -> None:
    info = ServiceFakeRuntime().info
    image, grid = str(info.image_size), str(info.grid)
    before = _stage_counts(client.get("/metrics").text)
    data = png_bytes(seed=3)
    codes = client.post("/encode", content=data, headers={"content-type": "image/png"}).json()["codes"]
    assert client.post("/embed", content=data, headers={"content-type": "image/png"}).status_code == 200
    assert client.post("/embed", json={"codes": codes}).status_code == 200
    assert client.post("/decode", json={"codes": codes}).status_code == 200
    after = _stage_counts(client.get("/metrics").text)
    assert {op for op, _, _ in after} <= set(OPS), f"API stage series outside the core's ops: {sorted(after)}"
    grew = {k for k, v in after.items() if v > before.get(k, 0.0)}
    for op in OPS:
        bucket = image if OP_TABLE[op].takes == "image" else grid  # the same bucket as the op's batches
        for stage in ("decode_input", "runtime", "encode_output"):
            assert (op, stage, bucket) in grew, (op, stage, bucket, sorted(grew))


def test_only_workers_export_worker_readiness() -> None:
    """A fresh API process (app created, a request served) exports no ``evotok_worker_ready``, which the
    ``EvotokWorkerNotReady`` alert would read as a worker not ready; ``worker_ready()`` creates it."""
    import os
    import subprocess
    import sys

    code = (
        "from fastapi.testclient import TestClient; from prometheus_client import generate_latest; "
        "from evotok.service import metrics; from evotok.service.app import create_app; "
        "from tests.service.conftest import make_settings, png_bytes, wait_ready; "
        "from tests.service.fakes import ServiceFakeRuntime; png = png_bytes(); "
        "rt = ServiceFakeRuntime(); app = create_app(make_settings(), runtime_factory=lambda: rt); "
        "c = TestClient(app); c.__enter__(); wait_ready(c); print(c.post('/encode', content=png, headers={'content-type': 'image/png'}).status_code); "
        "print(b'evotok_worker_ready' in generate_latest()); metrics.worker_ready().set(1); "
        "print(b'evotok_worker_ready 1.0' in generate_latest()); c.__exit__(None, None, None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert out.stdout.split() == ["200", "False", "True"], out.stdout + out.stderr
