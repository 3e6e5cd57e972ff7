"""The Redis Streams adapter of the batching core: a consumer in group ``workers`` feeding ``core.next_batch``.

Loop (``run``), all on the worker's main thread:

1. after start or a reconnect: create the consumer groups and take back this consumer's own pending entries
   (``XREADGROUP ... 0``, the recovery read of a restarted worker);
2. every ``claim_idle_ms / 2``: ``XAUTOCLAIM`` entries idle longer than ``claim_idle_ms`` (a dead or stuck
   peer's batch) into the local entry list;
3. ask the core's batch step (``step.Scheduler.next``; clock: Redis TIME, tracked through an offset) what to
   do: wait -> a blocking ``XREADGROUP`` for at most that long; a batch -> refresh the cancel marks of the held
   entries and decide for real, run it (``Scheduler.run``) and deliver its answers (``step.answers_of_batch``,
   ``answers_of_dropped``) + ack (``streams.deliver``). Malformed / over-delivered entries are dead-lettered.

The entries this consumer holds have their idle time reset (``XCLAIM ... JUSTID``, which does not count a
delivery) before each ``XAUTOCLAIM``, so a worker never re-delivers its own entries to itself, and a peer
reclaims only the entries of a consumer whose loop stopped turning.

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
from evotok.service.core import OPS, Batch, Wait
from evotok.service.redis_protocol import DELIVER_LUA, GROUP, Keys, WorkItem
from evotok.service.step import Answer, Scheduler, answers_of_batch, answers_of_dropped
from evotok.service.worker.streams import REDIS_DOWN, Outcome, admit, deliver, flatten, text, with_deliveries

log = logging.getLogger(__name__)
HOLD_BATCHES = 2  # a consumer holds (reads ahead) at most this many batches of entries
POLL_S = 0.002  # read interval while a batch waits for its delay to close


@dataclass(frozen=True)
class ConsumerOptions:
    name: str
    claim_idle_ms: int
    max_deliveries: int
    block_ms: int = 50


class Consumer:
    """Reads, batches (with the core), runs and answers; ``run()`` blocks until ``stop()``."""

    def __init__(self, client: redis.Redis, keys: Keys, runtime: Runtime, opts: ConsumerOptions,
                 sched: Scheduler[WorkItem]) -> None:
        self.redis, self.keys, self.runtime, self.opts = client, keys, runtime, opts
        self.sched = sched
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
        self._running: tuple[str, int] = ("", 0)  # (op, items) of the batch in the runtime now

    @property
    def entries(self) -> list[Any]:
        return self.sched.entries

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
                    metrics.worker_ready().set(1)
                self.redis_ok, backoff = True, 0.1
                if not self._stop.is_set():
                    self._maybe_autoclaim()
                self._step()
            except REDIS_DOWN as exc:
                if self.redis_ok:
                    log.warning("redis unavailable (%s); reconnecting", exc)
                    metrics.REDIS_RECONNECTS.inc()
                self.redis_ok, self.need_setup = False, True
                metrics.worker_ready().set(0)
                self.entries.clear()  # still pending in Redis: recovered on reconnect or reclaimed by peers
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
        metrics.worker_ready().set(1)
        streams: dict[Any, Any] = {self.keys.work(op): "0" for op in OPS}
        raw = flatten(self.redis.xreadgroup(GROUP, self.opts.name, streams))
        raw = [e for e in raw if e.fields is not None]
        if raw:
            log.info("recovering %d own pending entries", len(raw))
            self._hold(with_deliveries(self.redis, self.opts.name, raw))

    def _hold(self, raw: list[Any]) -> None:
        out = Outcome()
        self.entries.extend(admit(self.redis, self.keys, self.opts.name, raw, self.opts.max_deliveries, out))
        self.entries.sort(key=lambda e: e.enqueued)  # arrival order (reclaimed entries are older)
        deliver(self.redis, self._deliver, self.keys, out)

    def _read(self, block_s: float | None) -> None:
        """Read what fits (at most ``HOLD_BATCHES`` batches are held, so peers can take the rest): wait up to
        ``block_s`` (0: return at once; None: the idle block of ``block_ms``)."""
        room = HOLD_BATCHES * self.sched.policy.largest_cap() - len(self.entries)
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
        if isinstance(self.sched.peek(self.now(), draining=draining), Batch):
            self._refresh_cancel_marks()  # a batch is due: cancel marks and the clock, fresh from Redis, decide
        decided = self.sched.next(self.now(), draining=draining)
        out = Outcome()
        self._reply(out, answers_of_dropped(decided.dropped))
        if isinstance(decided, Wait):
            deliver(self.redis, self._deliver, self.keys, out)
            if not draining:
                self._read(None if decided.until is None else max(0.001, decided.until - self.now()))
            return
        self._run(decided, out)
        deliver(self.redis, self._deliver, self.keys, out)
        self.batches_done += 1
        if self.on_batch is not None:
            self.on_batch()

    def publish_gauges(self) -> None:
        """This worker's own items (held: ``lag``; in its running batch: ``pending``), at scrape time."""
        now, held, running = self.now(), list(self.entries), self._running
        for op in OPS:
            metrics.QUEUE_ENTRIES.labels(op, "lag").set(sum(1 for e in held if e.op == op))
            metrics.QUEUE_ENTRIES.labels(op, "pending").set(running[1] if running[0] == op else 0)
            metrics.QUEUE_OLDEST_AGE.labels(op).set(self.sched.oldest_age_s(now, op))

    def _refresh_cancel_marks(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for e in self.entries:
            pipe.exists(self.keys.cancel(e.ref.request_id))
        res = pipe.execute()
        self._sync_clock(*res[0])
        for e, cancelled in zip(self.entries, res[1:], strict=True):
            e.cancelled = bool(cancelled)

    def _run(self, batch: Batch[WorkItem], out: Outcome) -> None:
        self._running = (batch.op, len(batch.entries))
        try:
            done = self.sched.run(self.runtime, batch)
        finally:
            self._running = ("", 0)
        if not done.ok:
            log.error("%s batch of %d failed: %r", batch.op, len(batch.entries), done.error)
        self._reply(out, answers_of_batch(batch, done))

    @staticmethod
    def _reply(out: Outcome, answers: list[Answer[WorkItem]]) -> None:
        for a in answers:
            out.reply(a.entry.ref, a.code, a.message, a.result)
            if a.code != "ok" or log.isEnabledFor(logging.DEBUG):
                rid = a.entry.ref.http_request_id or a.entry.ref.request_id  # the client's X-Request-ID when sent
                log.log(logging.INFO if a.code != "ok" else logging.DEBUG, "request %s: %s %s", rid, a.code,
                        a.message, extra={"request_id": rid})

    def _maybe_autoclaim(self) -> None:
        """XAUTOCLAIM idle entries of dead or stuck consumers, one batch per call."""
        now = time.monotonic()
        if now < self._next_claim:
            return
        claimed, more = [], False
        self._touch_held()
        held = {(e.ref.stream, e.ref.entry_id) for e in self.entries}  # ids repeat across the op streams
        for op in OPS:
            stream = self.keys.work(op)
            resp = self.redis.xautoclaim(stream, GROUP, self.opts.name, self.opts.claim_idle_ms,
                                         start_id=self._claim_cursor.get(stream, "0-0"),
                                         count=self.sched.policy.largest_cap())
            self._claim_cursor[stream] = nxt = text(resp[0])
            more = more or nxt != "0-0"
            claimed += [e for e in flatten([(stream, resp[1])], 2) if e.fields is not None
                        and (e.stream, e.entry_id) not in held]
        if claimed:
            log.info("reclaimed %d idle entries", len(claimed))
            for e in claimed:
                metrics.REDELIVERIES.labels(self.keys.op_of_stream(e.stream)).inc()
            self._hold(with_deliveries(self.redis, self.opts.name, claimed))
        if not more:
            self._next_claim = now + max(0.05, self.opts.claim_idle_ms / 2000)

    def _touch_held(self) -> None:
        """Reset the idle time of the entries this consumer holds (``XCLAIM <self> 0 ... JUSTID``: no delivery is
        counted), so that XAUTOCLAIM, ours or a peer's, never takes an entry from a consumer that is turning."""
        by_stream: dict[str, list[Any]] = {}
        for e in self.entries:
            by_stream.setdefault(e.ref.stream, []).append(e.ref.entry_id)
        if not by_stream:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, GROUP, self.opts.name, 0, ids, justid=True)
        pipe.execute()
