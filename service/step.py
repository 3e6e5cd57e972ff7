"""The batch step, once for both adapters: form the next batch, run it, turn the outcome into answers.

An adapter owns a ``Scheduler`` (its entries in arrival order, the run-time estimates and the call watch) and
moves entries in and answers out; everything between lives here:

- ``Scheduler.next(now, draining)``: ``core.next_batch`` with the run-time estimates, ``core.take``, and the
  metrics of what it decided (dropped items by reason, the batch's formation and queue wait);
- ``Scheduler.run(runtime, batch)``: one watched runtime call (``execute``) and the one run-time estimate rule:
  only a successful call's *runtime* time updates the estimate (never delivery, failures or waiting), so a
  stalled Redis or a failing batch cannot make admission believe that a batch takes 30 s;
- ``answers_of_dropped`` and ``answers_of_batch``: one ``Answer`` per entry, with a machine-readable ``code``
  from the one error table (``errors.py``): ``ok``, ``deadline_exceeded``, ``client_closed_request``,
  ``invalid_input`` (a payload off the op's contract), ``not_ready`` or ``backend_error``. The in-process adapter
  raises ``errors.error_of_code(code, message)`` into the caller's future; the worker writes code and message
  into the reply, and the API side raises the same ``error_of_code`` from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from evotok.service import metrics
from evotok.service.core import (
    OP_TABLE,
    Array,
    Batch,
    BatchPolicy,
    Dropped,
    Entry,
    Op,
    PayloadError,
    Wait,
    bucket_of,
    next_batch,
    run_op,
    take,
)
from evotok.service.errors import ServiceError

R = TypeVar("R")

DROP_MESSAGES: Mapping[str, str] = {
    "deadline_exceeded": "deadline passed (or would pass during inference) while queued",
    "cancelled": "client went away before inference",
}
DROP_CODES: Mapping[str, str] = {"deadline_exceeded": "deadline_exceeded", "cancelled": "client_closed_request"}


@dataclass(frozen=True)
class Executed:
    """The outcome of one runtime call: results ``(B, ...)`` in the wire dtype, or the error."""

    op: Op
    size: int
    results: Array | None
    error: BaseException | None
    runtime_s: float
    ran_ns: tuple[int, int] = (0, 0)  # wall-clock start and end (time.time_ns()), for tracing

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Answer(Generic[R]):
    """What one entry is answered: ``code`` ``ok`` with its ``result`` (one item), or an error code of
    ``errors.py`` with a message; ``ran_ns`` and ``batch`` say when its runtime call ran and how many items it had
    (zero for entries dropped before running)."""

    entry: Entry[R]
    code: str
    message: str = ""
    result: Array | None = None
    ran_ns: tuple[int, int] = (0, 0)
    batch: int = 0


def execute(runtime: Any, op: Op, payloads: Sequence[Array], *, cap: int, bucket: str,
            clock: Callable[[], float] = time.perf_counter) -> Executed:
    """Stack, check and run one batch, with timing and the batch metrics (``metrics.observe_batch``).

    Never raises for a failing batch: the error is returned, so the adapter fails only this batch's items.
    Runs on a lane thread (in process) or the worker's main thread, never on an event loop.
    """
    n = len(payloads)
    t0, wall0 = clock(), time.time_ns()
    try:
        batch = np.stack(payloads)
        OP_TABLE[op].check(batch, runtime.info)
        out = run_op(runtime, op, batch)
    except Exception as exc:
        dt = clock() - t0
        metrics.observe_batch(op, bucket, n, cap, dt, ok=False)
        return Executed(op, n, None, exc, dt, (wall0, time.time_ns()))
    dt = clock() - t0
    metrics.observe_batch(op, bucket, n, cap, dt, ok=True)
    return Executed(op, n, out, None, dt, (wall0, time.time_ns()))


def error_answer(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` of a failed batch, from the error table: a payload off the op's contract is the
    caller's fault (``invalid_input``, with its message); a domain error keeps its own code and message; anything
    else is ``backend_error`` naming the exception type (the details go to the log, not to the client)."""
    if isinstance(exc, PayloadError):
        return "invalid_input", str(exc)
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    return "backend_error", f"inference failed: {type(exc).__name__}"


def answers_of_dropped(dropped: Sequence[Dropped[R]]) -> list[Answer[R]]:
    return [Answer(d.entry, DROP_CODES[d.reason], DROP_MESSAGES[d.reason]) for d in dropped]


def answers_of_batch(batch: Batch[R], done: Executed) -> list[Answer[R]]:
    """One answer per entry of ``batch``: its result row, or the batch's error for every item."""
    if done.results is None:
        code, message = error_answer(done.error or RuntimeError("no result"))
        return [Answer(e, code, message) for e in batch.entries]
    return [Answer(e, "ok", "", r, done.ran_ns, done.size) for e, r in zip(batch.entries, done.results, strict=True)]


