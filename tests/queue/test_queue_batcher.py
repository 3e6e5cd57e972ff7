"""RedisBatcher + real `evotok worker` processes against a private redis-server.

Covers: results equal the direct runtime call for every op, batching, 503 without a live worker,
429 + Retry-After at the entry and byte caps, deadline skip with cancel mark, dead-lettering of an entry
delivered too often, duplicate deliveries producing no second reply, SIGTERM drain, worker metrics.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evotok.export.fake import FakeRuntime
from evotok.service.core import run_op
from evotok.service.errors import BackendError, DeadlineExceeded, Overloaded
from evotok.service.redis_protocol import DELIVER_LUA, GROUP, Keys
from evotok.service.redis_queue import RedisBatcher
from evotok.service.settings import Settings
from tests.queue.queue_harness import RedisServer, WorkerProc, metric_sum, queue_env, wait_live_workers

pytestmark = pytest.mark.redis

RT = FakeRuntime()
RNG = np.random.default_rng(0)


def image() -> np.ndarray:
    return RNG.integers(0, 256, (RT.info.image_size, RT.info.image_size, 3), dtype=np.uint8)


def codes(depth: int = 4) -> np.ndarray:
    g = RT.info.grid
    return RNG.integers(0, RT.info.codebook_size, (g, g, depth), dtype=np.uint16)


def settings_for(server: RedisServer, prefix: str, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(queue="redis", redis_url=server.url, redis_prefix=prefix, worker_heartbeat_s=0.5,
                                worker_claim_idle_ms=1000, max_batch_size=8, max_queue_delay_ms=5.0)
    base.update(kw)
    return Settings(**base)


def fake_heartbeat(server: RedisServer, prefix: str, name: str = "ghost") -> None:
    """Register a live 'worker' that consumes nothing (admission passes, entries stay queued)."""
    c = server.client()
    sec, usec = c.time()
    c.zadd(f"{prefix}:workers", {name: sec * 1000 + usec // 1000 + 60_000})
    c.close()


def deadline(s: float = 10.0) -> float:
    return time.monotonic() + s


async def test_no_live_worker_admits_and_a_worker_started_later_answers(redis_server: RedisServer, prefix: str,
                                                                        tmp_path: Path) -> None:
    """Scale from zero: with no live worker the API admits into the stream (the lag an autoscaler such as KEDA
    watches) and stays ready; a worker started 3 s later answers every request."""
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    await b.start()
    worker = WorkerProc(queue_env(redis_server.url, prefix), "w1", tmp_path, fake_delay_ms=5)
    try:
        xs = [image() for _ in range(6)]
        tasks = [asyncio.create_task(b.submit("encode", x, deadline(40))) for x in xs]
        end = time.monotonic() + 10
        while redis_server.client().xlen(Keys(prefix).work("encode")) < 6 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert redis_server.client().xlen(Keys(prefix).work("encode")) == 6  # queued: lag for the autoscaler
        assert b.stats().ready  # the API stays ready (Redis reachable) so the traffic that wakes workers arrives
        await asyncio.sleep(2.5)
        assert not any(t.done() for t in tasks)
        worker.start()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 35)
        for x, got in zip(xs, results, strict=True):
            np.testing.assert_array_equal(got, RT.encode(x[None])[0])
    finally:
        worker.stop()
        await b.drain(1)


async def test_results_equal_direct_runtime_for_every_op(redis_server: RedisServer, prefix: str,
                                                         tmp_path: Path) -> None:
    worker = WorkerProc(queue_env(redis_server.url, prefix), "w1", tmp_path, fake_delay_ms=20)
    worker.start()
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    await b.start()
    try:
        worker.wait_ready()
        wait_live_workers(redis_server, prefix, 1)
        cases: list[tuple[Any, np.ndarray]] = []
        for _ in range(12):
            cases += [("encode", image()), ("decode", codes(2)), ("decode", codes(4)),
                      ("embed_image", image()), ("embed_codes", codes(3))]
        results = await asyncio.gather(*(b.submit(op, x, deadline()) for op, x in cases))
        for (op, x), got in zip(cases, results, strict=True):
            want = run_op(RT, op, x[None])[0]
            assert got.dtype == want.dtype and got.shape == want.shape, op
            np.testing.assert_array_equal(got, want)
        metrics = worker.metrics()
        batches = metric_sum(metrics, "evotok_batch_size_count", op="encode")
        assert metric_sum(metrics, "evotok_batch_items_total", op="encode") == 12
        assert 1 <= batches < 12, "encode items were not batched"
        assert metric_sum(metrics, "evotok_worker_ready") == 1
        assert b.stats().ready and b.stats().in_flight == 0
        c = redis_server.client()
        for op in ("encode", "decode", "embed_image", "embed_codes"):
            assert c.xlen(Keys(prefix).work(op)) == 0  # acked entries are deleted
            assert int(c.get(Keys(prefix).bytes(op)) or 0) == 0
    finally:
        await b.drain(1)
        worker.stop()


async def test_entry_and_byte_caps_give_429_with_retry_after(redis_server: RedisServer, prefix: str) -> None:
    fake_heartbeat(redis_server, prefix)
    b = RedisBatcher(settings_for(redis_server, prefix, redis_max_entries=3), RT.info)
    await b.start()
    try:
        waiting = [asyncio.create_task(b.submit("encode", image(), deadline(5))) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert redis_server.client().xlen(Keys(prefix).work("encode")) == 3
        with pytest.raises(Overloaded) as exc:
            await b.submit("encode", image(), deadline(5))
        assert exc.value.retry_after_s is not None and exc.value.retry_after_s >= 1
        # other endpoints have their own caps
        other = asyncio.create_task(b.submit("decode", codes(), deadline(5)))
        await asyncio.sleep(0.1)
        assert redis_server.client().xlen(Keys(prefix).work("decode")) == 1
        for t in [*waiting, other]:
            t.cancel()
        await asyncio.gather(*waiting, other, return_exceptions=True)
    finally:
        await b.drain(1)
    nbytes = image().nbytes
    b2 = RedisBatcher(settings_for(redis_server, prefix + "b", redis_max_bytes=2 * nbytes), RT.info)
    fake_heartbeat(redis_server, prefix + "b")
    await b2.start()
    try:
        waiting = [asyncio.create_task(b2.submit("encode", image(), deadline(5))) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert int(redis_server.client().get(Keys(prefix + "b").bytes("encode"))) == 2 * nbytes
        with pytest.raises(Overloaded):
            await b2.submit("encode", image(), deadline(5))
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    finally:
        await b2.drain(1)


async def test_expired_and_cancelled_entries_are_skipped(redis_server: RedisServer, prefix: str,
                                                        tmp_path: Path) -> None:
    fake_heartbeat(redis_server, prefix)
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    await b.start()
    keys = Keys(prefix)
    c = redis_server.client()
    try:
        with pytest.raises(DeadlineExceeded):
            await b.submit("encode", image(), deadline(0.3))  # nobody consumes: times out, sets a cancel mark
        gone = asyncio.create_task(b.submit("decode", codes(), deadline(30)))
        await asyncio.sleep(0.2)
        gone.cancel()  # the client went away
        await asyncio.gather(gone, return_exceptions=True)
        await asyncio.sleep(0.2)
        assert c.xlen(keys.work("encode")) == 1 and c.xlen(keys.work("decode")) == 1
        assert len(c.keys(f"{prefix}:cancel:*")) == 2
        worker = WorkerProc(queue_env(redis_server.url, prefix), "w1", tmp_path)
        worker.start()
        try:
            worker.wait_ready()
            end = time.monotonic() + 10
            while (c.xlen(keys.work("encode")) or c.xlen(keys.work("decode"))) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert c.xlen(keys.work("encode")) == 0 and c.xlen(keys.work("decode")) == 0
            metrics = worker.metrics()
            assert metric_sum(metrics, "evotok_items_skipped_total", op="decode", reason="cancelled") == 1
            assert metric_sum(metrics, "evotok_items_skipped_total", op="encode") == 1
            assert metric_sum(metrics, "evotok_batches_total") == 0  # nothing reached the runtime
            assert int(c.get(keys.bytes("encode")) or 0) == 0
        finally:
            worker.stop()
    finally:
        await b.drain(1)


async def test_poison_entry_goes_to_dead_letters_with_error_reply(redis_server: RedisServer, prefix: str,
                                                                 tmp_path: Path) -> None:
    keys = Keys(prefix)
    c = redis_server.client()
    for op in ("encode", "decode", "embed_image", "embed_codes"):
        c.xgroup_create(keys.work(op), GROUP, id="0", mkstream=True)
    fake_heartbeat(redis_server, prefix)
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    await b.start()
    try:
        task = asyncio.create_task(b.submit("encode", image(), deadline(30)))
        end = time.monotonic() + 10
        while c.xlen(keys.work("encode")) < 1 and time.monotonic() < end:
            await asyncio.sleep(0.02)
        # a consumer that "crashed" on this entry several times: delivery count 5 > max 3
        resp = c.xreadgroup(GROUP, "ghost", {keys.work("encode"): ">"}, count=1)
        entry_id = resp[0][1][0][0]
        c.xclaim(keys.work("encode"), GROUP, "ghost", 0, [entry_id], retrycount=5)
        worker = WorkerProc(queue_env(redis_server.url, prefix), "w1", tmp_path)
        worker.start()
        try:
            with pytest.raises(BackendError):
                await asyncio.wait_for(task, 15)
            dlq = c.xrange(keys.dlq)
            assert len(dlq) == 1 and dlq[0][1][b"reason"] == b"poison"
            assert c.xlen(keys.work("encode")) == 0
            metrics = worker.metrics()
            assert metric_sum(metrics, "evotok_dead_letters_total", op="encode", reason="poison") == 1
            assert metric_sum(metrics, "evotok_redeliveries_total", op="encode") == 1
        finally:
            worker.stop()
    finally:
        await b.drain(1)


async def test_duplicate_delivery_gives_one_reply(redis_server: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)
    c = redis_server.client()
    stream = keys.work("encode")
    c.xgroup_create(stream, GROUP, id="0", mkstream=True)
    eid = c.xadd(stream, {"rid": "r1", "data": b"x" * 10})
    c.incrby(keys.bytes("encode"), 10)
    c.xreadgroup(GROUP, "a", {stream: ">"})
    deliver = c.register_script(DELIVER_LUA)
    reply = keys.reply("api1")
    args = [eid, 10, reply, "r1", "ok", "", "<u2", "1", b"\x01\x00"]
    assert deliver(keys=[stream, keys.bytes("encode")], args=[GROUP, 1000, 60000, *args]) == 1
    assert deliver(keys=[stream, keys.bytes("encode")], args=[GROUP, 1000, 60000, *args]) == 0  # the reclaimer
    assert c.xlen(reply) == 1 and int(c.get(keys.bytes("encode"))) == 0 and c.xlen(stream) == 0
    assert c.xpending(stream, GROUP)["pending"] == 0
    # and the API side drops a reply for an id it does not wait for
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    b._resolve({b"rid": b"unknown", b"status": b"ok", b"dtype": b"<u2", b"shape": b"1", b"data": b"\x01\x00"})
    assert b.dropped_replies == 1


async def test_sigterm_finishes_the_batch_in_hand(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    env = queue_env(redis_server.url, prefix, EVOTOK_MAX_QUEUE_DELAY_MS="150")  # all 8 in one batch
    worker = WorkerProc(env, "w1", tmp_path, fake_delay_ms=400)
    worker.start()
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    await b.start()
    try:
        worker.wait_ready()
        wait_live_workers(redis_server, prefix, 1)
        xs = [image() for _ in range(8)]
        tasks = [asyncio.create_task(b.submit("encode", x, deadline(20))) for x in xs]
        c = redis_server.client()
        end = time.monotonic() + 10
        while c.xpending(Keys(prefix).work("encode"), GROUP)["pending"] < 8 and time.monotonic() < end:
            await asyncio.sleep(0.01)  # wait until the batch of 8 is in the worker's hands
        assert worker.kill(signal.SIGTERM) == 0
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for x, got in zip(xs, results, strict=True):
            np.testing.assert_array_equal(got, RT.encode(x[None])[0])
        assert c.zscore(f"{prefix}:workers", "w1") is None  # deregistered: admission sees no worker
        with pytest.raises(DeadlineExceeded):  # admitted (scale from zero); nobody ran it before its deadline
            await b.submit("encode", xs[0], deadline(1))
    finally:
        await b.drain(1)


async def test_info_batch_caps_are_the_live_workers_caps(redis_server: RedisServer, prefix: str,
                                                         tmp_path: Path) -> None:
    """/info in Redis mode: the smallest cap among live workers, and each live worker's own; a dead worker's
    cap goes away with its heartbeat."""
    w4 = WorkerProc(queue_env(redis_server.url, prefix, EVOTOK_BATCH_CAP="4"), "w4", tmp_path)
    w2 = WorkerProc(queue_env(redis_server.url, prefix, EVOTOK_BATCH_CAP="2"), "w2", tmp_path)
    b = RedisBatcher(settings_for(redis_server, prefix), RT.info)
    try:
        for w in (w4, w2):
            w.start()
        for w in (w4, w2):
            w.wait_ready()
        await b.start()

        async def caps_when(check: Any, timeout_s: float = 15.0) -> Any:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                caps = b.batch_caps()
                if caps is not None and check(caps):
                    return caps
                await asyncio.sleep(0.1)
            raise AssertionError(f"batch caps never matched: {b.batch_caps()}")

        caps = await caps_when(lambda c: len(c.get("encode", {}).get("workers", {})) == 2)
        for op in ("encode", "decode", "embed_image", "embed_codes"):
            assert caps[op] == {"cap": 2, "workers": {"w2": 2, "w4": 4}}, caps
        w2.kill()  # SIGKILL: no goodbye; its info hash expires with the liveness window
        caps = await caps_when(lambda c: c["encode"]["workers"] == {"w4": 4})
        assert caps["decode"] == {"cap": 4, "workers": {"w4": 4}}
    finally:
        await b.drain(1)
        for w in (w4, w2):
            w.stop()
