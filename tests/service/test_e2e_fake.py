"""End to end against a real uvicorn server (FakeRuntime model): batching, forms, disconnects, workers, drain."""

from __future__ import annotations

import asyncio
import io
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import png_bytes
from tests.service.server import Server, metric_values, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
APP = ["uvicorn", "--factory", "tests.service.fake_app:build"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"EVOTOK_MAX_BATCH_SIZE": "8", "EVOTOK_MAX_QUEUE_DELAY_MS": "10", "EVOTOK_TEST_FAKE_DELAY_S": "0.02",
           "EVOTOK_WARMUP_BATCH_SIZES": "[1]", "EVOTOK_MAX_QUEUE_SIZE": "64"}
    srv = start_server(APP, env, tmp_path_factory.mktemp("srv") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


async def _burst(url: str, n: int, concurrency: int) -> list[httpx.Response]:
    data = png_bytes()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(i: int) -> httpx.Response:
            async with sem:
                return await client.post("/encode", content=data, headers={"content-type": "image/png"})
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_forms_agree_over_http(server: Server) -> None:
    data = png_bytes((90, 64), seed=2)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        j = c.post("/encode", files={"image": ("a.png", data, "image/png")}).json()
        n = c.post("/encode", content=data, headers={"content-type": "image/png", "accept": "application/x-npy"})
        arr = np.load(io.BytesIO(n.content), allow_pickle=False)
        np.testing.assert_array_equal(arr, np.array(j["codes"]))
        png_json = c.post("/decode", json={"codes": j["codes"]})
        buf = io.BytesIO()
        np.save(buf, arr)
        png_npy = c.post("/decode", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        assert png_json.status_code == 200 and png_json.content == png_npy.content
        bad = c.post("/decode", json={"codes": [[[-1]]]})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_codes"
        assert c.get("/healthz").status_code == 200


def test_concurrent_requests_are_batched(server: Server) -> None:
    responses = asyncio.run(_burst(server.url, 64, 32))
    assert all(r.status_code == 200 for r in responses)
    text = httpx.get(f"{server.url}/metrics").text
    count = metric_values(text, "evotok_batch_size_count", op="encode")[0]
    total = metric_values(text, "evotok_batch_size_sum", op="encode")[0]
    at_most_one = metric_values(text, "evotok_batch_size_bucket", op="encode", le="1.0")[0]
    assert total >= 64
    assert total / count > 1.5, (total, count)  # average batch well above 1
    assert at_most_one < count  # some batches had more than one item


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One item per batch, 0.5 s per batch: a request queued behind two others waits >= 0.5 s."""
    env = {"EVOTOK_MAX_BATCH_SIZE": "1", "EVOTOK_MAX_QUEUE_DELAY_MS": "1", "EVOTOK_TEST_FAKE_DELAY_S": "0.5",
           "EVOTOK_WARMUP_BATCH_SIZES": "[1]"}
    srv = start_server(APP, env, tmp_path_factory.mktemp("slow") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_client_disconnect_is_detected(slow_server: Server) -> None:
    url = slow_server.url

    def metric(name: str, **labels: str) -> float:
        return sum(metric_values(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels))

    before = metric("evotok_client_disconnects_total", endpoint="encode")

    async def impatient() -> None:
        # Two busy requests hold the (one-item, 0.5 s) runtime; the impatient one queues behind them and hangs
        # up after 0.3 s, so the server still has >= 0.5 s of its work left when the client is gone (with the
        # module server's 20 ms batches a loaded box could finish the work before it read the hang-up).
        async with httpx.AsyncClient(base_url=url, timeout=60) as client, \
                httpx.AsyncClient(base_url=url, timeout=60) as other:
            assert (await other.get("/healthz")).status_code == 200  # connection already open: no connect delay
            data = png_bytes()
            busy = [asyncio.create_task(client.post("/encode", content=data, headers={"content-type": "image/png"}))
                    for _ in range(2)]
            end = time.monotonic() + 30
            while metric("evotok_http_requests_in_flight", endpoint="encode") < 2:  # both reached the server
                assert time.monotonic() < end, "busy requests never reached the server"
                await asyncio.sleep(0.02)
            with pytest.raises(httpx.ReadTimeout):
                await other.post("/encode", content=data, headers={"content-type": "image/png"},
                                 timeout=httpx.Timeout(30.0, read=0.3))
            assert [r.status_code for r in await asyncio.gather(*busy)] == [200, 200]

    asyncio.run(impatient())
    # the server notices the hang-up on its own schedule (a loaded box); poll instead of one fixed sleep
    deadline = time.monotonic() + 20
    while metric("evotok_client_disconnects_total", endpoint="encode") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric("evotok_client_disconnects_total", endpoint="encode") == before + 1


def test_two_workers_share_metrics(tmp_path: Path) -> None:
    mp = tmp_path / "prom"
    mp.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp), "EVOTOK_WARMUP_BATCH_SIZES": "[1]"}
    srv = start_server([*APP, "--workers", "2"], env, tmp_path / "server.log")
    try:
        srv.wait_ready()
        time.sleep(1.0)  # both workers up (readiness above may have come from one)
        n = 20
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            for _ in range(n):
                assert c.post("/encode", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
            counts = set()
            for _ in range(6):  # whichever worker answers, it reports the sum over both
                text = c.get("/metrics").text
                counts.add(sum(metric_values(text, "evotok_http_requests_total", endpoint="encode", code="200")))
        assert counts == {float(n)}, counts
        assert len({p.name.split("_")[-1] for p in mp.glob("*.db")}) >= 2  # files from two processes
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    env = {"EVOTOK_TEST_FAKE_DELAY_S": "0.3", "EVOTOK_MAX_BATCH_SIZE": "1", "EVOTOK_WARMUP_BATCH_SIZES": "[1]"}
    srv = start_server(APP, env, tmp_path / "server.log")
    srv.wait_ready()

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            data = png_bytes()
            tasks = [asyncio.create_task(client.post("/encode", content=data, headers={"content-type": "image/png"}))
                     for _ in range(3)]
            await asyncio.sleep(0.15)
            srv.proc.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*tasks)]

    try:
        assert asyncio.run(run()) == [200, 200, 200]
        assert srv.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert "Application shutdown complete" in srv.log()
    finally:
        srv.stop()
