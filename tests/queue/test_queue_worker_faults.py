"""Worker faults the core must turn into something Kubernetes and the queue can act on.

- A SIGKILLed worker's consumer name is removed from the group once it is idle and owns no pending entries
  (before: it stayed in the group forever).
- A worker whose runtime call hangs longer than ``EVOTOK_RUNTIME_HANG_S`` answers 503 on ``/healthz`` (liveness:
  Kubernetes restarts it); it is healthy again once the call returns (before: 200 for up to a minute, whatever
  the bound).
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from evotok.export.fake import FakeRuntime
from evotok.service.redis_protocol import GROUP, Keys
from tests.queue.queue_harness import RedisServer, WorkerProc, queue_env, wait_live_workers

pytestmark = pytest.mark.redis
OPS = ("encode", "decode", "embed_image", "embed_codes")


def _consumers(server: RedisServer, prefix: str) -> dict[str, set[str]]:
    c = server.client()
    try:
        out: dict[str, set[str]] = {}
        for op in OPS:
            rows = c.xinfo_consumers(Keys(prefix).work(op), GROUP)
            out[op] = {(r["name"].decode() if isinstance(r["name"], bytes) else r["name"]) for r in rows}
        return out
    finally:
        c.close()


def test_sigkilled_worker_leaves_the_group(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    env = queue_env(redis_server.url, prefix, EVOTOK_WORKER_LIVENESS_HEARTBEATS="2")
    dead = WorkerProc(env, "doomed", tmp_path)
    live = WorkerProc(env, "survivor", tmp_path)
    dead.start()
    live.start()
    try:
        dead.wait_ready()
        live.wait_ready()
        wait_live_workers(redis_server, prefix, 2)
        assert all("doomed" in names for names in _consumers(redis_server, prefix).values())
        dead.kill(signal.SIGKILL)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            names = _consumers(redis_server, prefix)
            if not any("doomed" in n for n in names.values()):
                break
            time.sleep(0.25)
        names = _consumers(redis_server, prefix)
        assert not any("doomed" in n for n in names.values()), f"dead consumer still in the group: {names}"
        assert all("survivor" in n for n in names.values()), "a live consumer was removed"
    finally:
        live.stop()
        if dead.alive():
            dead.stop()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_hung_runtime_call_makes_worker_unhealthy(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    gate = tmp_path / "hang"
    env = queue_env(redis_server.url, prefix, EVOTOK_RUNTIME_HANG_S="1.0", EVOTOK_TEST_FAKE_HANG_FILE=str(gate))
    worker = WorkerProc(env, "w1", tmp_path)
    worker.start()
    health = f"http://127.0.0.1:{worker.metrics_port}/healthz"
    try:
        worker.wait_ready()
        assert _get(health) == 200
        gate.touch()  # from now on runtime calls block while this file exists
        keys, c = Keys(prefix), redis_server.client()
        img = np.zeros((FakeRuntime().info.image_size,) * 2 + (3,), np.uint8)
        sec, usec = c.time()
        now_ms = sec * 1000 + usec // 1000
        c.xadd(keys.work("encode"), {"rid": "r1", "reply": keys.reply("t"), "deadline_ms": now_ms + 60_000,
                                     "enq_ms": now_ms, "dtype": "|u1", "shape": ",".join(map(str, img.shape)),
                                     "data": img.tobytes()})
        end = time.monotonic() + 15
        status = 200
        while time.monotonic() < end and status == 200:
            time.sleep(0.1)
            status = _get(health)
        assert status == 503, "a runtime call hung for 15 s and /healthz still says 200"
        gate.unlink()  # the call returns: healthy again, and the entry is answered
        end = time.monotonic() + 15
        while time.monotonic() < end and _get(health) != 200:
            time.sleep(0.1)
        assert _get(health) == 200
        end = time.monotonic() + 10
        while time.monotonic() < end and c.xlen(keys.reply("t")) == 0:
            time.sleep(0.05)
        assert c.xlen(keys.reply("t")) == 1
    finally:
        worker.stop()
