"""The Redis Streams adapter of the batching core: a consumer in group ``workers`` feeding ``core.next_batch``.

Loop (``run``), all on the worker's main thread:

1. after start or a reconnect: create the consumer groups and take back this consumer's own pending entries
   (``XREADGROUP ... 0``, the recovery read of a restarted worker);
2. every ``claim_idle_ms / 2``: ``XAUTOCLAIM`` entries idle longer than ``claim_idle_ms`` (a dead or stuck
   peer's batch) into the local entry list;
3. ask ``next_batch`` (clock: Redis TIME, tracked through an offset) what to do: wait -> a blocking
   ``XREADGROUP`` for at most that long; a batch -> refresh the cancel marks of the held entries, ask again,
   then run the batch through ``core.execute`` and deliver + ack (``streams.deliver``). Dropped entries are
   answered ``deadline_exceeded`` / ``cancelled``, malformed / over-delivered ones are dead-lettered.

Redis errors never end the process: the loop backs off and reconnects. ``stop()`` (SIGTERM) stops reading and
runs what this consumer holds (batches close as ``drain``) before ``run`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.core import (
    OPS,
    Batch,
    BatchPolicy,
    CallWatch,
    Entry,
    RunTimes,
    Wait,
    bucket_of,
    error_code,
    execute,
    next_batch,
    take,
)
from evotok.service.redis_protocol import DELIVER_LUA, GROUP, Keys, WorkItem
from evotok.service.worker.streams import REDIS_DOWN, Outcome, admit, deliver, flatten, text, with_deliveries

log = logging.getLogger(__name__)
HOLD_BATCHES = 2  # a consumer holds (reads ahead) at most this many batches of entries
POLL_S = 0.002  # read interval while a batch waits for its delay to close


@dataclass(frozen=True)
class ConsumerOptions:
    name: str
    policy: BatchPolicy
    claim_idle_ms: int
    max_deliveries: int
    block_ms: int = 50


class Consumer:
    """Reads, batches (with the core), runs and answers; ``run()`` blocks until ``stop()``."""

    def __init__(self, client: redis.Redis, keys: Keys, runtime: Runtime, opts: ConsumerOptions,
                 times: RunTimes, watch: CallWatch) -> None:
        self.redis, self.keys, self.runtime, self.opts = client, keys, runtime, opts
        self.times, self.watch = times, watch
        self.entries: list[Entry[WorkItem]] = []
        self.batches_done = 0
        self.redis_ok = False
        self.need_setup = True
        self.on_connect: Any = None  # called after (re)connecting: the heartbeat's immediate beat
        self.on_batch: Any = None  # called after each delivered batch: publish the new time estimates
        self.last_turn = time.monotonic()
        self._stop = threading.Event()
        self._offset_s = 0.0  # Redis TIME - local time.time()
        self._next_claim = 0.0
        self._claim_cursor: dict[str, str] = {}
        self._deliver = client.register_script(DELIVER_LUA)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def now(self) -> float:
        return time.time() + self._offset_s

    def _sync_clock(self, sec: Any, usec: Any) -> float:
        now = int(sec) + int(usec) / 1e6
        self._offset_s = now - time.time()
        return now

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.1
        while not (self._stop.is_set() and not self.entries):
            self.last_turn = time.monotonic()
            try:
                if self.need_setup:
                    self._setup()
                if not self.redis_ok:
                    metrics.WORKER_READY.set(1)
                self.redis_ok, backoff = True, 0.1
                if not self._stop.is_set():
                    self._maybe_autoclaim()
                self._step()
            except REDIS_DOWN as exc:
                if self.redis_ok:
                    log.warning("redis unavailable (%s); reconnecting", exc)
                    metrics.REDIS_RECONNECTS.inc()
                self.redis_ok, self.need_setup = False, True
                metrics.WORKER_READY.set(0)
                self.entries = []  # still pending in Redis: recovered on reconnect or reclaimed by peers
                self._stop.wait(backoff)
                backoff = min(0.25, backoff * 2)
                if self._stop.is_set():
                    return
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without persistence: groups are gone
                    log.warning("consumer group missing (%s); recreating", exc)
                    self.need_setup = True
                else:
                    log.exception("redis command failed")
                    self._stop.wait(backoff)

    def _setup(self) -> None:
        for op in OPS:
            try:
                self.redis.xgroup_create(self.keys.work(op), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._claim_cursor = {}
        self._sync_clock(*self.redis.time())
        if self.on_connect is not None:
            self.on_connect()  # count as live at once (with the timing estimates)
        self.need_setup = False
        self.redis_ok = True
        metrics.WORKER_READY.set(1)
        streams: dict[Any, Any] = {self.keys.work(op): "0" for op in OPS}
        raw = flatten(self.redis.xreadgroup(GROUP, self.opts.name, streams))
        raw = [e for e in raw if e.fields is not None]
        if raw:
            log.info("recovering %d own pending entries", len(raw))
            self._hold(with_deliveries(self.redis, self.opts.name, raw))

    def _hold(self, raw: list[Any]) -> None:
        out = Outcome()
        self.entries += admit(self.redis, self.keys, self.opts.name, raw, self.opts.max_deliveries, out)
        self.entries.sort(key=lambda e: e.enqueued)  # arrival order (reclaimed entries are older)
        deliver(self.redis, self._deliver, self.keys, out)

    def _read(self, block_s: float | None) -> None:
        """Read what fits (at most ``HOLD_BATCHES`` batches are held, so peers can take the rest): wait up to
        ``block_s`` (0: return at once; None: the idle block of ``block_ms``)."""
        room = HOLD_BATCHES * self.opts.policy.largest_cap() - len(self.entries)
        if room <= 0:
            if block_s:
                self._stop.wait(min(block_s, self.opts.block_ms / 1000))
            return
        streams: dict[Any, Any] = {self.keys.work(op): ">" for op in OPS}
        # Idle: a blocking read (a new entry wakes it at once). Waiting for a batch to close: poll, because Redis
        # expires BLOCK timeouts only at its timer resolution (100 ms at hz 10), far coarser than a 5 ms delay.
        block = self.opts.block_ms if block_s is None else None
        raw = flatten(self.redis.xreadgroup(GROUP, self.opts.name, streams, count=room, block=block))
        if raw:
            self._hold(raw)
        elif block_s:
            self._stop.wait(min(block_s, POLL_S))

    def _step(self) -> None:
        draining = self._stop.is_set()
        if not draining:
            self._read(0.0)  # everything already queued takes part in this decision (as in process)
        decided = next_batch(self.entries, self.opts.policy, self.now(), run_estimate_s=self.times.batch_s,
                             draining=draining)
        if isinstance(decided, Batch):
            decided = self._recheck()  # cancel marks and the clock, fresh from Redis, decide for real
        out = Outcome()
        take(self.entries, decided)
        metrics.observe_dropped(decided.dropped, "worker")
        for d in decided.dropped:
            out.reply(d.entry.ref, d.reason, "client went away before inference" if d.reason == "cancelled"
                      else "deadline passed (or would pass during inference) while queued")
        if isinstance(decided, Wait):
            deliver(self.redis, self._deliver, self.keys, out)
            if not draining:
                self._read(None if decided.until is None else max(0.001, decided.until - self.now()))
            return
        t0 = time.perf_counter()
        metrics.observe_formed(decided, self.now())
        self._run(decided, out)
        deliver(self.redis, self._deliver, self.keys, out)
        self.times.update(decided.op, time.perf_counter() - t0, len(decided.entries))
        self.batches_done += 1
        if self.on_batch is not None:
            self.on_batch()

    def _recheck(self) -> Batch[WorkItem] | Wait[WorkItem]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for e in self.entries:
            pipe.exists(self.keys.cancel(e.ref.request_id))
        res = pipe.execute()
        now = self._sync_clock(*res[0])
        for e, cancelled in zip(self.entries, res[1:], strict=True):
            e.cancelled = bool(cancelled)
        return next_batch(self.entries, self.opts.policy, now, run_estimate_s=self.times.batch_s,
                          draining=self._stop.is_set())

    def _run(self, batch: Batch[WorkItem], out: Outcome) -> None:
        op, items = batch.op, [e.ref for e in batch.entries]
        self.watch.begin()
        try:
            done = execute(self.runtime, op, [i.payload for i in items], cap=self.opts.policy.cap(op),
                           bucket=bucket_of(batch.key))
        finally:
            self.watch.end()
        if done.results is None:
            log.error("%s batch of %d failed: %r", op, len(items), done.error)
            for i in items:
                out.reply(i, error_code(done.error or Exception()), f"inference failed: {type(done.error).__name__}")
            return
        for i, result in zip(items, done.results, strict=True):
            out.reply(i, "ok", "", result)

    def _maybe_autoclaim(self) -> None:
        """XAUTOCLAIM idle entries of dead or stuck consumers, one batch per call."""
        now = time.monotonic()
        if now < self._next_claim:
            return
        claimed, more = [], False
        held = {e.ref.entry_id for e in self.entries}  # XAUTOCLAIM also returns our own entries held that long
        for op in OPS:
            stream = self.keys.work(op)
            resp = self.redis.xautoclaim(stream, GROUP, self.opts.name, self.opts.claim_idle_ms,
                                         start_id=self._claim_cursor.get(stream, "0-0"),
                                         count=self.opts.policy.largest_cap())
            self._claim_cursor[stream] = nxt = text(resp[0])
            more = more or nxt != "0-0"
            claimed += [e for e in flatten([(stream, resp[1])], 2) if e.fields is not None and e.entry_id not in held]
        if claimed:
            log.info("reclaimed %d idle entries", len(claimed))
            for e in claimed:
                metrics.REDELIVERIES.labels(self.keys.op_of_stream(e.stream)).inc()
            self._hold(with_deliveries(self.redis, self.opts.name, claimed))
        if not more:
            self._next_claim = now + max(0.05, self.opts.claim_idle_ms / 2000)
