"""End to end over real processes: 2 API replicas (uvicorn, EVOTOK_QUEUE=redis) + 2 `evotok worker`s.

- codes equal those of the in-process path (a third uvicorn with the embedded batcher);
- SIGKILL a worker three times (restarting it) under >= 1,000 requests: zero lost, zero wrong;
- kill and restart redis-server under load: fast 503s during the outage, recovery within 5 s, no exits.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from evotok.export.fake import write_fake_model_card
from evotok.service.redis_queue import COMMAND_TIMEOUT_S
from evotok.service.settings import Settings
from tests.queue.queue_harness import (
    ApiProc,
    Outcome,
    RedisServer,
    WorkerProc,
    encode_load,
    png_bytes,
    queue_env,
    wait_live_workers,
)

pytestmark = [pytest.mark.redis, pytest.mark.e2e]
PREFIX = "e2e"
SERVER_DEADLINE_S = float(Settings.model_fields["request_timeout_s"].default)  # the cluster keeps the default


@dataclass
class Cluster:
    redis: RedisServer
    workers: list[WorkerProc]
    apis: list[ApiProc]
    reference: ApiProc
    images: list[bytes]
    expected: list[np.ndarray]

    @property
    def urls(self) -> list[str]:
        return [a.url for a in self.apis]

    def all_alive(self) -> bool:
        return all(p.alive() for p in [*self.workers, *self.apis])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("queue-e2e")
    server = RedisServer(root / "redis")
    server.start()
    card = write_fake_model_card(root / "model")
    env = queue_env(server.url, PREFIX, EVOTOK_WEIGHTS=str(card), EVOTOK_BACKEND="onnxruntime")
    workers = [WorkerProc(env, f"w{i}", root, fake_delay_ms=10) for i in range(2)]
    apis = [ApiProc(env, root, f"api{i}") for i in range(2)]
    ref_env = {**queue_env(server.url, PREFIX), "EVOTOK_QUEUE": "inprocess", "EVOTOK_WARMUP_BATCH_SIZES": "[1]"}
    reference = ApiProc(ref_env, root, "inprocess", inprocess_fake=True)
    procs = [*workers, *apis, reference]
    try:
        for p in procs:
            p.start()
        for w in workers:
            w.wait_ready()
        for a in apis:
            a.wait_up()
        reference.wait_up(path="/readyz")
        wait_live_workers(server, PREFIX, 2)
        rng = np.random.default_rng(1)
        arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(48)]
        images = [png_bytes(a) for a in arrays]
        expected = []
        for img in images:  # the in-process path is the reference
            r = httpx.post(reference.url + "/encode", content=img, headers={"content-type": "image/png"}, timeout=30)
            assert r.status_code == 200, r.text
            expected.append(np.asarray(r.json()["codes"], dtype=np.uint16))
        yield Cluster(server, workers, apis, reference, images, expected)
    finally:
        for p in procs:
            p.stop()
        server.stop()


def error_messages(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.message for o in outcomes if o.status != 200)


def summarize(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(f"{o.status}:{o.code}" if o.status != 200 else ("200:ok" if o.correct else "200:WRONG")
                   for o in outcomes)


def test_two_apis_two_workers_equal_inprocess(cluster: Cluster) -> None:
    outcomes = asyncio.run(encode_load(cluster.urls, cluster.images, cluster.expected, n=96, concurrency=16))
    assert summarize(outcomes) == Counter({"200:ok": 96})
    # both replicas and both workers took part
    for w in cluster.workers:
        assert "evotok_batch_items_total" in w.metrics()
    for api in cluster.apis:
        page = httpx.get(api.url + "/metrics", timeout=5).text
        assert 'endpoint="encode"' in page


@pytest.mark.slow
def test_sigkill_worker_three_times_loses_nothing(cluster: Cluster) -> None:
    kills: list[float] = []

    async def chaos() -> None:
        # kill w0, w1, w0 (mid-batch, at a random moment); the peer keeps serving meanwhile
        rnd = random.Random(7)
        for k in range(3):
            await asyncio.sleep(1.0 + rnd.random())
            victim = cluster.workers[k % 2]
            await asyncio.to_thread(victim.kill, signal.SIGKILL)
            kills.append(time.monotonic())
            victim.start()  # same consumer name: re-reads its own pending entries first
            await asyncio.to_thread(victim.wait_ready, 120.0)

    async def main() -> list[Outcome]:
        # the client waits well past the server's request deadline (EVOTOK_REQUEST_TIMEOUT_S, default 30 s),
        # so a silent request is a lost one and never the client giving up before the server's explicit 504
        # at least 1200 requests, and the load keeps going until the third killed worker is back, so every
        # kill lands in a running load however fast the machine is
        chaos_done = asyncio.Event()
        load = asyncio.create_task(encode_load(cluster.urls, cluster.images, cluster.expected, at_least=1200,
                                               until=chaos_done.is_set, concurrency=32,
                                               client_timeout_s=SERVER_DEADLINE_S + 30))
        await chaos()
        chaos_done.set()
        return await load

    outcomes = asyncio.run(main())
    summary = summarize(outcomes)
    print("sigkill x3 under load:", dict(summary), dict(error_messages(outcomes)))
    assert len(kills) == 3 and kills[-1] < max(o.finished for o in outcomes)  # all kills hit a running load
    assert len(outcomes) >= 1200
    assert summary["200:WRONG"] == 0, summary  # zero wrong
    # zero lost: every request got an HTTP answer; on failure show what the client saw instead (exception)
    assert all(o.status != 0 for o in outcomes), (summary, error_messages(outcomes))
    errors = [o for o in outcomes if o.status != 200]
    assert all(o.code in {"not_ready", "queue_full", "deadline_exceeded", "backend_error"} for o in errors), summary
    assert summary["200:ok"] >= 0.9 * len(outcomes), summary
    for w in cluster.workers:
        w.wait_ready()
    redis = cluster.redis.client()
    assert sum(redis.xlen(f"{PREFIX}:req:{op}") for op in ("encode", "decode", "embed_image", "embed_codes")) == 0


@pytest.mark.slow
def test_redis_restart_under_load(cluster: Cluster) -> None:
    marks: dict[str, float] = {}

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(cluster.redis.stop)  # SIGKILL; returns once the pid is gone and the port closed
        marks["down"] = time.monotonic()
        await asyncio.sleep(3.0)
        marks["restarting"] = time.monotonic()
        await asyncio.to_thread(cluster.redis.start)  # returns once it answers PING
        marks["up"] = time.monotonic()

    async def main() -> list[Outcome]:
        load = asyncio.create_task(encode_load(
            cluster.urls, cluster.images, cluster.expected, concurrency=16,
            until=lambda: "up" in marks and time.monotonic() > marks["up"] + 7.0))
        await outage()
        return await load

    outcomes = asyncio.run(main())
    summary = summarize(outcomes)
    print("redis restart under load:", dict(summary), dict(error_messages(outcomes)))
    down, up = marks["down"], marks["up"]
    assert summary["200:WRONG"] == 0 and all(o.status != 0 for o in outcomes), (summary, error_messages(outcomes))
    during = [o for o in outcomes if down < o.started and o.finished < marks["restarting"]]
    assert during and all(o.status == 503 for o in during), Counter(o.status for o in during)
    # Fast 503s, no hanging on a dead Redis: a refused connect costs milliseconds, while a hang would cost
    # client-side retries with backoff (redis-py's default: seconds), the API's Redis socket timeout
    # (COMMAND_TIMEOUT_S) or the request deadline (30 s). These are wall-clock latencies of a closed-loop
    # client (16 in flight) on a shared 2-core box: there a 503's latency is mostly CPU queueing (in flight /
    # throughput; p95 1.6 s and max 1.9 s were seen at load 9), so the median is held to 1 s and the slowest
    # one to below the socket timeout.
    lat = sorted(o.latency for o in during)
    assert lat[len(lat) // 2] < 1.0 and lat[-1] < COMMAND_TIMEOUT_S, (lat[len(lat) // 2], lat[-5:])
    first_ok = min(o.finished for o in outcomes if o.status == 200 and o.started > up)
    print(f"recovered {first_ok - up:.2f} s after redis returned")
    assert first_ok - up < 5.0
    late = [o for o in outcomes if o.started > up + 5.0]
    assert late and all(o.status == 200 for o in late), Counter(o.status for o in late)
    assert cluster.all_alive()  # nothing exited
