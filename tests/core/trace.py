"""Recorded arrival traces and a pure replay of the batching core (simulated clock, instant or costed runtime)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evotok.service.core import Batch, BatchPolicy, Entry, Op, Wait, key_of, next_batch, take


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds after the start
    id: int  # 1..255, written into the payload so a runtime can tell items apart
    op: Op
    depth: int = 0  # codes depth for decode/embed_codes (shape grouping)
    deadline_s: float = 60.0  # relative to arrival
    cancel_at: float | None = None


def payload(a: Arrival, image_size: int = 64, grid: int = 4) -> np.ndarray:
    if a.op in ("encode", "embed_image"):
        return np.full((image_size, image_size, 3), a.id, np.uint8)
    return np.full((grid, grid, a.depth), a.id, np.uint16)


@dataclass(frozen=True)
class Ran:
    op: Op
    ids: tuple[int, ...]
    reason: str


def replay(trace: list[Arrival], policy: BatchPolicy, run_s: float = 0.0) -> tuple[list[Ran], dict[int, str]]:
    """Drive ``next_batch`` through ``trace``: batches in order, and the dropped ids with their reason."""
    pending = sorted(trace, key=lambda a: a.t)
    entries: list[Entry[Arrival]] = []
    ran: list[Ran] = []
    dropped: dict[int, str] = {}
    now = 0.0
    while pending or entries:
        while pending and pending[0].t <= now:
            a = pending.pop(0)
            entries.append(Entry(key_of(a.op, payload(a)), a.t, a.t + a.deadline_s, a))
        for e in entries:
            e.cancelled = e.ref.cancel_at is not None and e.ref.cancel_at <= now
        decided: Batch[Arrival] | Wait[Arrival] = next_batch(entries, policy, now)
        take(entries, decided)
        dropped.update({d.entry.ref.id: d.reason for d in decided.dropped})
        if isinstance(decided, Batch):
            ran.append(Ran(decided.op, tuple(e.ref.id for e in decided.entries), decided.reason))
            now += run_s
            continue
        nxt = [t for t in (decided.until, pending[0].t if pending else None) if t is not None]
        nxt += [e.ref.cancel_at for e in entries if e.ref.cancel_at is not None and e.ref.cancel_at > now]
        if not nxt:
            break
        now = max(now, min(nxt))
    return ran, dropped


# The trace both adapters run (coarse timing: it must give the same batches on a loaded 2-core machine).
ADAPTER_TRACE = [
    *(Arrival(0.0, i, "encode") for i in range(1, 6)),  # 1..4 fill a batch of 4; 5 waits for the delay
    Arrival(0.0, 11, "decode", depth=2),
    Arrival(0.0, 12, "decode", depth=1),  # same op, other shape: its own batch
    Arrival(0.1, 6, "encode"),  # joins 5 before the delay closes
    Arrival(0.1, 13, "decode", depth=2),  # joins 11
    Arrival(0.1, 21, "embed_codes", depth=2),
]
ADAPTER_POLICY = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.4)
