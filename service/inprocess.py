"""The embedded adapter of the batching core: an asyncio entry list in the API process and its runtime lanes.

``submit`` admits an item (at most ``max_queue_size`` queued + running, else ``Overloaded`` -> 429 with
Retry-After), appends an ``Entry`` holding its future and awaits it until the deadline (``DeadlineExceeded``
-> 504). One task asks ``core.next_batch`` what to do with the entries (clock: ``time.monotonic()``), answers the
entries it drops, and runs each batch on a runtime thread through ``core.execute`` (never on the event loop).
At most ``lanes`` batches run at once (``runtime_setup.resolve_lanes``: 1 unless the Runtime allows concurrent
calls, e.g. ONNX Runtime on the CPU, where a lane per core serves more images/s than one call using every
core); a batch is formed only when a lane is free, so the delay and cap rules see every waiting entry. A
failing batch fails only its own items; the loop goes on.

A runtime thread loads, warms, self-tests the Runtime and measures the batch caps (``prepare``, through
``runtime_setup``) before the batcher is ready. A runtime call running longer than ``hang_s`` makes
``liveness_problem`` report it (``/healthz`` 503).
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.batcher import Batcher, BatcherStats
from evotok.service.core import (
    OPS,
    Batch,
    BatchPolicy,
    CallWatch,
    CloseReason,
    Entry,
    Executed,
    Op,
    RunTimes,
    Wait,
    bucket_of,
    error_code,
    execute,
    key_of,
    next_batch,
    take,
)
from evotok.service.errors import BackendError, DeadlineExceeded, InvalidInput, NotReady, Overloaded

if TYPE_CHECKING:
    from evotok.service.state import ServiceState

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LANES = 64  # threads the runtime executor may start (lanes are capped by EVOTOK_RUNTIME_LANES <= 64)
Array = Any  # numpy arrays (see core.py for shapes)
Fut = asyncio.Future[Array]


@dataclass(frozen=True)
class Item:
    """What an in-process entry refers to: the caller's payload and the future it awaits."""

    payload: Array
    future: Fut


@dataclass(frozen=True)
class BatchRecord:
    """What one batch looked like (kept for tests and the benchmark)."""

    op: Op
    size: int
    close_reason: CloseReason


