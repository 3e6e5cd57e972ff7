"""The same arrival trace gives the same batches in both adapters of the core (and in its pure replay).

The trace (``tests/core/trace.py``) has coarse timing (0.4 s delay, arrivals 0.1 s apart) so that it holds on a
loaded machine. Each payload carries its id; a recording runtime notes which ids ran together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
import redis

from evotok.export.fake import FakeRuntime
from evotok.service.inprocess import InProcessBatcher
from evotok.service.redis_protocol import GROUP, Keys, pack_array
from evotok.service.step import Scheduler
from evotok.service.worker.consumer import Consumer, ConsumerOptions
from tests.core.trace import ADAPTER_POLICY, ADAPTER_TRACE, Ran, payload, replay
from tests.queue.queue_harness import RedisServer

pytestmark = pytest.mark.redis


class RecordingRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[Ran] = []

    def _note(self, op: Any, x: np.ndarray) -> None:
        self.ran.append(Ran(op, tuple(int(v) for v in x.reshape(len(x), -1)[:, 0]), "?"))

    def encode(self, images: Any) -> Any:
        self._note("encode", images)
        return super().encode(images)

    def decode(self, codes: Any) -> Any:
        self._note("decode", codes)
        return super().decode(codes)

    def embed_codes(self, codes: Any) -> Any:
        self._note("embed_codes", codes)
        return super().embed_codes(codes)


def _expected() -> list[tuple[str, tuple[int, ...]]]:
    return [(r.op, r.ids) for r in replay(ADAPTER_TRACE, ADAPTER_POLICY)[0]]


async def test_inprocess_adapter_runs_the_trace_like_the_core() -> None:
    rt = RecordingRuntime()
    b = InProcessBatcher(ADAPTER_POLICY)
    await b.start()
    b.attach(rt)
    t0 = time.monotonic()

    async def arrive(a: Any) -> None:
        await asyncio.sleep(max(0.0, t0 + a.t - time.monotonic()))
        await b.submit(a.op, payload(a), time.monotonic() + a.deadline_s)

    await asyncio.gather(*(arrive(a) for a in ADAPTER_TRACE))
    await b.drain(1.0)
    assert [(r.op, r.ids) for r in rt.ran] == _expected()


def test_redis_adapter_runs_the_trace_like_the_core(redis_server: RedisServer, prefix: str) -> None:
    rt = RecordingRuntime()
    keys = Keys(prefix)
    client = redis.Redis(port=redis_server.port)
    for op in ("encode", "decode", "embed_image", "embed_codes"):
        client.xgroup_create(keys.work(op), GROUP, id="0", mkstream=True)
    consumer = Consumer(client, keys, rt, ConsumerOptions("c1", 60_000, 3), Scheduler(ADAPTER_POLICY, "worker"))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        for a in sorted(ADAPTER_TRACE, key=lambda a: a.t):
            time.sleep(max(0.0, t0 + a.t - time.monotonic()))
            sec, usec = client.time()
            now_ms = sec * 1000 + usec // 1000
            wire = pack_array(payload(a))
            client.xadd(keys.work(a.op), {"rid": str(a.id), "reply": keys.reply("t"), "deadline_ms": now_ms + 60_000,
                                          "enq_ms": now_ms, "dtype": wire.dtype, "shape": wire.shape, "data": wire.data})
        end = time.monotonic() + 15
        while client.xlen(keys.reply("t")) < len(ADAPTER_TRACE) and time.monotonic() < end:
            time.sleep(0.05)
        assert client.xlen(keys.reply("t")) == len(ADAPTER_TRACE)
    finally:
        consumer.stop()
        thread.join(10)
        client.close()
    assert [(r.op, r.ids) for r in rt.ran] == _expected()


@pytest.mark.parametrize(("caps", "held"), [({}, 10), ({"encode": 1, "decode": 1, "embed_image": 1, "embed_codes": 1}, 2)])
def test_worker_reads_ahead_by_its_cap_not_the_upper_bound(redis_server: RedisServer, prefix: str,
                                                          caps: dict[str, int], held: int) -> None:
    """A worker claims at most two batches of its effective cap from the stream. With the auto cap at 1 (a CPU
    where batching does not pay) it must not take 2 x ``max_batch_size`` entries that it would then run one by
    one while a peer worker idles (p95 1.7x batching off with two workers, docs/benchmarks.md)."""
    from evotok.service.core import BatchPolicy

    keys = Keys(prefix)
    client = redis.Redis(port=redis_server.port)
    for op in ("encode", "decode", "embed_image", "embed_codes"):
        client.xgroup_create(keys.work(op), GROUP, id="0", mkstream=True)
    sec, usec = client.time()
    now_ms = sec * 1000 + usec // 1000
    for i in range(10):
        wire = pack_array(np.full((8, 8, 3), i, np.uint8))
        client.xadd(keys.work("encode"), {"rid": str(i), "reply": keys.reply("t"), "deadline_ms": now_ms + 60_000,
                                          "enq_ms": now_ms, "dtype": wire.dtype, "shape": wire.shape, "data": wire.data})
    policy = BatchPolicy(max_batch_size=16, max_queue_delay_s=0.0).with_caps(caps)  # type: ignore[arg-type]
    consumer = Consumer(client, keys, RecordingRuntime(), ConsumerOptions("c1", 60_000, 3),
                        Scheduler(policy, "worker"))
    try:
        consumer._read(0.0)
        assert len(consumer.entries) == held
        assert client.xpending(keys.work("encode"), GROUP)["pending"] == held  # the rest is left to peers
    finally:
        client.close()
