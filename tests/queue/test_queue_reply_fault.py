"""Redis stalls under load (issue 12): the reply connection is cut by SIGSTOPping the test's own redis-server for
5 s while 32 clients keep encoding through a real API (``evotok serve --queue redis``) and worker.

Before: every waiting request was failed when the reply reader's socket timed out, and admissions timed out
after 3 s, yet their entries survived and still ran: work done and thrown away (276 items run for 203
answers). Now: every admitted request whose deadline allows it gets its 200, and items run == answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from evotok.export.fake import write_fake_model_card
from tests.queue.queue_harness import (
    ApiProc,
    RedisServer,
    WorkerProc,
    encode_load,
    metric_sum,
    png_bytes,
    queue_env,
    wait_live_workers,
)

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

PAUSE_S = 5.0
DEADLINE_S = 30.0


def test_redis_stopped_for_5s_under_load_loses_no_answer(redis_server: RedisServer, prefix: str,
                                                         tmp_path: Path) -> None:
    card = write_fake_model_card(tmp_path / "model")
    # default heartbeat (2 s x 5 = 10 s liveness window) and no reclaim during the test: this is about replies
    env = queue_env(redis_server.url, prefix, EVOTOK_WEIGHTS=str(card), EVOTOK_REQUEST_TIMEOUT_S=str(DEADLINE_S),
                    EVOTOK_WORKER_HEARTBEAT_S="2.0", EVOTOK_WORKER_CLAIM_IDLE_MS="60000")
    worker = WorkerProc(env, "w0", tmp_path, fake_delay_ms=20.0)
    api = ApiProc(env, tmp_path, "api0")
    worker.start()
    api.start()
    try:
        worker.wait_ready()
        api.wait_up()
        wait_live_workers(redis_server, prefix, 1)
        from evotok.export.fake import FakeRuntime

        rng = np.random.default_rng(5)
        arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
        expected = [FakeRuntime().encode(a[None])[0] for a in arrays]
        images = [png_bytes(a) for a in arrays]
        items_before = metric_sum(worker.metrics(), "evotok_batch_items_total")
        assert redis_server.pid is not None
        pid = redis_server.pid
        stopped = {"at": 0.0}

        def stall() -> None:
            time.sleep(3.0)
            stopped["at"] = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            time.sleep(PAUSE_S)
            os.kill(pid, signal.SIGCONT)

        staller = threading.Thread(target=stall)
        staller.start()
        try:
            outcomes = asyncio.run(encode_load([api.url], images, expected, duration_s=15.0, concurrency=32,
                                               client_timeout_s=DEADLINE_S + 15))
        finally:
            staller.join()
            os.kill(pid, signal.SIGCONT)
        time.sleep(2.0)  # the worker's last replies and metrics
        items_run = metric_sum(worker.metrics(), "evotok_batch_items_total") - items_before
    finally:
        api.stop()
        worker.stop()
    statuses = Counter(o.status for o in outcomes)
    answers = statuses[200]
    during = [o for o in outcomes if o.started <= stopped["at"] + PAUSE_S and o.finished >= stopped["at"]]
    print(f"reply fault: {len(outcomes)} requests, {len(during)} in flight across the 5 s stop; statuses "
          f"{dict(statuses)}; items run {items_run:.0f} vs answers {answers}")
    assert len(during) >= 32, "the stop did not overlap the load"
    bad = [(o.status, o.code, o.message) for o in outcomes if o.status != 200]
    assert not bad, bad[:5]
    assert all(o.correct for o in outcomes)
    assert items_run == answers, f"items run {items_run:.0f} vs answers {answers}: work done and thrown away"
