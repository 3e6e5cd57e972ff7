"""InProcessBatcher: batches form under concurrency, bounds, deadlines, cancellation, grouping, drain."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from evotok.service.batcher import BatchPolicy
from evotok.service.errors import DeadlineExceeded, NotReady, Overloaded
from evotok.service.inprocess import InProcessBatcher
from tests.service.fakes import ServiceFakeRuntime

IMG = np.zeros((64, 64, 3), np.uint8)


async def _batcher(max_batch: int = 8, delay_s: float = 0.005, queue: int = 64, rt_delay: float = 0.0):
    rt = ServiceFakeRuntime(delay_s=rt_delay)
    b = InProcessBatcher(BatchPolicy(max_batch, delay_s), max_queue_size=queue)
    await b.start()
    b.attach(rt)
    return b, rt


def _deadline(s: float = 5.0) -> float:
    return time.monotonic() + s


async def test_concurrent_requests_share_batches() -> None:
    b, rt = await _batcher(max_batch=8, delay_s=0.02, rt_delay=0.01)
    images = [np.full((64, 64, 3), i, np.uint8) for i in range(32)]
    results = await asyncio.gather(*(b.submit("encode", im, _deadline()) for im in images))
    assert max(rt.batch_sizes) > 1 and max(rt.batch_sizes) <= 8
    assert sum(rt.batch_sizes) == 32
    for im, codes in zip(images, results, strict=True):  # every item got its own answer back
        np.testing.assert_array_equal(codes, rt.encode(im[None])[0])
    await b.drain(1.0)


async def test_single_item_waits_at_most_the_queue_delay() -> None:
    b, _rt = await _batcher(max_batch=8, delay_s=0.05)
    t0 = time.monotonic()
    await b.submit("encode", IMG, _deadline())
    waited = time.monotonic() - t0
    assert 0.045 <= waited < 0.5
    assert b.batches[-1].close_reason == "delay" and b.batches[-1].size == 1
    await b.drain(1.0)


async def test_full_batch_closes_without_waiting() -> None:
    b, _rt = await _batcher(max_batch=4, delay_s=5.0)
    t0 = time.monotonic()
    await asyncio.gather(*(b.submit("encode", IMG, _deadline()) for _ in range(4)))
    assert time.monotonic() - t0 < 1.0
    assert b.batches[-1].close_reason == "full" and b.batches[-1].size == 4
    await b.drain(1.0)


async def test_groups_by_op_and_shape() -> None:
    b, _rt = await _batcher(max_batch=16, delay_s=0.02)
    short = np.zeros((4, 4, 1), np.uint16)
    long = np.zeros((4, 4, 2), np.uint16)
    jobs = [b.submit("decode", short, _deadline()) for _ in range(3)]
    jobs += [b.submit("decode", long, _deadline()) for _ in range(2)]
    jobs += [b.submit("encode", IMG, _deadline()) for _ in range(2)]
    await asyncio.gather(*jobs)
    assert sorted((r.op, r.size) for r in b.batches) == [("decode", 2), ("decode", 3), ("encode", 2)]
    await b.drain(1.0)


async def test_queue_full_is_429_with_retry_after() -> None:
    b, _rt = await _batcher(max_batch=1, delay_s=0.0, queue=3, rt_delay=0.05)
    tasks = [asyncio.create_task(b.submit("encode", IMG, _deadline())) for _ in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await b.submit("encode", IMG, _deadline())
    assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
    await asyncio.gather(*tasks)
    await b.submit("encode", IMG, _deadline())  # capacity is back
    await b.drain(1.0)


async def test_deadline_exceeded_and_expired_items_never_run() -> None:
    b, rt = await _batcher(max_batch=1, delay_s=0.0, rt_delay=0.2)
    first = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await b.submit("encode", np.ones_like(IMG), time.monotonic() + 0.05)
    await first
    await asyncio.sleep(0.05)
    assert rt.batch_sizes == [1]  # the expired item was dropped at batch formation
    await b.drain(1.0)


async def test_cancelled_client_is_skipped() -> None:
    b, rt = await _batcher(max_batch=1, delay_s=0.0, rt_delay=0.1)
    busy = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.01)
    gone.cancel()
    await busy
    await b.submit("encode", IMG, _deadline())
    assert rt.batch_sizes == [1, 1]  # busy + the last one; the cancelled entry never reached the runtime
    await b.drain(1.0)


async def test_not_ready_before_attach_and_while_draining() -> None:
    b = InProcessBatcher(BatchPolicy(4, 0.0))
    await b.start()
    with pytest.raises(NotReady):
        await b.submit("encode", IMG, _deadline())
    rt = ServiceFakeRuntime(delay_s=0.1)
    b.attach(rt)
    admitted = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.01)
    drain = asyncio.create_task(b.drain(5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(NotReady):
        await b.submit("encode", IMG, _deadline())
    assert (await admitted).shape == (4, 4, 4)  # admitted work finished during the drain
    await drain
    assert rt.closed and not b.alive


async def test_drain_finishes_a_batch_that_is_still_forming() -> None:
    b, _rt = await _batcher(max_batch=8, delay_s=0.3)
    item = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.05)  # the batcher holds the item, waiting for more until the delay ends
    assert b.stats().queued == 1
    await b.drain(5.0)
    assert (await asyncio.wait_for(item, 1.0)).shape == (4, 4, 4)


class _CountingRuntime(ServiceFakeRuntime):
    """Records how many calls overlap (lanes)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        import threading

        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def concurrent_calls(self) -> bool:
        return True

    def encode(self, images):  # type: ignore[no-untyped-def]
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().encode(images)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("lanes", [1, 2, 3])
async def test_lanes_bound_how_many_batches_run_at_once(lanes: int) -> None:
    rt = _CountingRuntime(delay_s=0.05)
    b = InProcessBatcher(BatchPolicy(1, 0.0), max_queue_size=64)
    await b.start()
    b.attach(rt, lanes=lanes)
    images = [np.full((64, 64, 3), i, np.uint8) for i in range(12)]
    t0 = time.monotonic()
    results = await asyncio.gather(*(b.submit("encode", im, _deadline()) for im in images))
    elapsed = time.monotonic() - t0
    assert rt.most == lanes  # as many calls at once as lanes, never more
    assert elapsed >= 0.05 * 12 / lanes * 0.9  # 12 single-item batches of 50 ms over ``lanes`` lanes
    for im, codes in zip(images, results, strict=True):
        np.testing.assert_array_equal(codes, ServiceFakeRuntime.encode(rt, im[None])[0])
    assert b.stats().in_flight == 0 and b.runtime_lanes() == lanes
    await b.drain(1.0)


