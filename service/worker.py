"""``evotok worker``: the inference side of the Redis Streams batcher (design: serving-reference (e)).

One process owns one Runtime and loops:

1. (after start or a reconnect) create the consumer groups (``XGROUP CREATE ... 0 MKSTREAM``) and finish
   this consumer's own pending entries (``XREADGROUP ... 0``; the recovery read of a restarted worker);
2. every ``worker_claim_idle_ms / 2``: ``XAUTOCLAIM`` entries idle longer than ``worker_claim_idle_ms``
   (a dead or stuck peer's batch) and process them;
3. form a batch with ``BatchPolicy``: a blocking ``XREADGROUP COUNT max_batch_size`` over the op streams,
   then follow-up reads until the batch is full or ``max_queue_delay`` after its first item;
4. before inference drop entries past their deadline or that cannot finish before it (one batch time
   left; reply ``deadline_exceeded``), with a cancel mark
   (reply ``cancelled``), delivered more than ``worker_max_deliveries`` times (dead-letter + reply
   ``backend_error``) or malformed (dead-letter);
5. run the rest grouped by (op, dtype, shape) in chunks of ``max_batch_size``; an exception fails only
   that chunk (reply ``backend_error``);
6. deliver replies and XACK + XDEL in one Lua script per stream (``DELIVER_LUA``): a crash before it
   leaves the entries pending for reclaim, a duplicate after it yields no second reply.

Before reporting ready the worker warms the Runtime on the batch sizes it will see and times one full batch
per op; those times seed the item/batch time estimates that admission predicts waits with. Every heartbeat
(a thread, plus one at once after each (re)connect) publishes the estimates and then writes this worker into
``P:workers`` in the same pipeline, so admission never counts a live worker without a timing estimate
(a Redis restarted without persistence has lost both). The thread also refreshes the queue gauges. Redis errors never end the process: the loop backs off and reconnects. SIGTERM stops
reading, finishes the batch in hand, removes the heartbeat and exits 0.

Test-only switch: ``--fake-runtime`` (or ``EVOTOK_TEST_FAKE_RUNTIME=1``) serves ``FakeRuntime`` with a
fixed ``--fake-delay-ms`` (``EVOTOK_TEST_FAKE_DELAY_MS``) per runtime call, which sets a cheap capacity.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from evotok.export.runtime import Runtime
from evotok.service import queue_metrics as qm
from evotok.service.batcher import OPS, BatchPolicy, Op
from evotok.service.redis_protocol import (
    DELIVER_FIELDS,
    DELIVER_LUA,
    DLQ_MAXLEN,
    GROUP,
    HEARTBEAT_LUA,
    REPLY_MAXLEN,
    REPLY_TTL_MS,
    Keys,
    ProtocolError,
    WorkItem,
    connection_kwargs,
    liveness_window_ms,
    pack_array,
    parse_work_entry,
    redis_url,
)
from evotok.service.settings import Settings

log = logging.getLogger(__name__)

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
RESULT_DTYPES: dict[Op, type[np.generic]] = {
    "encode": np.uint16,
    "decode": np.uint8,
    "embed_image": np.float32,
    "embed_codes": np.float32,
}


@dataclass(frozen=True)
class RawEntry:
    """An entry as read from a stream, before parsing."""

    stream: str
    entry_id: str
    fields: dict[bytes, bytes] | None  # None: deleted meanwhile
    deliveries: int


@dataclass
class _Outcome:
    """Replies of one processed batch, grouped by work stream (one DELIVER_LUA call each)."""

    by_stream: dict[str, list[str | bytes | int]] = field(default_factory=lambda: defaultdict(list))
    orphans: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # ack only, no reply

    def reply(self, item: WorkItem, status: str, message: str = "", result: npt.NDArray[Any] | None = None) -> None:
        if result is not None:
            arr = pack_array(result)
            dtype, shape, data = arr.dtype, arr.shape, arr.data
        else:
            dtype, shape, data = "", "", b""
        self.by_stream[item.stream] += [
            item.entry_id, item.nbytes, item.reply_key, item.request_id, status, message, dtype, shape, data,
        ]


@dataclass(frozen=True)
class _ChunkRun:
    """One successful runtime call: its op, item count and runtime seconds."""

    op: Op
    n: int
    runtime_s: float


@dataclass(frozen=True)
class BatchTiming:
    """Measured wall time of one op's batch (ms) and per item of that batch (ms)."""

    batch_ms: float
    item_ms: float


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    policy: BatchPolicy
    heartbeat_s: float
    claim_idle_ms: int
    max_deliveries: int
    liveness_heartbeats: float = 5.0  # heartbeat periods a worker counts as live (settings)
    block_ms: int = 50


