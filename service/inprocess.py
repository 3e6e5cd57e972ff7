"""The embedded adapter of the batching core: an entry list in the API process and its runtime lanes.

``submit`` (on the event loop) admits an item (at most ``max_queue_size`` queued + running, else
``Overloaded`` -> 429 with Retry-After), appends an ``Entry`` holding its future and awaits it until the
deadline (``DeadlineExceeded`` -> 504). Each runtime lane is a thread that asks ``core.next_batch`` (under the
entry lock, clock ``time.monotonic()``) for its next batch as soon as it is free, runs it through
``core.execute`` and hands the results to the event loop; the dropped entries are answered the same way. The
event loop is thus never between two batches: on a small CPU, where the loop competes with the lanes for the
cores, a hand-off through it left each lane idle a quarter of the time (``docs/benchmarks.md``). There are
``lanes`` lane threads (``runtime_setup.resolve_lanes``: 1 unless the Runtime allows concurrent calls, e.g.
ONNX Runtime on the CPU, where a lane per core serves more images/s than one call using every core); a batch
is formed only when a lane is free, so the delay and cap rules see every waiting entry. A failing batch fails
only its own items; the lane goes on.

Load, warm-up, golden self-test and the batch-cap measurement (``prepare``, through ``runtime_setup``) run on
a helper thread before the lanes start. A runtime call running longer than ``hang_s`` makes
``liveness_problem`` report it (``/healthz`` 503).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
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
MAX_LANES = 64  # lane threads at most (EVOTOK_RUNTIME_LANES <= 64)
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
        self._inflight: dict[int, Batch[Item]] = {}  # id -> the batches now running (answered by drain past its timeout)
        self._cond = threading.Condition()  # guards entries, _inflight, times; lanes wait on it
        self._lanes: list[threading.Thread] = []
        self._lane_failed = False
        self._runtime: Runtime | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evotok-setup")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._stopping = False

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the set-up thread (load, warm-up, self-test) without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def attach(self, runtime: Runtime, policy: BatchPolicy | None = None, lanes: int | None = None) -> None:
        """Hand over a loaded, warmed, self-tested Runtime (and the policy with its caps, and how many calls
        may run at once) and start the lane threads: ready from now on. Call after ``start``."""
        if self._loop is None or self._lanes:
            raise RuntimeError("attach: call start() first, and only once; this is a bug")
        self.policy = policy or self.policy
        self.lanes = min(MAX_LANES, lanes or self.lanes)
        self._runtime = runtime
        self._lanes = [threading.Thread(target=self._lane, args=(runtime,), name=f"evotok-lane-{i}", daemon=True)
                       for i in range(self.lanes)]
        for t in self._lanes:
            t.start()

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
        """False when a lane has died (a bug) or the batcher has stopped."""
        return self._loop is not None and not self._stopping and not self._lane_failed

    def liveness_problem(self) -> str | None:
        if self._lane_failed and not self._draining:
            return "a runtime lane has stopped; restart the process"
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
            in_flight=len(self.entries) + self._running(),
            oldest_age_s=now - oldest,
            ready=self._runtime is not None and self.alive and not self._draining,
            draining=self._draining,
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        with self._cond:
            self._draining = True
            self._cond.notify_all()  # a batch still forming closes now ("drain")
        end = time.monotonic() + timeout_s
        while (self.entries or self._inflight) and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.01)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            left, self.entries = [*self.entries, *(e for b in self._inflight.values() for e in b.entries)], []
        self._fail(left, NotReady("server is shutting down"))  # past the drain timeout: an answer, not silence
        loop = asyncio.get_running_loop()
        for t in self._lanes:
            await loop.run_in_executor(None, t.join, max(0.0, end - time.monotonic()) + 1.0)
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await loop.run_in_executor(self._executor, runtime.close)
        self._executor.shutdown(wait=False)

    # --- admission --------------------------------------------------------------------------------
    async def submit(self, op: Op, payload: Array, deadline: float) -> Array:
        if self._draining:
            raise NotReady("server is draining; retry on another replica")
        if self._runtime is None or not self.alive:
            raise NotReady("model is not loaded yet; see GET /readyz")
        backlog = len(self.entries) + self._running()
        if backlog >= self.max_queue_size:
            rate = self.times.items_per_s() or 1.0
            raise Overloaded(f"queue is full ({self.max_queue_size} items); retry later",
                             retry_after_s=float(max(1, math.ceil(backlog / rate))))
        now = time.monotonic()
        if deadline <= now:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded("request deadline passed before it was queued")
        future: Fut = asyncio.get_running_loop().create_future()
        with self._cond:
            self.entries.append(Entry(key_of(op, payload), now, deadline, Item(payload, future)))
            self._cond.notify()
        try:
            return await asyncio.wait_for(future, timeout=deadline - now)
        except TimeoutError:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded(f"no result within the request deadline ({deadline - now:.3f} s)") from None

    def _running(self) -> int:
        """Items in the batches now running."""
        return sum(len(b.entries) for b in list(self._inflight.values()))

    def publish_gauges(self) -> None:
        """Queue depth / oldest age per op, and the age of the runtime call in progress (at scrape time)."""
        now, entries = time.monotonic(), list(self.entries)
        for op in OPS:
            mine = [e for e in entries if e.op == op]
            metrics.QUEUE_ENTRIES.labels(op, "lag").set(len(mine))
            metrics.QUEUE_OLDEST_AGE.labels(op).set(max((now - e.enqueued for e in mine), default=0.0))
        metrics.RUNTIME_CALL_AGE.set(self.watch.age_s())

    # --- the lanes: core decides, each lane thread takes its next batch itself, runs it, posts the answers ----
    def _lane(self, runtime: Runtime) -> None:
        """One lane thread: take the next batch (``core.next_batch`` under the entry lock), run it, hand the
        results to the event loop, repeat. The loop is not on the path between two batches."""
        try:
            while (batch := self._next()) is not None:
                n = len(batch.entries)
                metrics.QUEUE_ENTRIES.labels(batch.op, "pending").inc(n)
                try:
                    done = self._call(runtime, batch.op, [e.ref.payload for e in batch.entries], batch.key)
                finally:
                    metrics.QUEUE_ENTRIES.labels(batch.op, "pending").dec(n)
                    with self._cond:
                        self._inflight.pop(id(batch), None)
                        if done.results is not None:
                            self.times.update(batch.op, done.runtime_s, n)
                self._post(self._answer, batch, done)
        except Exception:  # execute() never raises; this is a bug, reported by liveness_problem
            log.exception("runtime lane failed")
            self._lane_failed = True

    def _next(self) -> Batch[Item] | None:
        """Block until a batch is due (answering the entries dropped on the way); None when stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                for e in self.entries:
                    e.cancelled = e.ref.future.done()  # the client went away (or submit gave up)
                decided = next_batch(self.entries, self.policy, now, run_estimate_s=self.times.batch_s,
                                     draining=self._draining)
                take(self.entries, decided)
                if decided.dropped:
                    metrics.observe_dropped(decided.dropped, "queue")
                    self._post(self._fail, [d.entry for d in decided.dropped],
                               DeadlineExceeded("deadline passed (or would pass) while queued"))
                if isinstance(decided, Batch):
                    metrics.observe_formed(decided, now)
                    self._inflight[id(decided)] = decided
                    self.batches.append(BatchRecord(decided.op, len(decided.entries), decided.reason))
                    if self.entries:
                        self._cond.notify()  # another idle lane may take what is left
                    return decided
                self._cond.wait(None if decided.until is None else max(0.0, decided.until - now))
        return None

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (futures are not thread-safe); a closed loop has no one to answer."""
        assert self._loop is not None  # lanes start in attach(), after start()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    def _fail(entries: list[Entry[Item]], failure: Exception) -> None:
        for e in entries:
            if not e.ref.future.done():
                e.ref.future.set_exception(failure)

    def _answer(self, batch: Batch[Item], done: Executed) -> None:
        """On the event loop: the batch's results to their futures, or its error to every item."""
        if done.results is None:
            err = done.error
            log.error("batch of %d %s items failed: %r", len(batch.entries), batch.op, err)
            failure: Exception = err if isinstance(err, NotReady) else (
                InvalidInput(str(err)) if error_code(err or Exception()) == "invalid_input"
                else BackendError(f"inference failed: {type(err).__name__}"))
            self._fail(batch.entries, failure)
            return
        for e, result in zip(batch.entries, done.results, strict=True):
            if not e.ref.future.done():
                e.ref.future.set_result(result)

    def _call(self, runtime: Runtime, op: Op, payloads: list[Array], key: Any) -> Executed:
        """On a lane thread: one watched core execution."""
        self.watch.begin()
        try:
            return execute(runtime, op, payloads, cap=self.policy.cap(op), bucket=bucket_of(key))
        finally:
            self.watch.end()
