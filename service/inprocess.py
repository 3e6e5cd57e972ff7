"""The embedded adapter of the batching core: an entry list in the API process and its runtime lanes.

It only moves entries in and answers out; the rules live in the core. ``submit`` (on the event loop) asks the
admission rule (``admission.admit``: per-op bound, a deadline the predicted wait cannot meet -> 429 with
Retry-After), appends an ``Entry`` holding its future to the ``step.Scheduler`` and awaits it until the
deadline (``DeadlineExceeded`` -> 504). Each runtime lane is a thread that asks ``Scheduler.next`` (under the
entry lock, clock ``time.monotonic()``) for its next batch as soon as it is free, runs it with
``Scheduler.run`` and hands the answers (``step.answers_of_batch`` / ``answers_of_dropped``) to the event loop,
where each becomes a result or ``errors.error_of_code(code, message)``. The event loop is thus never between two
batches. There are ``lanes`` lane threads (``runtime_setup.resolve_lanes``); a batch is formed only when a
lane is free, so the delay and cap rules see every waiting entry. A failing batch fails only its own items.

Start-up is ``startup.start_runtime`` on a helper thread before the lanes start (the same path as a worker's).
Drain never closes the Runtime while a lane is inside a call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from evotok.export.runtime import Runtime
from evotok.service import admission, metrics, tracing
from evotok.service.batcher import Batcher, BatcherStats
from evotok.service.core import OPS, Batch, BatchPolicy, CloseReason, Entry, Op, key_of
from evotok.service.errors import DeadlineExceeded, NotReady, error_of_code
from evotok.service.step import Answer, CallWatch, Scheduler, answers_of_batch, answers_of_dropped

if TYPE_CHECKING:
    from evotok.service.state import ServiceState

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LANES = 64  # lane threads at most (EVOTOK_RUNTIME_LANES <= 64)
Array = Any  # numpy arrays (see core.py for shapes)
Fut = asyncio.Future[Any]  # resolves to the entry's step.Answer


@dataclass(frozen=True)
class Item:
    """What an in-process entry refers to: the caller's payload and the future it awaits."""

    payload: Array
    future: Fut
    enqueued_ns: int = 0  # wall clock (time.time_ns()) at admission, for the queue_wait span


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
        self.sched: Scheduler[Item] = Scheduler(policy, "queue", watch=CallWatch(hang_s))
        self.max_queue_size = max_queue_size
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self._factory = runtime_factory
        self._caps: dict[str, Any] | None = None
        self.lanes = lanes
        self._inflight: dict[int, Batch[Item]] = {}  # id -> the batches now running
        self._cond = threading.Condition()  # guards the scheduler's entries and _inflight; lanes wait on it
        self._lanes: list[threading.Thread] = []
        self._lane_failed = False
        self._runtime: Runtime | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evotok-setup")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._stopping = False

    @property
    def policy(self) -> BatchPolicy:
        return self.sched.policy

    @property
    def entries(self) -> list[Entry[Item]]:
        return self.sched.entries

    @property
    def times(self) -> Any:
        return self.sched.times

    @property
    def watch(self) -> CallWatch:
        return self.sched.watch

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
        self.sched.policy = policy or self.sched.policy
        self.lanes = min(MAX_LANES, lanes or self.lanes)
        self._runtime = runtime
        self._lanes = [threading.Thread(target=self._lane, args=(runtime,), name=f"evotok-lane-{i}", daemon=True)
                       for i in range(self.lanes)]
        for t in self._lanes:
            t.start()

    async def prepare(self, state: ServiceState) -> None:
        """Build and prepare the Runtime (``startup.start_runtime``, the worker's path too), then attach it."""
        from evotok.service.startup import start_runtime

        if self._factory is None:
            raise RuntimeError("InProcessBatcher.prepare needs a runtime_factory; this is a bug")
        factory, settings = self._factory, state.settings

        def set_phase(p: str) -> None:
            state.phase = p

        try:
            started = await self.run_in_worker(lambda: start_runtime(settings, factory, set_phase))
            prepared = started.prepared
            state.details.update({"load_s": started.load_s, **prepared.details})
            state.self_test, state.info = prepared.self_test, started.runtime.info
            if started.error is not None:
                state.phase, state.startup_error = "failed", started.error
                return
            self.sched.times = started.times
            self._caps = prepared.caps_dict()
            self.attach(started.runtime, prepared.policy, prepared.lanes)
            state.phase = "ready"
            metrics.READY.set(1)
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
        return BatcherStats(
            queued=len(self.entries),
            in_flight=len(self.entries) + self._running(),
            oldest_age_s=self.sched.oldest_age_s(now),
            ready=self._runtime is not None and self.alive and not self._draining,
            draining=self._draining,
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, run what was admitted (batches close as ``drain``) for up to ``timeout_s``, answer
        what is left ``not_ready``, stop the lanes, and close the Runtime once no lane is inside a call."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()  # a batch still forming closes now ("drain")
        end = time.monotonic() + timeout_s
        while (self.entries or self._inflight) and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.01)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            left = [*self.entries, *(e for b in self._inflight.values() for e in b.entries)]
            self.entries.clear()
        self._fail(left, NotReady("server is shutting down"))  # past the drain timeout: an answer, not silence
        loop = asyncio.get_running_loop()
        for t in self._lanes:  # a lane leaves at its next turn; one inside a call leaves when the call returns
            while t.is_alive():
                await loop.run_in_executor(None, t.join, 1.0)
                if t.is_alive():
                    log.warning("drain: %s is still inside a runtime call (%.1f s); waiting for it", t.name,
                                self.watch.age_s())
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
        now = time.monotonic()
        if deadline <= now:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded("request deadline passed before it was queued")
        times = self.sched.times
        decision = admission.admit(admission.View(
            queued=self._backlog(op), max_entries=self.max_queue_size, item_s=times.item_s.get(op, 0.0),
            batch_s=times.batch_s.get(op, 0.0), parallel=self.lanes, remaining_s=deadline - now))
        if not decision.ok:
            raise admission.refusal(op, decision)
        future: Fut = asyncio.get_running_loop().create_future()
        item = Item(payload, future, time.time_ns())
        with self._cond:
            self.entries.append(Entry(key_of(op, payload), now, deadline, item))
            self._cond.notify()
        try:
            answer: Answer[Item] = await asyncio.wait_for(future, timeout=deadline - now)
        except TimeoutError:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded(f"no result within the request deadline ({deadline - now:.3f} s)") from None
        start_ns, end_ns = answer.ran_ns
        tracing.record("queue_wait", item.enqueued_ns, start_ns, op=op)
        tracing.record("inference", start_ns, end_ns, op=op, batch=answer.batch)
        return answer.result

    def _backlog(self, op: Op) -> int:
        """The op's items admitted and not answered: queued and in the batches now running."""
        running = sum(len(b.entries) for b in list(self._inflight.values()) if b.op == op)
        return sum(1 for e in list(self.entries) if e.op == op) + running

    def _running(self) -> int:
        """Items in the batches now running."""
        return sum(len(b.entries) for b in list(self._inflight.values()))

    def publish_gauges(self) -> None:
        """Queue depth / oldest age per op, and the age of the runtime call in progress (at scrape time)."""
        now, entries = time.monotonic(), list(self.entries)
        for op in OPS:
            metrics.QUEUE_ENTRIES.labels(op, "lag").set(sum(1 for e in entries if e.op == op))
            metrics.QUEUE_OLDEST_AGE.labels(op).set(self.sched.oldest_age_s(now, op))
        metrics.RUNTIME_CALL_AGE.set(self.watch.age_s())

    # --- the lanes: each takes its next batch itself, runs it, posts the answers -----------------------
    def _lane(self, runtime: Runtime) -> None:
        try:
            while (batch := self._next()) is not None:
                n = len(batch.entries)
                metrics.QUEUE_ENTRIES.labels(batch.op, "pending").inc(n)
                try:
                    done = self.sched.run(runtime, batch)
                finally:
                    metrics.QUEUE_ENTRIES.labels(batch.op, "pending").dec(n)
                    with self._cond:
                        self._inflight.pop(id(batch), None)
                if not done.ok:
                    log.error("batch of %d %s items failed: %r", n, batch.op, done.error)
                self._post(self._answer, answers_of_batch(batch, done))
        except Exception:  # the step never raises; this is a bug, reported by liveness_problem
            log.exception("runtime lane failed")
            self._lane_failed = True

    def _next(self) -> Batch[Item] | None:
        """Block until a batch is due (answering the entries dropped on the way); None when stopping."""
        with self._cond:
            while not self._stopping:
                for e in self.entries:
                    e.cancelled = e.ref.future.done()  # the client went away (or its caller gave up)
                now = time.monotonic()
                decided = self.sched.next(now, draining=self._draining)
                if decided.dropped:
                    self._post(self._answer, answers_of_dropped(decided.dropped))
                if isinstance(decided, Batch):
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

    @staticmethod
    def _answer(answers: list[Answer[Item]]) -> None:
        """On the event loop: each answer to its future (a caller that gave up has nobody to answer)."""
        for a in answers:
            fut = a.entry.ref.future
            if fut.done():
                continue
            if a.code == "ok":
                fut.set_result(a)
            else:
                fut.set_exception(error_of_code(a.code, a.message))