class InProcessBatcher(Batcher):
    def __init__(self, policy: BatchPolicy, max_queue_size: int = 256, history: int = 1000, *,
                 runtime_factory: Callable[[], Runtime] | None = None, hang_s: float = 60.0,
                 lanes: int = 1) -> None:
        self.policy = policy
        self.max_queue_size = max_queue_size
        self.entries: list[Entry[Item]] = []
        self.times = RunTimes()
        self.watch = CallWatch(hang_s)
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self._factory = runtime_factory
        self._caps: dict[str, Any] | None = None
        self.lanes = lanes
        self._running = 0  # items in the batches now running
        self._active: set[asyncio.Task[None]] = set()  # the batches now running, at most ``lanes``
        self._runtime: Runtime | None = None
        self._executor = ThreadPoolExecutor(max_workers=MAX_LANES, thread_name_prefix="evotok-runtime")
        self._wakeup: asyncio.Event | None = None
        self._lane_free: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._lane_free = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="evotok-batcher")

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the runtime thread (load, warm-up, self-test) without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def attach(self, runtime: Runtime, policy: BatchPolicy | None = None, lanes: int | None = None) -> None:
        """Hand over a loaded, warmed, self-tested Runtime (and the policy with its caps, and how many calls
        may run at once): ready from now on."""
        self.policy = policy or self.policy
        self.lanes = min(MAX_LANES, lanes or self.lanes)
        self._runtime = runtime

    async def prepare(self, state: ServiceState) -> None:
        """Load the Runtime with the factory, prepare it (``runtime_setup``), then attach it."""
        from evotok import __version__
        from evotok.service.runtime_setup import prepare_runtime

        if self._factory is None:
            raise RuntimeError("InProcessBatcher.prepare needs a runtime_factory; this is a bug")
        factory, settings = self._factory, state.settings
        try:
            state.phase = "loading"
            t0 = time.perf_counter()
            runtime = await self.run_in_worker(factory)
            state.details["load_s"] = time.perf_counter() - t0
            metrics.ENGINE_LOAD.labels("runtime").set(state.details["load_s"])

            def set_phase(p: str) -> None:
                state.phase = p

            prepared = await self.run_in_worker(lambda: prepare_runtime(runtime, settings, set_phase))
            state.details.update(prepared.details)
            state.self_test, info = prepared.self_test, runtime.info
            metrics.BUILD_INFO.labels(__version__, info.weights_hash[:12], info.backend, info.precision, "").set(1)
            state.info = info
            if not prepared.self_test.passed:
                r = prepared.self_test
                state.phase = "failed"
                state.startup_error = (f"golden self-test failed: agreement {r.agreement:.4f} < threshold "
                                       f"{r.threshold} (first mismatch at depth {r.first_mismatch_depth})")
                if r.details.get("reason"):
                    state.startup_error += f": {r.details['reason']}"
                log.error(state.startup_error)
                return
            for op, seconds in prepared.batch_s().items():
                self.times.seed(op, seconds, prepared.policy.cap(op))
            self._caps = prepared.caps_dict()
            self.attach(runtime, prepared.policy, prepared.lanes)
            state.phase = "ready"
            metrics.READY.set(1)
            log.info("ready: self-test agreement %.4f", prepared.self_test.agreement)
        except Exception as exc:
            state.phase = "failed"
            state.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("startup failed")

    @property
    def alive(self) -> bool:
        """False when the batch loop has died."""
        return self._task is not None and not self._task.done()

    def liveness_problem(self) -> str | None:
        if self._task is not None and self._task.done() and not self._draining:
            return "the batch loop has stopped; restart the process"
        return self.watch.problem()

    def batch_caps(self) -> dict[str, Any] | None:
        return self._caps

    def runtime_lanes(self) -> int | None:
        return self.lanes if self._runtime is not None else None

    def stats(self) -> BatcherStats:
        now = time.monotonic()
        oldest = min((e.enqueued for e in self.entries), default=now)
        return BatcherStats(
            queued=len(self.entries),
            in_flight=len(self.entries) + self._running,
            oldest_age_s=now - oldest,
            ready=self._runtime is not None and self.alive and not self._draining,
            draining=self._draining,
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()  # a batch still forming closes now ("drain")
        end = time.monotonic() + timeout_s
        while (self.entries or self._active) and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.01)
        for entry in self.entries:
            if not entry.ref.future.done():
                entry.ref.future.set_exception(NotReady("server is shutting down"))
        self.entries = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._active):  # past the drain timeout: answer what still runs
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        backlog = len(self.entries) + self._running
        if backlog >= self.max_queue_size:
            rate = self.times.items_per_s() or 1.0
            raise Overloaded(f"queue is full ({self.max_queue_size} items); retry later",
                             retry_after_s=float(max(1, math.ceil(backlog / rate))))
        now = time.monotonic()
        if deadline <= now:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded("request deadline passed before it was queued")
        future: Fut = asyncio.get_running_loop().create_future()
        self.entries.append(Entry(key_of(op, payload), now, deadline, Item(payload, future)))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, timeout=deadline - now)
        except TimeoutError:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded(f"no result within the request deadline ({deadline - now:.3f} s)") from None

    def publish_gauges(self) -> None:
        """Queue depth / oldest age per op, and the age of the runtime call in progress."""
        now = time.monotonic()
        for op in OPS:
            mine = [e for e in self.entries if e.op == op]
            metrics.QUEUE_ENTRIES.labels(op, "lag").set(len(mine))
            metrics.QUEUE_OLDEST_AGE.labels(op).set(max((now - e.enqueued for e in mine), default=0.0))
        metrics.RUNTIME_CALL_AGE.set(self.watch.age_s())

    # --- the loop: core decides, this adapter waits, runs and answers --------------------------------
    async def _loop(self) -> None:
        assert self._wakeup is not None and self._lane_free is not None
        while True:
            if len(self._active) >= self.lanes:  # every lane busy: form the next batch when one frees
                self._lane_free.clear()
                await self._lane_free.wait()
                continue
            now = time.monotonic()
            for e in self.entries:
                e.cancelled = e.ref.future.done()  # the client went away (or submit gave up)
            decided = next_batch(self.entries, self.policy, now, run_estimate_s=self.times.batch_s,
                                 draining=self._draining)
            take(self.entries, decided)
            metrics.observe_dropped(decided.dropped, "queue")
            for d in decided.dropped:
                if not d.entry.ref.future.done():
                    d.entry.ref.future.set_exception(DeadlineExceeded("deadline passed (or would pass) while queued"))
            if isinstance(decided, Wait):
                self.publish_gauges()
                self._wakeup.clear()
                timeout = None if decided.until is None else max(0.0, decided.until - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
                continue
            metrics.observe_formed(decided, now)
            task = asyncio.create_task(self._run(decided), name="evotok-batch")
            self._active.add(task)
            task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if self._lane_free is not None:
            self._lane_free.set()
        if not task.cancelled() and task.exception() is not None:  # _run answers its items; this is a bug
            log.error("batch task failed", exc_info=task.exception())

    async def _run(self, batch: Batch[Item]) -> None:
        runtime, op, n = self._runtime, batch.op, len(batch.entries)
        payloads = [e.ref.payload for e in batch.entries]
        self._running += n
        metrics.QUEUE_ENTRIES.labels(op, "pending").inc(n)
        self.publish_gauges()
        try:
            if runtime is None:
                raise NotReady("runtime was released")
            done = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, runtime, op, payloads,
                                                                    batch.key)
        except NotReady as gone:
            done = Executed(op, n, None, gone, 0.0)
        except asyncio.CancelledError:  # drain gave up on this batch: its callers get an answer, not silence
            for e in batch.entries:
                if not e.ref.future.done():
                    e.ref.future.set_exception(NotReady("server is shutting down"))
            raise
        finally:
            self._running -= n
            metrics.QUEUE_ENTRIES.labels(op, "pending").dec(n)
        if done.results is None:
            err = done.error
            log.error("batch of %d %s items failed: %r", n, op, err)
            failure: Exception = err if isinstance(err, NotReady) else (
                InvalidInput(str(err)) if error_code(err or Exception()) == "invalid_input"
                else BackendError(f"inference failed: {type(err).__name__}"))
            for e in batch.entries:
                if not e.ref.future.done():
                    e.ref.future.set_exception(failure)
            return
        self.times.update(op, done.runtime_s, n)
        self.batches.append(BatchRecord(op, n, batch.reason))
        for e, result in zip(batch.entries, done.results, strict=True):
            if not e.ref.future.done():
                e.ref.future.set_result(result)

    def _call(self, runtime: Runtime, op: Op, payloads: list[Array], key: Any) -> Executed:
        """On the runtime thread: one watched core execution."""
        self.watch.begin()
        try:
            return execute(runtime, op, payloads, cap=self.policy.cap(op), bucket=bucket_of(key))
        finally:
            self.watch.end()
