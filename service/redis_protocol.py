"""The Redis Streams wire protocol shared by the API side (``redis_queue.py``) and workers (``worker/``).

Keys (``P`` = ``settings.redis_prefix``; write it as ``{evotok}`` to co-locate keys under Redis Cluster):

==================================== ==============================================================
``P:req:{op}``                       work stream, one per op; consumer group ``workers``; never trimmed
``P:bytes:{op}``                     admission byte counter (payload bytes of entries not yet acked)
``P:stats:{op}``                     hash ``item_ms``/``batch_ms``/``cap``: the last-beating worker's EWMA of inference
                                     time per item / batch and its cap (admission's wait estimate)
``P:workers``                        sorted set worker name -> last heartbeat (Redis TIME, ms)
``P:worker:{name}``                  hash ``pid``/``host``/``batches``/``cap:{op}`` (the worker's effective batch
                                     caps); written with each heartbeat, expires after the liveness window
``P:reply:{replica}``                reply stream of one API replica (capped, expires when idle)
``P:cancel:{request_id}``            cancel mark set by the API (TTL = remaining deadline)
``P:gauges``                         name of the worker that publishes the cluster-wide stream gauges (TTL)
``P:dlq``                            dead letters (capped with MAXLEN ~; trimming is fine here)
==================================== ==============================================================

Work entry fields (all bytes on the wire): ``rid`` request id (internal, unique per admitted request: reply
and cancel keys), ``xrid`` (``REQUEST_ID_FIELD``, optional) the HTTP request's ``X-Request-ID`` for the
worker's logs (``service/request_context.py``; may repeat across requests), ``reply`` reply stream key,
``deadline_ms`` / ``enq_ms`` (Redis TIME, ms since epoch), ``dtype`` (numpy ``dtype.str``, one of
``ALLOWED_DTYPES``), ``shape`` (comma-separated ints), ``data`` (raw C-order bytes). No pickle anywhere:
a payload is only ever rebuilt with ``np.frombuffer`` after its dtype and size are checked.

Reply entry fields: ``rid``, ``status`` (``ok`` or an error code of ``service/errors.py``:
``deadline_exceeded``, ``cancelled``, ``backend_error``, ``invalid_input``), ``message``, and for ``ok``
``dtype``/``shape``/``data`` of the single-item result.

Two Lua scripts keep the invariants atomic (Redis 7.0 compatible: XACK + XDEL, no XACKDEL):

- ``ADMIT_LUA`` (API): the admission rule of ``admission.py`` (entry and byte caps, predicted wait vs deadline;
  no live worker admits), XADD (no MAXLEN), INCRBY of the byte counter, all in one step.
- ``DELIVER_LUA`` (worker): per entry XACK + XDEL; only if this call really deleted the entry, XADD the
  reply and DECRBY the byte counter. A duplicate (an entry reclaimed and finished by another worker)
  therefore produces no second reply and never double-decrements the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.service.batcher import OPS, Op
from evotok.service.request_context import valid_request_id

GROUP = "workers"
ALLOWED_DTYPES = frozenset({"|u1", "<u2", "<f4"})  # uint8 images, uint16 codes, float32 features
REPLY_MAXLEN = 100_000  # approximate cap of one reply stream
REPLY_TTL_MS = 300_000  # a reply stream expires this long after its last reply (dead API replicas)
DLQ_MAXLEN = 10_000
DELIVER_FIELDS = 9  # values per entry in DELIVER_LUA's ARGV


class ProtocolError(ValueError):
    """A work or reply entry that does not follow this protocol (a poison entry)."""


@dataclass(frozen=True)
class Keys:
    """Every key name, derived from one prefix."""

    prefix: str

    def work(self, op: Op) -> str:
        return f"{self.prefix}:req:{op}"

    def bytes(self, op: Op) -> str:
        return f"{self.prefix}:bytes:{op}"

    def stats(self, op: Op) -> str:
        return f"{self.prefix}:stats:{op}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker_info(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def reply(self, replica: str) -> str:
        return f"{self.prefix}:reply:{replica}"

    def cancel(self, request_id: str) -> str:
        return f"{self.prefix}:cancel:{request_id}"

    @property
    def gauge_lease(self) -> str:
        return f"{self.prefix}:gauges"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}:dlq"

    def op_of_stream(self, stream: str) -> Op:
        op = stream.rsplit(":", 1)[-1]
        for known in OPS:
            if op == known:
                return known
        raise ProtocolError(f"not a work stream: {stream!r}")


@dataclass(frozen=True)
class ArrayFields:
    """An array as three wire fields."""

    dtype: str
    shape: str
    data: bytes


def pack_array(arr: npt.NDArray[Any]) -> ArrayFields:
    """Any C-contiguous array of an allowed dtype -> wire fields (little-endian raw bytes)."""
    a = np.ascontiguousarray(arr)
    if a.dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {a.dtype.str} not allowed on the wire (allowed: {sorted(ALLOWED_DTYPES)})")
    return ArrayFields(a.dtype.str, ",".join(str(int(s)) for s in a.shape), a.tobytes())


def unpack_array(dtype: bytes | str, shape: bytes | str, data: bytes) -> npt.NDArray[Any]:
    """Wire fields -> a read-only array; raises ProtocolError on any inconsistency."""
    dt = dtype.decode() if isinstance(dtype, bytes) else dtype
    sh = shape.decode() if isinstance(shape, bytes) else shape
    if dt not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {dt!r} not allowed")
    try:
        dims = tuple(int(s) for s in sh.split(",")) if sh else ()
    except ValueError as exc:
        raise ProtocolError(f"bad shape {sh!r}") from exc
    if any(d < 0 for d in dims) or len(dims) > 8:
        raise ProtocolError(f"bad shape {sh!r}")
    np_dtype = np.dtype(dt)
    if int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize != len(data):
        raise ProtocolError(f"payload of {len(data)} bytes does not match {dt} {dims}")
    return np.frombuffer(data, dtype=np_dtype).reshape(dims)


@dataclass(frozen=True)
class WorkItem:
    """One decoded work entry as a worker sees it."""

    stream: str
    entry_id: str
    op: Op
    request_id: str
    reply_key: str
    deadline_ms: int
    enq_ms: int
    nbytes: int
    payload: npt.NDArray[Any]
    deliveries: int = 1
    http_request_id: str | None = None  # the ``xrid`` field: X-Request-ID of the HTTP request, for logs


REQUEST_ID_FIELD = "xrid"


def _text(fields: dict[bytes, bytes], name: str) -> str:
    value = fields.get(name.encode())
    if value is None:
        raise ProtocolError(f"missing field {name!r}")
    return value.decode()


def _request_id_field(fields: dict[bytes, bytes]) -> str | None:
    value = fields.get(REQUEST_ID_FIELD.encode())
    return value.decode("ascii") if value is not None and valid_request_id(value) else None


def parse_work_entry(
    keys: Keys, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int = 1
) -> WorkItem:
    """Raw XREADGROUP fields -> WorkItem; raises ProtocolError for a malformed entry."""
    try:
        data = fields[b"data"]
        payload = unpack_array(fields[b"dtype"], fields[b"shape"], data)
        return WorkItem(
            stream=stream,
            entry_id=entry_id,
            op=keys.op_of_stream(stream),
            request_id=_text(fields, "rid"),
            reply_key=_text(fields, "reply"),
            deadline_ms=int(_text(fields, "deadline_ms")),
            enq_ms=int(_text(fields, "enq_ms")),
            nbytes=len(data),
            payload=payload,
            deliveries=deliveries,
            http_request_id=_request_id_field(fields),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed entry {entry_id}: {exc}") from exc


@dataclass(frozen=True)
class Reply:
    """One reply as the API reads it. ``result`` is set iff ``status == "ok"``."""

    request_id: str
    status: str
    message: str
    result: npt.NDArray[Any] | None


def parse_reply(fields: dict[bytes, bytes]) -> Reply:
    rid = _text(fields, "rid")
    status = _text(fields, "status")
    message = fields.get(b"message", b"").decode(errors="replace")
    if status != "ok":
        return Reply(rid, status, message, None)
    return Reply(rid, status, message, unpack_array(fields[b"dtype"], fields[b"shape"], fields[b"data"]))


# ---------------------------------------------------------------------------------------------------------
# Lua scripts

ADMIT_LUA = """
-- The admission rule of service/admission.py (admit), atomically with the XADD.
-- KEYS: 1 work stream, 2 byte counter, 3 workers zset, 4 stats hash
-- ARGV: 1 max_entries, 2 max_bytes, 3 heartbeat liveness window ms, 4 remaining budget ms,
--       5 payload bytes, 6.. field/value pairs of the entry (without deadline/enq)
-- Returns {status, predicted_wait_ms[, entry id]}: 'ok' (admitted), 'full', 'too_short', 'unmeetable'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[3]), '+inf')
local n = redis.call('XLEN', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local st = redis.call('HMGET', KEYS[4], 'item_ms', 'batch_ms')
local item_ms = tonumber(st[1] or '0') or 0
local batch_ms = tonumber(st[2] or '0') or 0
-- predicted time to answer: the entries ahead shared by the live workers, plus one batch of our own
local wait_ms = math.ceil(n * item_ms / math.max(1, live) + batch_ms - 1e-6)
local nbytes = tonumber(ARGV[5])
if n + 1 > tonumber(ARGV[1]) or used + nbytes > tonumber(ARGV[2]) then return {'full', wait_ms} end
local remaining = tonumber(ARGV[4])
-- no live worker: admit (within the bounds and its deadline) so that lag builds and an autoscaler starts one
if live > 0 and math.ceil(batch_ms - 1e-6) > remaining then return {'too_short', wait_ms} end
if live > 0 and wait_ms > remaining then return {'unmeetable', wait_ms} end
local deadline = now + remaining
local args = {KEYS[1], '*', 'deadline_ms', tostring(deadline), 'enq_ms', tostring(now)}
for i = 6, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(args))
redis.call('INCRBY', KEYS[2], nbytes)
return {'ok', wait_ms, id}
"""

DELIVER_LUA = """
-- KEYS: 1 work stream, 2 byte counter
-- ARGV: 1 group, 2 reply maxlen, 3 reply ttl ms, then per entry 9 values:
--       entry_id, nbytes, reply_key, rid, status, message, dtype, shape, data
-- Returns the number of entries this call deleted (and answered).
local delivered = 0
local freed = 0
for i = 4, #ARGV, 9 do
  local id = ARGV[i]
  redis.call('XACK', KEYS[1], ARGV[1], id)
  if redis.call('XDEL', KEYS[1], id) == 1 then
    delivered = delivered + 1
    freed = freed + tonumber(ARGV[i + 1])
    local rk = ARGV[i + 2]
    redis.call('XADD', rk, 'MAXLEN', '~', ARGV[2], '*', 'rid', ARGV[i + 3], 'status', ARGV[i + 4],
      'message', ARGV[i + 5], 'dtype', ARGV[i + 6], 'shape', ARGV[i + 7], 'data', ARGV[i + 8])
    redis.call('PEXPIRE', rk, ARGV[3])
  end