class RunTimes:
    """EWMA of one batch's runtime seconds per op: the ``run_estimate_s`` deadline drops use, and the item/batch
    times admission and Retry-After predict with. Updated only by ``Scheduler.run`` from successful calls."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.batch_s: dict[Op, float] = {}
        self.item_s: dict[Op, float] = {}
        self._lock = threading.Lock()  # lanes update concurrently

    def seed(self, op: Op, batch_s: float, n: int) -> None:
        with self._lock:
            self.batch_s[op], self.item_s[op] = batch_s, batch_s / max(1, n)

    def record(self, done: Executed) -> None:
        """The one estimate rule: a successful call's runtime time; failures say nothing about run time."""
        if not done.ok:
            return
        op, n, seconds = done.op, done.size, done.runtime_s
        with self._lock:
            if op not in self.batch_s:
                self.batch_s[op], self.item_s[op] = seconds, seconds / max(1, n)
                return
            a = self.alpha
            self.batch_s[op] = (1 - a) * self.batch_s[op] + a * seconds
            self.item_s[op] = (1 - a) * self.item_s[op] + a * seconds / max(1, n)


class CallWatch:
    """Liveness of the runtime lanes: a call running longer than ``bound_s`` means the process is stuck
    (``/healthz`` 503, so the orchestrator restarts it). Written by the runtime threads (one entry per thread,
    so concurrent lanes are watched each), read by probes."""

    def __init__(self, bound_s: float, clock: Any = time.monotonic) -> None:
        self.bound_s = bound_s
        self._clock = clock
        self._started: dict[int, float] = {}

    def begin(self) -> None:
        self._started[threading.get_ident()] = self._clock()

    def end(self) -> None:
        self._started.pop(threading.get_ident(), None)

    def age_s(self) -> float:
        """Age of the oldest call in progress (0 when none)."""
        oldest = min(list(self._started.values()), default=None)
        return 0.0 if oldest is None else self._clock() - oldest

    def problem(self) -> str | None:
        age = self.age_s()
        if age > self.bound_s:
            return f"a runtime call has run for {age:.1f} s (bound EVOTOK_RUNTIME_HANG_S={self.bound_s:g} s)"
        return None


@dataclass
class Scheduler(Generic[R]):
    """The batch step's state in one adapter: entries in arrival order, run-time estimates, the call watch.

    Not thread-safe by itself: the in-process adapter calls ``next`` under its entry lock (``run`` needs none),
    the worker from its one loop thread. ``where`` labels the deadline counter (``queue`` in process, ``worker``).
    ``clock`` times runtime calls (a simulation gives its own).
    """

    policy: BatchPolicy
    where: str
    times: RunTimes = field(default_factory=RunTimes)
    watch: CallWatch = field(default_factory=lambda: CallWatch(60.0))
    entries: list[Entry[R]] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter

    def next(self, now: float, *, draining: bool = False) -> Batch[R] | Wait[R]:
        """Decide (``core.next_batch``), take what was decided out of ``entries``, record it in the metrics."""
        decided = next_batch(self.entries, self.policy, now, run_estimate_s=self.times.batch_s, draining=draining)
        take(self.entries, decided)
        metrics.observe_dropped(decided.dropped, self.where)
        if isinstance(decided, Batch):
            metrics.observe_formed(decided, now)
        return decided

    def peek(self, now: float, *, draining: bool = False) -> Batch[R] | Wait[R]:
        """What ``next`` would decide now, changing nothing (a worker reads cancel marks only when a batch is due)."""
        return next_batch(self.entries, self.policy, now, run_estimate_s=self.times.batch_s, draining=draining)

    def run(self, runtime: Any, batch: Batch[R]) -> Executed:
        """One watched runtime call of ``batch``; updates the run-time estimate by the one rule."""
        self.watch.begin()
        try:
            done = execute(runtime, batch.op, [payload_of(e) for e in batch.entries],
                           cap=self.policy.cap(batch.op), bucket=bucket_of(batch.key), clock=self.clock)
        finally:
            self.watch.end()
        self.times.record(done)
        return done

    def oldest_age_s(self, now: float, op: Op | None = None) -> float:
        return max((now - e.enqueued for e in list(self.entries) if op is None or e.op == op), default=0.0)


def payload_of(entry: Entry[Any]) -> Array:
    """The item an entry carries: both adapters' refs have a ``payload`` (``inprocess.Item``, ``WorkItem``)."""
    payload: Array = entry.ref.payload
    return payload
