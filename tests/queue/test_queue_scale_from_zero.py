"""Scale from zero through the real API process: with no worker the API is ready and admits into the stream
(the lag KEDA's redis-streams trigger reads), and a worker started 3 s later answers every request 200."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from evotok.export.fake import write_fake_model_card
from evotok.service.redis_protocol import GROUP, Keys
from tests.queue.queue_harness import ApiProc, RedisServer, WorkerProc, png_bytes, queue_env

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def test_api_with_zero_workers_admits_and_a_late_worker_answers_all(redis_server: RedisServer, prefix: str,
                                                                     tmp_path: Path) -> None:
    card = write_fake_model_card(tmp_path / "model")
    env = queue_env(redis_server.url, prefix, EVOTOK_WEIGHTS=str(card), EVOTOK_REQUEST_TIMEOUT_S="60")
    api = ApiProc(env, tmp_path, "api0")
    worker = WorkerProc(env, "w0", tmp_path)
    api.start()
    try:
        api.wait_up(path="/readyz")  # ready with no worker: traffic must reach it to wake one
        c = redis_server.client()
        work = Keys(prefix).work("encode")
        assert any(g["name"] in (GROUP, GROUP.encode()) for g in c.xinfo_groups(work))  # made by the API
        bodies = [png_bytes(np.full((64, 64, 3), i, np.uint8)) for i in range(12)]

        def send(body: bytes) -> httpx.Response:
            return httpx.post(f"{api.url}/encode", content=body, headers={"content-type": "image/png"}, timeout=60)

        def lag() -> int:
            return next(int(g["lag"]) for g in c.xinfo_groups(work) if g["name"] in (GROUP, GROUP.encode()))

        with ThreadPoolExecutor(len(bodies)) as pool:
            sent = time.monotonic()
            futures = [pool.submit(send, b) for b in bodies]
            while lag() < len(bodies) and time.monotonic() < sent + 30:
                time.sleep(0.05)
            time.sleep(max(0.0, sent + 3.0 - time.monotonic()))  # the worker starts 3 s after the requests
            assert lag() == len(bodies) and not any(f.done() for f in futures)  # queued, waiting for a worker
            worker.start()
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    finally:
        worker.stop()
        api.stop()