class Worker:
    """The batch loop; ``run()`` blocks until ``stop()``."""

    def __init__(self, settings: Settings, runtime: Runtime, options: WorkerOptions,
                 timing: dict[Op, BatchTiming] | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.opts = options
        self.keys = Keys(settings.redis_prefix)
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        self.redis = redis.Redis.from_url(
            redis_url(settings.redis_url, settings.redis_tls),
            retry=Retry(NoBackoff(), 0),
            **connection_kwargs(password, socket_timeout_s=max(5.0, options.block_ms / 1000 + 3.0),
                                connect_timeout_s=2.0),
        )
        self._deliver = self.redis.register_script(DELIVER_LUA)
        self._heartbeat = self.redis.register_script(HEARTBEAT_LUA)
        self._stop = threading.Event()
        self._hb_stop = threading.Event()
        self._need_setup = True
        self._redis_ok = False
        self._last_loop = time.monotonic()
        self._next_claim = 0.0
        self._claim_cursor: dict[str, str] = {}
        # EWMA of a batch's wall time per item / per batch, from the batch in hand to its replies delivered
        # (runtime plus checks and delivery, which on a busy host are not small): admission predicts waits.
        # Seeded with the warm-up measurement, so the first requests are admitted against a real estimate.
        self._item_ms: dict[Op, float] = {op: t.item_ms for op, t in (timing or {}).items()}
        self._batch_ms: dict[Op, float] = {op: t.batch_ms for op, t in (timing or {}).items()}
        self._window_ms = liveness_window_ms(options.heartbeat_s, options.liveness_heartbeats)
        self._down_since: float | None = None  # monotonic time the current Redis outage was first seen
        self.batches_done = 0

    # --- lifecycle ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop after the batch in hand (SIGTERM)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        return self._redis_ok and not self._stop.is_set()

    @property
    def healthy(self) -> bool:
        """The loop turns (a stuck runtime call makes this false after a minute)."""
        return time.monotonic() - self._last_loop < 60.0

    def run(self) -> int:
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        backoff = 0.1
        while not self._stop.is_set():
            self._last_loop = time.monotonic()
            try:
                if self._need_setup:
                    self._setup()
                self._set_redis_ok(True)
                backoff = 0.1
                self._maybe_autoclaim()
                entries = self._read_batch()
                if entries:
                    self._process(entries)
            except REDIS_DOWN as exc:
                if self._redis_ok:
                    log.warning("redis unavailable (%s); reconnecting", exc)
                    qm.REDIS_RECONNECTS.inc()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._set_redis_ok(False)
                self._need_setup = True
                self._stop.wait(backoff)
                backoff = min(0.25, backoff * 2)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without persistence: groups are gone
                    log.warning("consumer group missing (%s); recreating", exc)
                    self._need_setup = True
                else:
                    log.exception("redis command failed")
                    self._stop.wait(backoff)
        self._shutdown(hb)
        return 0

    def _set_redis_ok(self, ok: bool) -> None:
        self._redis_ok = ok
        qm.WORKER_READY.set(1 if ok else 0)

    def _setup(self) -> None:
        for op in OPS:
            try:
                self.redis.xgroup_create(self.keys.work(op), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._claim_cursor = {}
        # Count as live at once (with the timing estimates), not up to a heartbeat period later.
        t0 = time.monotonic()
        self._beat()
        if self._down_since is not None:
            log.warning("redis back: reconnected %.2f s after the outage was seen; heartbeat landed in %.3f s",
                        t0 - self._down_since, time.monotonic() - t0)
            self._down_since = None
        self._need_setup = False
        self._set_redis_ok(True)
        # Recovery read: finish what this consumer name had in hand before a restart.
        while not self._stop.is_set():
            streams: dict[Any, Any] = {self.keys.work(op): "0" for op in OPS}
            resp = self.redis.xreadgroup(GROUP, self.opts.name, streams, count=self.opts.policy.max_batch_size)
            entries = [e for e in self._flatten(resp) if e.fields is not None]
            if not entries:
                break
            log.info("recovering %d own pending entries", len(entries))
            self._process(self._with_deliveries(entries))

    def _shutdown(self, hb: threading.Thread) -> None:
        self._hb_stop.set()
        hb.join(timeout=5.0)
        try:
            self.redis.zrem(self.keys.workers, self.opts.name)
            for op in OPS:
                info = self.redis.xpending_range(self.keys.work(op), GROUP, "-", "+", 1, consumername=self.opts.name)
                if not info:
                    self.redis.xgroup_delconsumer(self.keys.work(op), GROUP, self.opts.name)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not deregister on shutdown: %s", exc)
        qm.WORKER_READY.set(0)
        self.redis.close()
        log.info("worker %s stopped after %d batches", self.opts.name, self.batches_done)

    # --- reading -----------------------------------------------------------------------------------------
    @staticmethod
    def _flatten(resp: Any, deliveries: int = 1) -> list[RawEntry]:
        out: list[RawEntry] = []
        for stream, entries in resp or []:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out.append(RawEntry(name, eid, fields, deliveries))
        return out

    def _with_deliveries(self, entries: list[RawEntry]) -> list[RawEntry]:
        """Attach the delivery counts the PEL keeps (for reclaimed / recovered entries)."""
        by_stream: dict[str, list[RawEntry]] = defaultdict(list)
        for e in entries:
            by_stream[e.stream].append(e)
        out: list[RawEntry] = []
        for stream, group in by_stream.items():
            ids = sorted((e.entry_id for e in group), key=lambda s: tuple(int(p) for p in s.split("-")))
            rows = self.redis.xpending_range(stream, GROUP, ids[0], ids[-1], len(ids) + 16,
                                             consumername=self.opts.name)
            counts = {
                (r["message_id"].decode() if isinstance(r["message_id"], bytes) else r["message_id"]):
                int(r["times_delivered"]) for r in rows
            }
            out += [RawEntry(e.stream, e.entry_id, e.fields, counts.get(e.entry_id, e.deliveries)) for e in group]
        return out

    def _read_batch(self) -> list[RawEntry]:
        """Block up to ``block_ms`` for a first entry, then fill up to the policy's size or delay."""
        policy = self.opts.policy
        streams: dict[Any, Any] = {self.keys.work(op): ">" for op in OPS}
        resp = self.redis.xreadgroup(GROUP, self.opts.name, streams, count=policy.max_batch_size,
                                     block=self.opts.block_ms)
        entries = self._flatten(resp)
        if not entries:
            return []
        t0 = time.monotonic()
        reason = "full"
        while len(entries) < policy.max_batch_size and not self._stop.is_set():
            left = policy.max_queue_delay_s - (time.monotonic() - t0)
            if left <= 0:
                reason = "delay"
                break
            resp = self.redis.xreadgroup(GROUP, self.opts.name, streams,
                                         count=policy.max_batch_size - len(entries),
                                         block=max(1, round(left * 1000)))
            more = self._flatten(resp)
            if not more:
                reason = "delay"
                break
            entries += more
        if self._stop.is_set() and len(entries) < policy.max_batch_size:
            reason = "drain"
        formed = time.monotonic() - t0
        for op in {self.keys.op_of_stream(e.stream) for e in entries}:
            qm.BATCH_FORMATION.labels(op).observe(formed)
            qm.BATCH_CLOSE.labels(op, reason).inc()
        return entries

    def _maybe_autoclaim(self) -> None:
        """XAUTOCLAIM idle entries of dead or stuck consumers, one batch per call."""
        now = time.monotonic()
        if now < self._next_claim:
            return
        claimed: list[RawEntry] = []
        more = False
        for op in OPS:
            stream = self.keys.work(op)
            cursor = self._claim_cursor.get(stream, "0-0")
            resp = self.redis.xautoclaim(stream, GROUP, self.opts.name, self.opts.claim_idle_ms,
                                         start_id=cursor, count=self.opts.policy.max_batch_size)
            nxt = resp[0].decode() if isinstance(resp[0], bytes) else str(resp[0])
            self._claim_cursor[stream] = nxt
            more = more or nxt != "0-0"
            got = [RawEntry(stream, (i.decode() if isinstance(i, bytes) else str(i)), f, 2) for i, f in resp[1]]
            claimed += [e for e in got if e.fields is not None]
        if claimed:
            log.info("reclaimed %d idle entries", len(claimed))
            for e in claimed:
                qm.REDELIVERIES.labels(self.keys.op_of_stream(e.stream)).inc()
            self._process(self._with_deliveries(claimed))
        if not more:
            self._next_claim = now + max(0.05, self.opts.claim_idle_ms / 2000)

    # --- processing ----------------------------------------------------------------------------------------
    def _process(self, entries: list[RawEntry]) -> None:
        t0 = time.perf_counter()
        out = _Outcome()
        items: list[WorkItem] = []
        for e in entries:
            if e.fields is None:
                out.orphans[e.stream].append(e.entry_id)
                continue
            try:
                item = parse_work_entry(self.keys, e.stream, e.entry_id, e.fields, e.deliveries)
            except ProtocolError as exc:
                self._dead_letter(e, "malformed", str(exc))
                rid, reply = e.fields.get(b"rid"), e.fields.get(b"reply")
                if rid and reply:
                    out.by_stream[e.stream] += [e.entry_id, len(e.fields.get(b"data", b"")), reply, rid,
                                                "invalid_input", f"malformed queue entry: {exc}", "", "", b""]
                else:
                    out.orphans[e.stream].append(e.entry_id)
                continue
            if item.deliveries > self.opts.max_deliveries:
                self._dead_letter(e, "poison", f"delivered {item.deliveries} times")
                out.reply(item, "backend_error",
                          f"request failed: its worker died {item.deliveries - 1} times while running it")
                continue
            items.append(item)
        if items:
            items = self._drop_expired_and_cancelled(items, out)
        groups: dict[tuple[Op, str, tuple[int, ...]], list[WorkItem]] = defaultdict(list)
        for item in items:
            groups[(item.op, item.payload.dtype.str, item.payload.shape)].append(item)
        size = self.opts.policy.max_batch_size
        runs: list[_ChunkRun] = []
        for (op, _, shape), members in groups.items():
            for i in range(0, len(members), size):
                run = self._run_chunk(op, shape, members[i : i + size], out)
                if run is not None:
                    runs.append(run)
        self._deliver_all(out)
        if runs:
            self._update_timing(runs, time.perf_counter() - t0)
            self._publish_stats()  # admission predicts with the newest times (not only on heartbeats)

    def _update_timing(self, runs: list[_ChunkRun], total_s: float) -> None:
        """EWMA per op of the wall time per batch / per item; the time outside the runtime calls (checks,
        delivery) is shared equally among this call's chunks."""
        overhead = max(0.0, total_s - sum(r.runtime_s for r in runs)) / len(runs)
        for r in runs:
            batch_ms = 1000 * (r.runtime_s + overhead)
            prev = self._item_ms.get(r.op)
            self._item_ms[r.op] = batch_ms / r.n if prev is None else 0.8 * prev + 0.2 * batch_ms / r.n
            prev = self._batch_ms.get(r.op)
            self._batch_ms[r.op] = batch_ms if prev is None else 0.8 * prev + 0.2 * batch_ms

    def _drop_expired_and_cancelled(self, items: list[WorkItem], out: _Outcome) -> list[WorkItem]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for item in items:
            pipe.exists(self.keys.cancel(item.request_id))
        res = pipe.execute()
        sec, usec = res[0]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        keep: list[WorkItem] = []
        for item, cancelled in zip(items, res[1:], strict=True):
            qm.QUEUE_WAIT.labels(item.op).observe(max(0.0, (now_ms - item.enq_ms) / 1000))
            if cancelled:
                qm.ITEMS_SKIPPED.labels(item.op, "cancelled").inc()
                out.reply(item, "cancelled", "client went away before inference")
            elif now_ms + self._batch_ms.get(item.op, 0.0) >= item.deadline_ms:  # cannot finish in time
                qm.ITEMS_SKIPPED.labels(item.op, "deadline_exceeded").inc()
                out.reply(item, "deadline_exceeded", "deadline passed (or would pass during inference) while queued")
            else:
                keep.append(item)
        return keep

    def _run_chunk(self, op: Op, shape: tuple[int, ...], members: list[WorkItem], out: _Outcome) -> _ChunkRun | None:
        """Run one chunk and queue its replies; the timing of a successful run (None if it failed)."""
        bucket = qm.bucket_of(shape)
        batch = np.stack([m.payload for m in members])
        t0 = time.perf_counter()
        try:
            result = run_op(self.runtime, op, batch)
            if result.shape[0] != len(members):
                raise RuntimeError(f"runtime returned {result.shape[0]} results for {len(members)} items")
        except Exception as exc:
            log.exception("%s batch of %d failed", op, len(members))
            qm.BATCHES.labels(op, bucket, "error").inc()
            for m in members:
                out.reply(m, "backend_error", f"inference failed: {type(exc).__name__}")
            return None
        dt = time.perf_counter() - t0
        n = len(members)
        qm.BATCHES.labels(op, bucket, "ok").inc()
        qm.BATCH_ITEMS.labels(op, bucket).inc(n)
        qm.BATCH_SIZE.labels(op, bucket).observe(n)
        qm.BATCH_FILL.labels(op, bucket).observe(n / self.opts.policy.max_batch_size)
        qm.STAGE_DURATION.labels(op, "runtime", bucket).observe(dt)
        qm.LAST_BATCH.set(time.time())
        self.batches_done += 1
        for i, m in enumerate(members):
            out.reply(m, "ok", "", result[i])
        return _ChunkRun(op, n, dt)

    def _deliver_all(self, out: _Outcome) -> None:
        if not out.by_stream and not out.orphans:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, args in out.by_stream.items():
            assert len(args) % DELIVER_FIELDS == 0, "deliver arguments misaligned; this is a bug"
            op = self.keys.op_of_stream(stream)
            self._deliver(keys=[stream, self.keys.bytes(op)], args=[GROUP, REPLY_MAXLEN, REPLY_TTL_MS, *args],
                          client=pipe)
        for stream, ids in out.orphans.items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.execute()

    def _dead_letter(self, e: RawEntry, reason: str, message: str) -> None:
        op = self.keys.op_of_stream(e.stream)
        qm.DEAD_LETTERS.labels(op, reason).inc()
        f = e.fields or {}
        log.error("dead-lettering %s %s: %s", e.stream, e.entry_id, message)
        self.redis.xadd(self.keys.dlq, {
            "stream": e.stream, "entry_id": e.entry_id, "reason": reason, "message": message,
            "rid": f.get(b"rid", b""), "dtype": f.get(b"dtype", b""), "shape": f.get(b"shape", b""),
            "deliveries": e.deliveries, "worker": self.opts.name,
        }, maxlen=DLQ_MAXLEN, approximate=True)

    # --- heartbeat and queue gauges ----------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """A heartbeat every ``heartbeat_s`` (fixed cadence, the time a beat takes included); a failed one is
        retried after 0.2 s, not a whole period later, so a stale pooled connection after an outage costs
        little of the liveness window."""
        period = self.opts.heartbeat_s
        while not self._hb_stop.is_set():
            t0 = time.monotonic()
            wait = period
            if self._redis_ok and not self._stop.is_set():
                try:
                    self._beat()
                    self._refresh_queue_gauges()
                except (redis.RedisError, OSError) as exc:
                    log.debug("heartbeat failed: %s", exc)
                    wait = min(period, 0.2)
            self._hb_stop.wait(max(0.0, wait - (time.monotonic() - t0)))

    def _beat(self) -> None:
        """Publish the timing estimates, then the heartbeat, in one pipeline (in this order: admission must
        not see a live worker without an estimate). Raises on a Redis error."""
        info: list[Any] = ["pid", os.getpid(), "host", socket.gethostname(), "batches", self.batches_done]
        pipe = self.redis.pipeline(transaction=False)
        self._stats_into(pipe)
        self._heartbeat(keys=[self.keys.workers, self.keys.worker_info(self.opts.name)],
                        args=[self.opts.name, self._window_ms, 100 * self._window_ms, *info], client=pipe)
        try:
            res = pipe.execute()
        except (redis.RedisError, OSError):
            qm.HEARTBEATS.labels("error").inc()
            raise
        qm.HEARTBEATS.labels("ok").inc()
        qm.LIVE_WORKERS.set(int(res[-1]))

    def _publish_stats(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._stats_into(pipe)
        pipe.execute()

    def _stats_into(self, pipe: Any) -> None:
        for op, ms in list(self._item_ms.items()):
            pipe.hset(self.keys.stats(op), mapping={"item_ms": f"{ms:.3f}",
                                                    "batch_ms": f"{self._batch_ms.get(op, 0.0):.3f}"})

    def _refresh_queue_gauges(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for op in OPS:
            pipe.xinfo_groups(self.keys.work(op))
            pipe.xrange(self.keys.work(op), count=1)
            pipe.get(self.keys.bytes(op))
        pipe.time()
        res = pipe.execute(raise_on_error=False)
        sec, usec = res[-1]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        for k, op in enumerate(OPS):
            groups, first, used = res[3 * k : 3 * k + 3]
            if isinstance(groups, list):
                for g in groups:
                    name = g.get("name")
                    if name in (GROUP, GROUP.encode()):
                        qm.QUEUE_ENTRIES.labels(op, "lag").set(int(g.get("lag") or 0))
                        qm.QUEUE_ENTRIES.labels(op, "pending").set(int(g.get("pending") or 0))
            age = 0.0
            if isinstance(first, list) and first:
                eid = first[0][0]
                eid = eid.decode() if isinstance(eid, bytes) else str(eid)
                age = max(0.0, (now_ms - int(eid.split("-")[0])) / 1000)
            qm.QUEUE_OLDEST_AGE.labels(op).set(age)
            qm.QUEUE_BYTES.labels(op).set(int(used) if isinstance(used, (bytes, str, int)) and used else 0)


def run_op(runtime: Runtime, op: Op, batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """One runtime call; the result is cast to the op's wire dtype (see service/batcher.py)."""
    if op == "encode":
        out: npt.NDArray[Any] = runtime.encode(batch)
    elif op == "decode":
        out = runtime.decode(batch)
    elif op == "embed_image":
        out = runtime.embed_images(batch)
    else:
        out = runtime.embed_codes(batch)
    return np.ascontiguousarray(out, dtype=RESULT_DTYPES[op])


# ---------------------------------------------------------------------------------------------------------
# health / metrics endpoint

def serve_metrics(worker: Worker, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """``/metrics`` (Prometheus), ``/healthz`` (loop alive), ``/readyz`` (runtime loaded, Redis reachable)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(qm.REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = worker.healthy
                self._send(200 if ok else 503, b"ok\n" if ok else b"stuck\n", "text/plain")
            elif self.path == "/readyz":
                ok = worker.ready
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def build_runtime(settings: Settings, fake: bool, fake_delay_ms: float) -> Runtime:
    """The worker's Runtime: the configured backend over ``settings.weights``, or FakeRuntime for tests."""
    if fake:
        from evotok.export.fake import FakeRuntime

        return FakeRuntime(delay_s=fake_delay_ms / 1000)
    from evotok.export.runtime import load_runtime

    options: dict[str, Any] = {}
    if settings.backend == "torch":
        options = {"device": settings.device, "precision": settings.precision}
    elif settings.backend == "onnxruntime":
        options = {"providers": ("cuda",) if settings.device == "cuda" else ("cpu",)}
        if settings.threads:
            options["threads"] = settings.threads
    return load_runtime(settings.weights, settings.backend, **options)


def warmup_sizes(settings: Settings) -> list[int]:
    """The batch sizes this worker will see: the configured warm-up sizes (capped at ``max_batch_size``, it
    never forms a larger batch) and a full batch."""
    cap = settings.max_batch_size
    return sorted({min(b, cap) for b in settings.warmup_batch_sizes} | {cap})


def warmup_inputs(runtime: Runtime, op: Op, batch: int) -> npt.NDArray[Any]:
    """A zero batch of ``op``'s wire input: images (B, S, S, 3) uint8 or codes (B, g, g, D) uint16."""
    info = runtime.info
    if op in ("encode", "embed_image"):
        return np.zeros((batch, info.image_size, info.image_size, 3), np.uint8)
    depth = info.pixel_depth if op == "decode" else info.num_depths
    return np.zeros((batch, info.grid, info.grid, depth), np.uint16)


def measure_batch_times(runtime: Runtime, batch: int) -> dict[Op, BatchTiming]:
    """Time one (warm) runtime call of ``batch`` items per op: the first estimate admission predicts with,
    before any real batch has run (a full batch: the size a backlog is served at)."""
    out: dict[Op, BatchTiming] = {}
    for op in OPS:
        x = warmup_inputs(runtime, op, batch)
        t0 = time.perf_counter()
        run_op(runtime, op, x)
        ms = 1000 * (time.perf_counter() - t0)
        out[op] = BatchTiming(batch_ms=ms, item_ms=ms / batch)
    return out


def prepare_runtime(runtime: Runtime, settings: Settings) -> dict[Op, BatchTiming]:
    """Warm the batch sizes this worker will see, run the golden self-test, and time a full batch per op,
    all before the worker reports ready; returns the timings (the worker's first admission estimates)."""
    t0 = time.perf_counter()
    runtime.warmup(warmup_sizes(settings))
    golden = settings.weights / "golden.npz"
    if runtime.info.backend != "fake" and golden.exists():
        result = runtime.self_test(golden, settings.self_test_threshold)
        log.info("self-test: agreement %.4f (threshold %.4f)", result.agreement, result.threshold)
        if not result.passed:
            raise RuntimeError(f"golden self-test failed: agreement {result.agreement:.4f} < {result.threshold}")
    timing = measure_batch_times(runtime, settings.max_batch_size)
    qm.WARMUP.set(time.perf_counter() - t0)
    log.info("warm-up batch times (batch of %d): %s", settings.max_batch_size,
             ", ".join(f"{op} {t.batch_ms:.1f} ms" for op, t in timing.items()))
    return timing


def default_worker_name() -> str:
    """Stable across restarts when ``EVOTOK_WORKER_NAME`` is set (compose service / StatefulSet ordinal)."""
    return os.environ.get("EVOTOK_WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def main(argv: list[str]) -> int:
    """``evotok worker [--name N] [--metrics-port P]``; settings come from ``EVOTOK_*`` variables."""
    import argparse
    import signal

    from evotok.service.settings import get_settings

    env_fake = os.environ.get("EVOTOK_TEST_FAKE_RUNTIME", "") in {"1", "true", "yes"}
    parser = argparse.ArgumentParser(prog="evotok worker", description="Redis Streams inference worker")
    parser.add_argument("--name", default=default_worker_name(), help="consumer name (stable per slot)")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: EVOTOK_WORKER_METRICS_PORT")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--fake-runtime", action="store_true", default=env_fake, help=argparse.SUPPRESS)
    parser.add_argument("--fake-delay-ms", type=float,
                        default=float(os.environ.get("EVOTOK_TEST_FAKE_DELAY_MS", "0")), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    runtime = build_runtime(settings, args.fake_runtime, args.fake_delay_ms)
    qm.ENGINE_LOAD.set(time.perf_counter() - t0)
    timing = prepare_runtime(runtime, settings)
    options = WorkerOptions(
        name=args.name,
        policy=BatchPolicy(settings.max_batch_size, settings.max_queue_delay_ms / 1000),
        heartbeat_s=settings.worker_heartbeat_s,
        claim_idle_ms=settings.worker_claim_idle_ms,
        max_deliveries=settings.worker_max_deliveries,
        liveness_heartbeats=settings.worker_liveness_heartbeats,
    )
    worker = Worker(settings, runtime, options, timing)
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    server = serve_metrics(worker, port, args.metrics_host)
    log.info("worker %s (%s) on %s, metrics on port %d", args.name, runtime.info.name,
             redis_url(settings.redis_url, settings.redis_tls).split("@")[-1], server.server_address[1])

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return worker.run()
    finally:
        server.shutdown()
        runtime.close()


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
