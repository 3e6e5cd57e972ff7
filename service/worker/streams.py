"""Redis Streams I/O of a worker: reading raw entries, turning them into core entries, replies, delivery + ack.

Wire formats and the Lua scripts are in ``service/redis_protocol.py``. Times on entries are Redis TIME in
seconds (``enq_ms / 1000``), the clock the consumer's ``next_batch`` calls use.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import redis

from evotok.service import metrics
from evotok.service.core import Entry, key_of
from evotok.service.redis_protocol import (
    DELIVER_FIELDS,
    DLQ_MAXLEN,
    GROUP,
    REPLY_MAXLEN,
    REPLY_TTL_MS,
    Keys,
    ProtocolError,
    WorkItem,
    pack_array,
    parse_work_entry,
)

log = logging.getLogger(__name__)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


@dataclass(frozen=True)
class RawEntry:
    """An entry as read from a stream, before parsing."""

    stream: str
    entry_id: str
    fields: dict[bytes, bytes] | None  # None: deleted meanwhile
    deliveries: int


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def flatten(resp: Any, deliveries: int = 1) -> list[RawEntry]:
    """XREADGROUP / XAUTOCLAIM rows -> RawEntry list."""
    out: list[RawEntry] = []
    for stream, entries in resp or []:
        for entry_id, fields in entries:
            out.append(RawEntry(text(stream), text(entry_id), fields, deliveries))
    return out


def with_deliveries(client: redis.Redis, consumer: str, entries: list[RawEntry]) -> list[RawEntry]:
    """Attach the delivery counts the PEL keeps (for reclaimed / recovered entries)."""
    by_stream: dict[str, list[RawEntry]] = defaultdict(list)
    for e in entries:
        by_stream[e.stream].append(e)
    out: list[RawEntry] = []
    for stream, group in by_stream.items():
        ids = sorted((e.entry_id for e in group), key=lambda s: tuple(int(p) for p in s.split("-")))
        rows = client.xpending_range(stream, GROUP, ids[0], ids[-1], len(ids) + 16, consumername=consumer)
        counts = {text(r["message_id"]): int(r["times_delivered"]) for r in rows}
        out += [RawEntry(e.stream, e.entry_id, e.fields, counts.get(e.entry_id, e.deliveries)) for e in group]
    return out


@dataclass
class Outcome:
    """Replies to deliver, grouped by work stream (one DELIVER_LUA call each), and entries to ack only."""

    by_stream: dict[str, list[str | bytes | int]] = field(default_factory=lambda: defaultdict(list))
    orphans: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def reply(self, item: WorkItem, status: str, message: str = "", result: npt.NDArray[Any] | None = None) -> None:
        if result is not None:
            arr = pack_array(result)
            dtype, shape, data = arr.dtype, arr.shape, arr.data
        else:
            dtype, shape, data = "", "", b""
        self.by_stream[item.stream] += [
            item.entry_id, item.nbytes, item.reply_key, item.request_id, status, message, dtype, shape, data,
        ]

    def __bool__(self) -> bool:
        return bool(self.by_stream or self.orphans)


def deliver(client: redis.Redis, script: Any, keys: Keys, out: Outcome) -> None:
    """Replies + XACK + XDEL, atomically per stream (a crash before this leaves the entries pending)."""
    if not out:
        return
    pipe = client.pipeline(transaction=False)
    for stream, args in out.by_stream.items():
        assert len(args) % DELIVER_FIELDS == 0, "deliver arguments misaligned; this is a bug"
        op = keys.op_of_stream(stream)
        script(keys=[stream, keys.bytes(op)], args=[GROUP, REPLY_MAXLEN, REPLY_TTL_MS, *args], client=pipe)
    for stream, ids in out.orphans.items():
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
    pipe.execute()


def admit(client: redis.Redis, keys: Keys, consumer: str, raw: list[RawEntry], max_deliveries: int,
          out: Outcome) -> list[Entry[WorkItem]]:
    """Parse raw entries into core entries; malformed and poison entries are dead-lettered and answered."""
    entries: list[Entry[WorkItem]] = []
    for e in raw:
        if e.fields is None:
            out.orphans[e.stream].append(e.entry_id)
            continue
        try:
            item = parse_work_entry(keys, e.stream, e.entry_id, e.fields, e.deliveries)
        except ProtocolError as exc:
            dead_letter(client, keys, consumer, e, "malformed", str(exc))
            rid, reply = e.fields.get(b"rid"), e.fields.get(b"reply")
            if rid and reply:
                out.by_stream[e.stream] += [e.entry_id, len(e.fields.get(b"data", b"")), reply, rid,
                                            "invalid_input", f"malformed queue entry: {exc}", "", "", b""]
            else:
                out.orphans[e.stream].append(e.entry_id)
            continue
        if item.deliveries > max_deliveries:
            dead_letter(client, keys, consumer, e, "poison", f"delivered {item.deliveries} times")
            out.reply(item, "backend_error",
                      f"request failed: its worker died {item.deliveries - 1} times while running it")
            continue
        entries.append(Entry(key_of(item.op, item.payload), item.enq_ms / 1000, item.deadline_ms / 1000, item))
    return entries


def dead_letter(client: redis.Redis, keys: Keys, consumer: str, e: RawEntry, reason: str, message: str) -> None:
    op = keys.op_of_stream(e.stream)
    metrics.DEAD_LETTERS.labels(op, reason).inc()
    f = e.fields or {}
    log.error("dead-lettering %s %s: %s", e.stream, e.entry_id, message)
    client.xadd(keys.dlq, {
        "stream": e.stream, "entry_id": e.entry_id, "reason": reason, "message": message,
        "rid": f.get(b"rid", b""), "dtype": f.get(b"dtype", b""), "shape": f.get(b"shape", b""),
        "deliveries": e.deliveries, "worker": consumer,
    }, maxlen=DLQ_MAXLEN, approximate=True)
