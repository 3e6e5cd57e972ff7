"""Redis stalls under load: the reply connection is cut by SIGSTOPping the test's own redis-server for
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

import pytest

from tests.queue.queue_harness import (
    RedisServer,
    encode_load,
    fake_photos,
    fake_worker_and_api,
    metric_sum,
)

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

PAUSE_S = 5.0
DEADLINE_S = 30.0


def test_redis_stopped_for_5s_under_load_loses_no_answer(redis_server: RedisServer, prefix: str,
                                                         tmp_path: Path) -> None:
    # default heartbeat (2 s x 5 = 10 s liveness window) and no reclaim during the test: this is about replies
    with fake_worker_and_api(redis_server, prefix, tmp_path, 20.0, EVOTOK_REQUEST_TIMEOUT_S=str(DEADLINE_S),
                             EVOTOK_WORKER_HEARTBEAT_S="2.0", EVOTOK_WORKER_CLAIM_IDLE_MS="60000") as (api, worker):
        images, expected = fake_photos(5, 8)
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