end
if freed > 0 then
  local left = redis.call('DECRBY', KEYS[2], freed)
  if left < 0 then redis.call('SET', KEYS[2], 0) end
end
return delivered
"""

HEARTBEAT_LUA = """
-- KEYS: 1 workers zset, 2 worker info hash; ARGV: 1 worker name, 2 info ttl ms, 3 forget-after ms,
--       4.. info field/value pairs. Returns the number of live workers (seen within ARGV[2]).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if #ARGV >= 5 then
  local args = {KEYS[2]}
  for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
  redis.call('HSET', unpack(args))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
"""


def liveness_window_ms(heartbeat_s: float, heartbeats: float) -> int:
    """A worker counts as live if it heartbeated within ``heartbeats`` heartbeat periods
    (``EVOTOK_WORKER_LIVENESS_HEARTBEATS`` x ``EVOTOK_WORKER_HEARTBEAT_S``), in ms."""
    return max(1, int(heartbeats * heartbeat_s * 1000))


def redis_url(url: str, tls: bool) -> str:
    """``EVOTOK_REDIS_TLS=true`` upgrades a ``redis://`` URL to ``rediss://`` (TLS); ``rediss://`` stays."""
    if tls and url.startswith("redis://"):
        return "rediss://" + url[len("redis://") :]
    return url


def connection_kwargs(password: str | None, *, socket_timeout_s: float, connect_timeout_s: float) -> dict[str, Any]:
    """Options shared by the API's (asyncio) and the workers' (sync) clients.

    No client-side retries: callers decide (the API answers 503 at once, workers back off and reconnect).
    """
    out: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": 0,
        "retry_on_timeout": False,
    }
    if password:
        out["password"] = password
    return out
