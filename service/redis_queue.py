"""``RedisBatcher``: the API-replica side of the Redis Streams batcher (``EVOTOK_QUEUE=redis``).

Per request (``submit``):

1. one atomic Lua call (``ADMIT_LUA``, the admission rule of ``admission.py``) checks the per-op entry and
   byte caps and the predicted wait against the deadline (``admission.refusal`` -> 429 + Retry-After), then
   XADDs the entry (never trimmed) and adds its bytes to the counter. With no live worker the entry is admitted
   (within the caps and its deadline): the lag it builds is what starts a worker from zero (KEDA);
2. the handler awaits an in-memory future until its deadline (``DeadlineExceeded`` -> 504); on timeout
   or client cancellation a cancel mark (``P:cancel:{rid}``) tells the workers to skip the entry. A client that
   goes away while the admission call itself is in flight leaves the same mark. Replies carry a code of the
   error table and become ``errors.error_of_code(code, message)``.

One long-lived reader task per replica XREADs this replica's reply stream over its own connection and
resolves futures by request id; replies for unknown or already-resolved ids (duplicates after a reclaim,
answers that came after the deadline) are dropped and counted. A monitor task polls the live-worker
count and queue depth for ``stats()`` / readiness.

Redis outages: an admission that cannot connect answers ``NotReady`` (503) at once (short connect timeout,
no entry was written). An admission whose connection stalls (Redis paused or stopped) waits until the
request's deadline: the command may still run when Redis resumes, so on giving up the request marks its entry
cancelled (retried until Redis answers) and answers 504. When the reply reader loses its connection it
reconnects and re-reads its reply stream; waiting requests keep waiting until their own deadlines, because
their entries are still in the stream and the workers still answer them. Only when Redis came back as a
different server (its ``run_id`` changed: a restart without persistence lost the entries) are the waiting
requests failed at once with ``NotReady``. Nothing exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from evotok.export.types import ModelInfo
from evotok.service import admission, tracing
from evotok.service.batcher import OPS, Batcher, BatcherStats, Op
from evotok.service.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    Overloaded,
    error_of_code,
)
from evotok.service.redis_protocol import (
    ADMIT_LUA,
    GROUP,
    REQUEST_ID_FIELD,
    Keys,
    ProtocolError,
    Reply,
    connection_kwargs,
    liveness_window_ms,
    pack_array,
    parse_reply,
    redis_url,
)
from evotok.service.request_context import current_request_id
from evotok.service.settings import Settings

log = logging.getLogger(__name__)

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)
READ_BLOCK_MS = 1000
READ_COUNT = 512
COMMAND_TIMEOUT_S = 3.0  # socket timeout of admission / monitor commands (a dead Redis fails faster: refused)


class RedisBatcher(Batcher):
    def __init__(self, settings: Settings, info: ModelInfo) -> None:
        self.settings = settings
        self.info = info
        self.keys = Keys(settings.redis_prefix)
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reply_key = self.keys.reply(self.replica_id)
        self._window_ms = liveness_window_ms(settings.worker_heartbeat_s, settings.worker_liveness_heartbeats)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._redis: aredis.Redis | None = None
        self._reader_redis: aredis.Redis | None = None
        self._admit_redis: aredis.Redis | None = None
        self._admit: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._draining = False
        self._redis_ok = False
        self._queued = 0
        self._oldest_age_s = 0.0
        self._caps: dict[str, Any] | None = None  # live workers' batch caps (monitor loop), for /info
        self.dropped_replies = 0  # duplicates / late replies ignored
        self.lost_on_outage = 0  # waiting requests failed because Redis restarted and lost their entries
        self.reply_reconnects = 0  # reply-reader reconnections (waiting requests kept waiting)
        self._run_id: str | None = None  # the Redis server instance the entries were written to
        self._groups_ok = False  # work streams and the workers group exist (created at start / after an outage)

    # --- lifecycle ------------------------------------------------------------------------------------
    def _client(self, socket_timeout_s: float) -> aredis.Redis:
        s = self.settings
        password = s.redis_password.get_secret_value() if s.redis_password else None
        return aredis.Redis.from_url(
            redis_url(s.redis_url, s.redis_tls),
            retry=Retry(NoBackoff(), 0),
            **connection_kwargs(password, socket_timeout_s=socket_timeout_s, connect_timeout_s=0.5),
        )

    async def start(self) -> None:
        if self._started:
            return
        self._redis = self._client(socket_timeout_s=COMMAND_TIMEOUT_S)
        self._reader_redis = self._client(socket_timeout_s=READ_BLOCK_MS / 1000 + 3.0)
        # admissions wait up to their request deadline (a stalled Redis may still run the command later)
        self._admit_redis = self._client(socket_timeout_s=self.settings.request_timeout_s + 1.0)
        self._admit = self._admit_redis.register_script(ADMIT_LUA)
        self._started = True
        self._tasks = [
            asyncio.create_task(self._reader_loop(), name="redis-reply-reader"),
            asyncio.create_task(self._monitor_loop(), name="redis-queue-monitor"),
        ]
        log.info("redis batcher started: replica %s, reply stream %s", self.replica_id, self.reply_key)

    async def drain(self, timeout_s: float = 30.0) -> None:
        self._draining = True
        end = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < end:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)  # bounded: a wedged socket must not block shutdown
        self._tasks = []
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NotReady("server is shutting down"))
        for client in (self._redis, self._reader_redis, self._admit_redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._started = False

    def batch_caps(self) -> dict[str, Any] | None:
        """Per op: ``cap``, the smallest effective cap among the live workers (the batch size the deployment can
        be relied on to form), and ``workers``, each live worker's own cap (auto caps are measured per worker
        and may differ). None until a live worker has published its caps."""
        return self._caps

    async def _read_caps(self, now_ms: int) -> None:
        assert self._redis is not None
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in await self._redis.zrangebyscore(self.keys.workers, now_ms - self._window_ms, "+inf")]
        fields = [f"cap:{op}" for op in OPS]
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.worker_info(name), fields)
        per_op: dict[str, dict[str, int]] = {}
        for name, values in zip(names, await pipe.execute(), strict=True):
            for op, value in zip(OPS, values, strict=True):
                if value is not None:
                    per_op.setdefault(op, {})[name] = int(value)
        self._caps = {op: {"cap": min(by.values()), "workers": dict(sorted(by.items()))}
                      for op, by in per_op.items()} or None

    def stats(self) -> BatcherStats:
        return BatcherStats(
            queued=self._queued,
            in_flight=len(self._pending),
            oldest_age_s=self._oldest_age_s,
            ready=self._started and not self._draining and self._redis_ok,  # workers may scale from zero
            draining=self._draining,
        )

    # --- submit ---------------------------------------------------------------------------------------
    async def submit(self, op: Op, payload: npt.NDArray[Any], deadline: float) -> npt.NDArray[Any]:
        if not self._started or self._draining:
            raise NotReady("server is not accepting work (starting or draining)")
        remaining_ms = math.floor((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise DeadlineExceeded("deadline passed before the request was queued")
        try:
            wire = pack_array(payload)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from exc
        rid = uuid.uuid4().hex
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._admit_entry(op, rid, wire.dtype, wire.shape, wire.data, remaining_ms)
            try:
                with tracing.span("queue_wait", op=op, via="redis"):  # queueing and the worker's inference
                    reply = await asyncio.wait_for(fut, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self._mark_cancelled(rid, 1000)
                raise DeadlineExceeded("no result before the request deadline") from None
            except asyncio.CancelledError:
                self._mark_cancelled(rid, max(1000, math.ceil((deadline - time.monotonic()) * 1000)))
                raise
        finally:
            self._pending.pop(rid, None)
        return self._result(reply)

    async def _admit_retrying_stale(self, keys: list[Any], args: list[Any]) -> Any:
        """The admission script, sent once more on a ``ConnectionError``. A pooled connection that outlived a Redis
        restart fails on its first use ("Connection closed by server") seconds after Redis is back; redis-py drops
        the failed connection, so the second attempt goes out on a fresh one (and fails fast again if Redis is
        really down). The dead socket never delivered the first attempt; were it ever delivered, the duplicate
        entry would only cost a dropped duplicate reply."""
        try:
            return await self._admit(keys=keys, args=args)
        except redis.ConnectionError:
            return await self._admit(keys=keys, args=args)

    async def _admit_entry(self, op: Op, rid: str, dtype: str, shape: str, data: bytes, remaining_ms: int) -> None:
        s = self.settings
        keys = [self.keys.work(op), self.keys.bytes(op), self.keys.workers, self.keys.stats(op)]
        args: list[Any] = [s.redis_max_entries, s.redis_max_bytes, self._window_ms, remaining_ms, len(data),
                           "rid", rid, "reply", self.reply_key, "dtype", dtype, "shape", shape, "data", data,
                           REQUEST_ID_FIELD, current_request_id() or ""]
        try:
            res = await asyncio.wait_for(self._admit_retrying_stale(keys, args), timeout=remaining_ms / 1000)
        except asyncio.CancelledError:  # the client went away while the entry may be being written
            self._mark_cancelled(rid, max(1000, remaining_ms + 5000))
            raise
        except TimeoutError as exc:  # asyncio's (deadline) or the socket's: the entry may still be written
            self._redis_ok = False
            self._mark_cancelled(rid, max(1000, remaining_ms + 5000))
            raise DeadlineExceeded("the queue (Redis) did not answer before the request deadline") from exc
        except redis.ConnectionError as exc:  # could not connect / connection reset: nothing was written
            self._redis_ok = False
            raise NotReady("queue unavailable: cannot reach Redis", retry_after_s=1.0) from exc
        except REDIS_DOWN as exc:
            self._redis_ok = False
            self._mark_cancelled(rid, max(1000, remaining_ms + 5000))
            raise NotReady("queue unavailable: Redis stopped answering", retry_after_s=1.0) from exc
        except redis.ResponseError as exc:  # e.g. OOM under maxmemory noeviction
            raise Overloaded(f"queue refused the entry: {exc}", retry_after_s=1.0) from exc
        self._redis_ok = True
        status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        if status == "ok":
            return
        if status not in ("full", "too_short", "unmeetable"):
            raise BackendError(f"unexpected admission answer {status!r}; this is a bug")
        raise admission.refusal(op, admission.Admission(status, int(res[1]) / 1000))  # type: ignore[arg-type]

    def _result(self, reply: Reply) -> npt.NDArray[Any]:
        if reply.status == "ok" and reply.result is not None:
            return np.array(reply.result)  # writable copy, detached from the wire buffer
        raise error_of_code(reply.status, reply.message or "inference failed")

    def _mark_cancelled(self, rid: str, ttl_ms: int) -> None:
        """Fire-and-forget: tell workers to skip this entry; retried while Redis is unreachable, for ``ttl_ms``."""

        async def mark() -> None:
            end = time.monotonic() + ttl_ms / 1000
            while self._redis is not None and time.monotonic() < end:
                try:
                    await self._redis.set(self.keys.cancel(rid), b"1", px=ttl_ms)
                    return
                except (redis.RedisError, OSError):
                    await asyncio.sleep(0.2)

        task = asyncio.create_task(mark())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # --- background tasks -----------------------------------------------------------------------------
    async def _reader_loop(self) -> None:
        """The one reply reader of this replica: XREAD BLOCK on its reply stream, resolve futures by id."""
        assert self._reader_redis is not None and self._redis is not None
        last_id = "0-0"
        backoff = 0.05
        connected = False
        while True:
            try:
                if not connected:
                    await self._check_same_server()
                    connected = True
                    backoff = 0.05
                    log.info("reply reader connected to Redis")
                resp: Any = await self._reader_redis.xread({self.reply_key: last_id}, count=READ_COUNT,
                                                           block=READ_BLOCK_MS)
                done: list[Any] = []
                for _stream, entries in resp or []:
                    for entry_id, fields in entries:
                        last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                        done.append(entry_id)
                        self._resolve(fields)
                if done:
                    await self._reader_redis.xdel(self.reply_key, *done)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                if connected:
                    self.reply_reconnects += 1
                    log.warning("reply reader lost Redis (%s); %d waiting requests keep waiting until their "
                                "deadlines", exc, len(self._pending))
                connected = False
                self._redis_ok = False
                last_id = "0-0"  # replies are deleted once read: re-reading from the start loses none
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            except Exception:
                log.exception("reply reader error; continuing")
                await asyncio.sleep(0.1)

    def _resolve(self, fields: dict[bytes, bytes]) -> None:
        try:
            reply = parse_reply(fields)
        except (ProtocolError, KeyError) as exc:
            log.error("dropping malformed reply: %s", exc)
            self.dropped_replies += 1
            return
        fut = self._pending.get(reply.request_id)
        if fut is None or fut.done():
            self.dropped_replies += 1  # duplicate after a reclaim, or the request already gave up
            return
        fut.set_result(reply)

    async def _check_same_server(self) -> None:
        """On (re)connect: if Redis is a different instance than the one our entries went to, they are gone."""
        assert self._reader_redis is not None
        info: Any = await self._reader_redis.info("server")
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            log.warning("Redis restarted (run_id changed); failing %d waiting requests", len(self._pending))
            self._fail_waiting()
        self._run_id = run_id

    def _fail_waiting(self) -> None:
        for fut in list(self._pending.values()):
            if not fut.done():
                self.lost_on_outage += 1
                fut.set_exception(NotReady("the queue restarted and lost this request; retry", retry_after_s=1.0))

    async def _ensure_groups(self) -> None:
        """Create the work streams and the ``workers`` group (``XGROUP CREATE ... MKSTREAM``; one that exists is
        left alone), so that queue lag exists for an autoscaler before any worker has ever started."""
        assert self._redis is not None
        for op in OPS:
            try:
                await self._redis.xgroup_create(self.keys.work(op), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ok = True

    async def _monitor_loop(self) -> None:
        """Refresh queue depth (``stats()``: queue gauges) and the live workers'
        batch caps (``batch_caps()``: /info)."""
        assert self._redis is not None
        period = max(0.2, min(1.0, self.settings.worker_heartbeat_s / 2))
        while True:
            try:
                if not self._groups_ok:
                    await self._ensure_groups()
                pipe = self._redis.pipeline(transaction=False)
                pipe.time()
                for op in OPS:
                    pipe.xlen(self.keys.work(op))
                    pipe.xrange(self.keys.work(op), count=1)
                res = await pipe.execute()
                sec, usec = res[0]
                now_ms = int(sec) * 1000 + int(usec) // 1000
                queued, oldest = 0, 0.0
                for k in range(len(OPS)):
                    queued += int(res[1 + 2 * k])
                    first = res[2 + 2 * k]
                    if first:
                        eid = first[0][0]
                        eid = eid.decode() if isinstance(eid, bytes) else str(eid)
                        oldest = max(oldest, (now_ms - int(eid.split("-")[0])) / 1000)
                self._queued, self._oldest_age_s = queued, max(0.0, oldest)
                await self._read_caps(now_ms)
                self._redis_ok = True
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN:
                self._redis_ok = self._groups_ok = False  # a Redis restarted without persistence lost the groups
            except Exception:
                log.exception("queue monitor error; continuing")
            await asyncio.sleep(period)