async def test_batches_form_while_the_other_lanes_are_busy() -> None:
    """With one lane busy, a full second lane forms its batch from what waits, at the cap."""
    rt = _CountingRuntime(delay_s=0.1)
    b = InProcessBatcher(BatchPolicy(4, 0.0), max_queue_size=64)
    await b.start()
    b.attach(rt, lanes=2)
    first = asyncio.create_task(b.submit("encode", IMG, _deadline()))
    await asyncio.sleep(0.02)  # lane 1 busy with a batch of 1
    rest = [asyncio.create_task(b.submit("encode", IMG, _deadline())) for _ in range(5)]
    await asyncio.gather(first, *rest)
    assert rt.batch_sizes[0] == 1 and sum(rt.batch_sizes) == 6 and max(rt.batch_sizes) <= 4
    await b.drain(1.0)


def test_lanes_resolve_from_settings_and_the_runtime(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from evotok.service.runtime_setup import planned_lanes, resolve_lanes, usable_cores
    from evotok.service.settings import Settings

    def settings(**kw):  # type: ignore[no-untyped-def]
        return Settings(weights=tmp_path, cache_dir=tmp_path, **kw)

    assert planned_lanes(settings(backend="onnxruntime", device="cpu")) == usable_cores()
    assert planned_lanes(settings(backend="onnxruntime", device="cuda")) == 1
    assert planned_lanes(settings(backend="torch", device="cpu")) == 1
    assert planned_lanes(settings(backend="tensorrt", device="cuda")) == 1
    serial, concurrent = ServiceFakeRuntime(), _CountingRuntime(0.0)
    assert resolve_lanes(settings(runtime_lanes=3), concurrent) == 3
    assert resolve_lanes(settings(runtime_lanes=0, backend="onnxruntime", device="cpu"), serial) == 1  # falls back
    with pytest.raises(ValueError, match="does not allow concurrent calls"):
        resolve_lanes(settings(runtime_lanes=2), serial)


def test_usable_cores_follow_a_container_cpu_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from evotok.service.runtime_setup import usable_cores

    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == mask  # no limit
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # limits.cpu: 1500m
    assert usable_cores(tmp_path) == min(mask, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1, 1 core
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 1


async def test_drain_past_its_timeout_answers_at_once_but_never_closes_a_runtime_inside_a_call() -> None:
    """A runtime call outlasting the drain: its caller gets NotReady at the drain timeout (an answer, not
    silence), and the Runtime is closed only after the call has returned."""
    b, rt = await _batcher(max_batch=1, delay_s=0.0, rt_delay=2.0)
    stuck = asyncio.create_task(b.submit("encode", IMG, _deadline(10.0)))
    queued = asyncio.create_task(b.submit("encode", IMG, _deadline(10.0)))
    await asyncio.sleep(0.1)  # the first runs (2 s), the second waits for the only lane
    t0 = time.monotonic()
    draining = asyncio.create_task(b.drain(0.2))
    for task in (stuck, queued):
        with pytest.raises(NotReady):
            await asyncio.wait_for(task, 1.0)
    assert time.monotonic() - t0 < 1.0  # answered at the drain timeout, not when the call ends
    assert not draining.done() and not rt.closed  # the call is still running: the runtime stays open
    await asyncio.wait_for(draining, 5.0)
    assert time.monotonic() - t0 >= 1.8 and rt.closed  # closed after the 2 s call returned
    assert not b.alive
