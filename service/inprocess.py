"""The embedded dynamic batcher: one asyncio task forms batches, one worker thread runs the Runtime.

Flow of one item: ``submit`` admits it (bounded: at most ``max_queue_size`` items queued + running, else
``Overloaded`` -> 429 with Retry-After), appends an ``_Entry`` and awaits its future until the deadline
(``DeadlineExceeded`` -> 504). The batcher task takes the oldest live entry, then gathers entries with the same
op and payload shape until ``max_batch_size`` items or ``max_queue_delay_s`` after that first item's arrival,
dropping entries whose future was cancelled (client gone) or whose deadline passed. The stacked batch runs on
the single worker thread (the Runtime is never touched by two threads, nor by the event loop); results are
split back onto the futures. A failing batch fails only its own items (``BackendError``); the loop goes on.

The same worker thread also loads, warms and self-tests the Runtime (``run_in_worker``) before ``attach``
makes the batcher ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.batcher import Batcher, BatcherStats, BatchPolicy, Op
from evotok.service.errors import BackendError, DeadlineExceeded, NotReady, Overloaded

log = logging.getLogger(__name__)
T = TypeVar("T")
Array = npt.NDArray[Any]


@dataclass(eq=False)
class _Entry:
    op: Op
    payload: Array
    deadline: float  # time.monotonic() based
    enqueued: float
    future: asyncio.Future[Array] = field(repr=False)

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return self.op, self.payload.shape


@dataclass(frozen=True)
class BatchRecord:
    """What one batch looked like (kept for tests and the benchmark)."""

    op: Op
    size: int
    close_reason: str  # full | delay | drain


def _run_op(runtime: Runtime, op: Op, batch: Array) -> Array:
    if op == "encode":
        return runtime.encode(batch)
    if op == "decode":
        return runtime.decode(batch)
    if op == "embed_image":
        return runtime.embed_images(batch)
    if op == "embed_codes":
        return runtime.embed_codes(batch)
    raise ValueError(f"unknown op {op!r}; this is a bug")


class InProcessBatcher(Batcher):
    def __init__(self, policy: BatchPolicy, max_queue_size: int = 256, history: int = 1000) -> None:
        self.policy = policy
        self.max_queue_size = max_queue_size
        self._queue: collections.deque[_Entry] = collections.deque()
        self._running = 0
        self._forming: list[_Entry] = []  # taken off the queue, batch not closed yet
        self._runtime: Runtime | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evotok-runtime")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._bucket = "unknown"
        self._items_per_s = 0.0  # EWMA of batch throughput, for Retry-After
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=history)

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="evotok-batcher")

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the runtime thread (load, warm-up, self-test) without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def attach(self, runtime: Runtime) -> None:
        """Hand over a loaded, warmed, self-tested Runtime: from now on the batcher is ready."""
        self._runtime = runtime
        self._bucket = str(runtime.info.image_size)

    @property
    def alive(self) -> bool:
        """False when the batch loop has died (liveness)."""
        return self._task is not None and not self._task.done()

    def stats(self) -> BatcherStats:
        now = time.monotonic()
        oldest = min((e.enqueued for e in self._queue), default=now)
        return BatcherStats(
            queued=len(self._queue) + len(self._forming),
            in_flight=len(self._queue) + len(self._forming) + self._running,
            oldest_age_s=now - oldest,
            ready=self._runtime is not None and self.alive and not self._draining,
            draining=self._draining,
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        self._draining = True
        end = time.monotonic() + timeout_s
        while (self._queue or self._forming or self._running) and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.01)
        for entry in [*self._queue, *self._forming]:
            if not entry.future.done():
                entry.future.set_exception(NotReady("server is shutting down"))
        self._queue.clear()
        self._forming = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, runtime.close)
        self._executor.shutdown(wait=False)

    # --- admission --------------------------------------------------------------------------------
    async def submit(self, op: Op, payload: Array, deadline: float) -> Array:
        if self._draining:
            raise NotReady("server is draining; retry on another replica")
        if self._runtime is None or self._wakeup is None or not self.alive:
            raise NotReady("model is not loaded yet; see GET /readyz")
        endpoint = metrics.endpoint_of_op(op)
        if self._backlog() >= self.max_queue_size:
            raise Overloaded(
                f"queue is full ({self.max_queue_size} items); retry later", retry_after_s=self._retry_after()
            )
        now = time.monotonic()
        if deadline <= now:
            metrics.DEADLINE_EXCEEDED.labels(endpoint, "api").inc()
            raise DeadlineExceeded("request deadline passed before it was queued")
        future: asyncio.Future[Array] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(op, payload, deadline, now, future))
        self.publish_gauges(endpoint)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, timeout=deadline - now)
        except TimeoutError:
            metrics.DEADLINE_EXCEEDED.labels(endpoint, "api").inc()
            raise DeadlineExceeded(f"no result within the request deadline ({deadline - now:.3f} s)") from None

    def _backlog(self) -> int:
        return len(self._queue) + len(self._forming) + self._running

    def _retry_after(self) -> float:
        backlog = self._backlog()
        rate = self._items_per_s if self._items_per_s > 0 else 1.0
        return float(max(1, math.ceil(backlog / rate)))

    def publish_gauges(self, endpoint: str | None = None) -> None:
        """Set the queue depth/oldest-age gauges from the current queue."""
        counts: dict[str, int] = collections.Counter(metrics.endpoint_of_op(e.op) for e in self._queue)
        ages: dict[str, float] = {}
        now = time.monotonic()
        for e in self._queue:
            ep = metrics.endpoint_of_op(e.op)
            ages[ep] = max(ages.get(ep, 0.0), now - e.enqueued)
        for ep in {"encode", "decode", "embed"}:
            metrics.QUEUE_ENTRIES.labels(ep, metrics.PRIORITY, "lag").set(counts.get(ep, 0))
            metrics.QUEUE_OLDEST_AGE.labels(ep, metrics.PRIORITY).set(ages.get(ep, 0.0))

    # --- batch formation --------------------------------------------------------------------------
    def _live(self, entry: _Entry, now: float) -> bool:
        """False (and the entry answered/counted) for cancelled or expired entries."""
        endpoint = metrics.endpoint_of_op(entry.op)
        if entry.future.done():  # cancelled by the client or timed out in submit
            metrics.ITEMS_SKIPPED.labels(endpoint, "cancelled").inc()
            return False
        if entry.deadline <= now:
            metrics.ITEMS_SKIPPED.labels(endpoint, "deadline_exceeded").inc()
            metrics.DEADLINE_EXCEEDED.labels(endpoint, "queue").inc()
            entry.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            return False
        return True

    def _take_matching(self, key: tuple[str, tuple[int, ...]], batch: list[_Entry], limit: int) -> None:
        now = time.monotonic()
        keep: collections.deque[_Entry] = collections.deque()
        while self._queue:
            entry = self._queue.popleft()
            if not self._live(entry, now):
                continue
            if len(batch) < limit and entry.key == key:
                batch.append(entry)
            else:
                keep.append(entry)
        self._queue = keep

    async def _next_batch(self) -> tuple[list[_Entry], str]:
        assert self._wakeup is not None
        while True:
            now = time.monotonic()
            while self._queue and not self._live(self._queue[0], now):
                self._queue.popleft()
            if self._queue:
                break
            self.publish_gauges()
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue.popleft()
        batch = [first]
        self._forming = batch  # the same list: entries added below are visible to stats/drain
        limit = self.policy.max_batch_size
        close_at = first.enqueued + self.policy.max_queue_delay_s
        while True:
            self._take_matching(first.key, batch, limit)
            if len(batch) >= limit:
                return batch, "full"
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return batch, "delay"
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            picked_at = time.monotonic()
            batch, reason = await self._next_batch()
            self._forming = []
            batch = [e for e in batch if not e.future.done()]
            if not batch:
                continue
            op = batch[0].op
            endpoint = metrics.endpoint_of_op(op)
            closed_at = time.monotonic()
            metrics.BATCH_FORMATION.labels(endpoint).observe(max(0.0, closed_at - max(picked_at, batch[0].enqueued)))
            metrics.BATCH_CLOSE_REASON.labels(endpoint, reason).inc()
            for e in batch:
                metrics.QUEUE_WAIT.labels(endpoint, metrics.PRIORITY).observe(closed_at - e.enqueued)
            self._running = len(batch)
            metrics.QUEUE_ENTRIES.labels(endpoint, metrics.PRIORITY, "pending").set(self._running)
            self.publish_gauges()
            try:
                await self._run_batch(loop, op, batch, reason)
            finally:
                self._running = 0
                metrics.QUEUE_ENTRIES.labels(endpoint, metrics.PRIORITY, "pending").set(0)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, op: Op, batch: list[_Entry], reason: str) -> None:
        endpoint, bucket, n = metrics.endpoint_of_op(op), self._bucket, len(batch)
        runtime = self._runtime
        stacked = np.stack([e.payload for e in batch])
        t0 = time.perf_counter()
        try:
            if runtime is None:
                raise NotReady("runtime was released")
            out = await loop.run_in_executor(self._executor, _run_op, runtime, op, stacked)
            if len(out) != n:
                raise RuntimeError(f"runtime returned {len(out)} results for {n} items; this is a bug")
        except Exception as exc:
            log.exception("batch of %d %s items failed", n, op)
            metrics.BATCHES.labels(endpoint, bucket, "error").inc()
            err = exc if isinstance(exc, NotReady) else BackendError(f"inference failed: {type(exc).__name__}")
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(err)
            return
        elapsed = time.perf_counter() - t0
        self._items_per_s = 0.8 * self._items_per_s + 0.2 * (n / max(elapsed, 1e-6)) if self._items_per_s else n / max(
            elapsed, 1e-6
        )
        metrics.STAGE_DURATION.labels(endpoint, metrics.stage_of_op(op), bucket).observe(elapsed)
        metrics.BATCHES.labels(endpoint, bucket, "ok").inc()
        metrics.BATCH_ITEMS.labels(endpoint, bucket).inc(n)
        metrics.BATCH_SIZE.labels(endpoint, bucket).observe(n)
        metrics.BATCH_FILL.labels(endpoint, bucket).observe(n / self.policy.max_batch_size)
        metrics.LAST_BATCH_TS.set(time.time())
        self.batches.append(BatchRecord(op, n, reason))
        for e, result in zip(batch, out, strict=True):
            if not e.future.done():
                e.future.set_result(result)
