"""X-Request-ID (echoed, made when missing or invalid, in error bodies, access log and worker-side log lines),
the CORS allow-list (EVOTOK_CORS_ORIGINS) and OpenTelemetry tracing (spans captured by the SDK's in-memory
exporter; nothing imported while tracing is off)."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from evotok.service import request_context, tracing
from evotok.service.app import create_app
from evotok.service.redis_protocol import REQUEST_ID_FIELD, Keys, parse_work_entry
from evotok.service.request_context import PlainFormatter, RequestIdLogFilter
from evotok.tools.procs import free_port, stop_process
from tests.service.conftest import make_settings, png_bytes, wait_ready
from tests.service.fakes import ServiceFakeRuntime

REPO = Path(__file__).resolve().parents[2]
HEX32 = re.compile(r"^[0-9a-f]{32}$")
PNG = {"content-type": "image/png"}


# --- request id -----------------------------------------------------------------------------------------

def test_given_request_id_is_echoed(client: TestClient) -> None:
    r = client.post("/encode", content=png_bytes(), headers={**PNG, "X-Request-ID": "abc-123_x.y:z"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123_x.y:z"


def test_request_id_is_made_when_missing_or_invalid(client: TestClient) -> None:
    made = [client.get("/info").headers["x-request-id"] for _ in range(2)]
    assert all(HEX32.match(m) for m in made) and made[0] != made[1]
    for bad in ("x" * 129, "has space", "tab\there", ""):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert HEX32.match(rid), (bad, rid)
    assert client.get("/healthz", headers={"X-Request-ID": "y" * 128}).headers["x-request-id"] == "y" * 128


def test_request_id_in_error_bodies(client: TestClient) -> None:
    cases = [
        client.post("/encode", content=b"garbage", headers={**PNG, "X-Request-ID": "err-1"}),  # 422 invalid_image
        client.get("/nope", headers={"X-Request-ID": "err-2"}),  # 404 from Starlette
        client.post("/encode", content=b"x" * 3_000_000, headers={**PNG, "X-Request-ID": "err-3"}),  # 413 middleware
    ]
    for want, r in zip(("err-1", "err-2", "err-3"), cases, strict=True):
        assert r.status_code >= 400
        err = r.json()["error"]
        assert err["request_id"] == want and r.headers["x-request-id"] == want, (r.status_code, err)
    made = client.get("/nope")
    assert made.json()["error"]["request_id"] == made.headers["x-request-id"]


def test_openapi_error_schema_names_request_id(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "request_id" in schema["ErrorDetail"]["properties"]


def test_work_entry_carries_request_id_for_the_worker() -> None:
    keys = Keys("evotok")
    fields = {b"rid": b"internal-1", b"reply": b"evotok:reply:a", b"deadline_ms": b"10", b"enq_ms": b"1",
              b"dtype": b"|u1", b"shape": b"2", b"data": b"\x00\x01"}
    item = parse_work_entry(keys, keys.work("encode"), "1-0", {**fields, REQUEST_ID_FIELD.encode(): b"req-42"})
    assert item.http_request_id == "req-42" and item.request_id == "internal-1"
    assert parse_work_entry(keys, keys.work("encode"), "1-0", fields).http_request_id is None
    bad = {**fields, REQUEST_ID_FIELD.encode(): b"bad id\n"}
    assert parse_work_entry(keys, keys.work("encode"), "1-0", bad).http_request_id is None
    np.testing.assert_array_equal(item.payload, [0, 1])


def test_log_lines_inside_a_request_carry_its_id() -> None:
    """What configure_logging installs (API and worker): a bound id appears on every line; none outside."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdLogFilter(default=None))
    handler.setFormatter(PlainFormatter())
    logger = logging.getLogger("evotok.test.rid")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = request_context.bind("worker-req-7")
        logger.warning("encode ok")
        request_context.unbind(token)
        logger.warning("idle")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("encode ok request_id=worker-req-7")
    assert second.endswith("idle")


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The real serving path (cli.run_uvicorn: uvicorn_options with the access log config) over the fake."""
    port = free_port()
    code = (
        "from evotok.service.app import create_app\n"
        "from evotok.service.cli import run_uvicorn\n"
        "from evotok.service.settings import Settings\n"
        "from tests.service.fakes import ServiceFakeRuntime\n"
        "s = Settings()\n"
        "run_uvicorn(create_app(s, runtime_factory=ServiceFakeRuntime), s)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "EVOTOK_PORT": str(port), "EVOTOK_HOST": "127.0.0.1",
           "EVOTOK_WARMUP_BATCH_SIZES": "[1]", "EVOTOK_BATCH_CAP": "8", "EVOTOK_GRPC_PORT": "0",
           "EVOTOK_LOG_LEVEL": "info"}
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, log_path
    finally:
        stop_process(proc)


@pytest.mark.e2e
def test_access_log_carries_request_id(uvicorn_server: tuple[str, Path]) -> None:
    url, log_path = uvicorn_server
    ok = httpx.post(url + "/encode", content=png_bytes(), headers={**PNG, "X-Request-ID": "access-ok-1"})
    bad = httpx.post(url + "/encode", content=b"garbage", headers={**PNG, "X-Request-ID": "access-bad-2"})
    made = httpx.get(url + "/info")
    assert ok.status_code == 200 and bad.status_code == 422
    rid = made.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and rid not in log_path.read_text():
        time.sleep(0.05)
    lines = log_path.read_text().splitlines()
    for want in (r'"POST /encode HTTP/1\.1" 200 .*request_id=access-ok-1$',
                 r'"POST /encode HTTP/1\.1" 422 .*request_id=access-bad-2$',
                 rf'"GET /info HTTP/1\.1" 200 .*request_id={rid}$'):
        assert any(re.search(want, line) for line in lines), (want, lines[-10:])


# --- CORS ---------------------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"}


def test_cors_preflight_allowed_for_a_listed_origin(app_client: Callable[..., TestClient]) -> None:
    c = app_client(cors_origins=["https://app.example"])
    r = c.options("/encode", headers={**PREFLIGHT, "Origin": "https://app.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-request-id" in r.headers  # the preflight is answered outside the routes and still echoes an id
    other = c.options("/encode", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    simple = c.post("/encode", content=png_bytes(), headers={**PNG, "Origin": "https://app.example"})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_cors_off_by_default(client: TestClient) -> None:
    r = client.options("/encode", headers={**PREFLIGHT, "Origin": "https://app.example"})
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers
    post = client.post("/encode", content=png_bytes(), headers={**PNG, "Origin": "https://app.example"})
    assert "access-control-allow-origin" not in post.headers


# --- tracing -------------------------------------------------------------------------------------------------

def test_tracing_off_imports_nothing() -> None:
    """No SDK, instrumentation or exporter import (FastAPI itself may import the small opentelemetry API)."""
    code = (
        "import sys\n"
        "from evotok.service.app import create_app\n"
        "from evotok.service.settings import Settings\n"
        "from evotok.service import tracing\n"
        "app = create_app(Settings(), runtime_factory=lambda: None)\n"
        "with tracing.span('inference') as s: assert s is None\n"
        "assert not tracing.enabled()\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.instrumentation', 'opentelemetry.exporter')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOTOK_", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_endpoint_setting_and_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.endpoint(make_settings()) == ""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.endpoint(make_settings()) == "http://collector:4318"
    assert tracing.endpoint(make_settings(otlp_endpoint="http://mine:4318")) == "http://mine:4318"
    assert tracing.traces_url("http://mine:4318/") == "http://mine:4318/v1/traces"
    assert tracing.traces_url("http://mine:4318/v1/traces") == "http://mine:4318/v1/traces"


@pytest.fixture
def traced() -> Iterator[tuple[TestClient, object]]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    app = create_app(make_settings(), runtime_factory=ServiceFakeRuntime)

    assert tracing.install(app, make_settings(), exporter=exporter)
    try:
        with TestClient(app) as client:
            wait_ready(client)
            yield client, exporter
    finally:
        tracing.shutdown()


def test_spans_for_request_queue_wait_and_inference(traced: tuple[TestClient, object]) -> None:
    client, exporter = traced
    exporter.clear()  # type: ignore[attr-defined]
    enc = client.post("/encode", content=png_bytes(), headers={**PNG, "X-Request-ID": "trace-2"})
    assert enc.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}  # type: ignore[attr-defined]
    server = spans["POST /encode"]
    assert server.attributes["evotok.request_id"] == "trace-2"
    for name in ("queue_wait", "inference"):  # recorded by the serving core for the real request
        assert spans[name].parent is not None and spans[name].parent.span_id == server.context.span_id, name
        assert spans[name].attributes["op"] == "encode"
    assert spans["queue_wait"].end_time <= spans["inference"].start_time <= spans["inference"].end_time
    assert spans["inference"].attributes["batch"] >= 1
    client.get("/healthz")
    assert not any("healthz" in s.name for s in exporter.get_finished_spans())  # type: ignore[attr-defined]
