"""The batching core, with no I/O: queue entries, pure batch forming and the op table.

The batch step built on it (forming, running, answering, run-time estimates) is ``step.py``; the admission rule
is ``admission.py``. Both adapters (``inprocess.py``, asyncio in the API process, and ``worker/``, Redis Streams
in worker processes) keep a ``step.Scheduler`` whose entries are in arrival order; it asks
``next_batch(entries, policy, now)`` what to do next. That function is pure: the same arrival trace gives the same batches in either adapter (the split
text-embeddings-inference makes between ``queue.rs`` and ``infer.rs``). Its rules:

1. Drop an entry that can no longer finish before its deadline (``deadline <= now + run_estimate_s[op]``:
   ``deadline_exceeded``, also when its caller gave up at that deadline) or whose client went away
   (``cancelled``); dropped entries are returned with the reason, to be answered.
2. The oldest live entry opens the batch; it takes the live entries with the same key (op, dtype, shape), in
   arrival order, up to the op's cap (``policy.cap(op)``).
3. The batch closes ``full`` at the cap, ``drain`` when draining, ``delay`` once ``max_queue_delay_s`` has
   passed since the first entry was *enqueued* (one clock for both adapters); otherwise ``Wait`` until then.

Ops (one item each; batches are ``(B, ...)`` runtime calls; shapes checked by ``OpSpec.check``):

=============== ======================== ================================ ==========================
op              runtime method           payload (one item)               result (one item)
=============== ======================== ================================ ==========================
``encode``      ``encode``               ``(S, S, 3)`` uint8 image        ``(g, g, D)`` uint16 codes
``decode``      ``decode``               ``(g, g, d)`` uint16, 1<=d<=D    ``(S, S, 3)`` uint8 image
``embed_image`` ``embed_images``         ``(S, S, 3)`` uint8 image        ``(g*g, C)`` float32
``embed_codes`` ``embed_codes``          ``(g, g, d)`` uint16, 1<=d<=D    ``(g*g, C)`` float32
=============== ======================== ================================ ==========================

(``S`` = ``info.image_size``, ``g`` = ``info.grid``, ``D`` = ``info.num_depths``, ``C`` = ``info.semantic_dim``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo

Op = Literal["encode", "decode", "embed_image", "embed_codes"]
OPS: tuple[Op, ...] = ("encode", "decode", "embed_image", "embed_codes")
CloseReason = Literal["full", "delay", "drain"]
DropReason = Literal["cancelled", "deadline_exceeded"]
BatchKey = tuple[Op, str, tuple[int, ...]]  # (op, numpy dtype.str, payload shape)
Array = npt.NDArray[Any]
R = TypeVar("R")


class PayloadError(ValueError):
    """A payload that does not fit the op's contract (the adapters answer ``invalid_input``)."""


# --- the op table -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpSpec:
    """One op: which Runtime method runs it, what one item looks like going in and coming out."""

    op: Op
    method: str  # Runtime method name, called with the stacked batch
    takes: Literal["image", "codes"]
    result_dtype: type[np.generic]

    def check(self, batch: Array, info: ModelInfo) -> None:
        """Raise ``PayloadError`` unless ``batch`` is a ``(B, ...)`` stack of this op's payloads."""
        if self.takes == "image":
            want = (info.image_size, info.image_size, 3)
            if batch.dtype != np.uint8 or batch.shape[1:] != want:
                raise PayloadError(f"{self.op}: want uint8 {want} images, got {batch.dtype} {batch.shape[1:]}")
            return
        g = info.grid
        if batch.dtype != np.uint16 or batch.ndim != 4 or batch.shape[1:3] != (g, g):
            raise PayloadError(f"{self.op}: want uint16 ({g}, {g}, d) codes, got {batch.dtype} {batch.shape[1:]}")
        if not 1 <= batch.shape[3] <= info.num_depths:
            raise PayloadError(f"{self.op}: depth {batch.shape[3]} not in 1..{info.num_depths}")

    def result_shape(self, info: ModelInfo) -> tuple[int, ...]:
        """Shape of one item's result."""
        if self.op == "encode":
            return (info.grid, info.grid, info.num_depths)
        if self.op == "decode":
            return (info.image_size, info.image_size, 3)
        return (info.grid * info.grid, info.semantic_dim)

    def example(self, info: ModelInfo, batch: int) -> Array:
        """A zero batch of this op's input (warm-up and timing)."""
        if self.takes == "image":
            return np.zeros((batch, info.image_size, info.image_size, 3), np.uint8)
        depth = info.pixel_depth if self.op == "decode" else info.num_depths
        return np.zeros((batch, info.grid, info.grid, depth), np.uint16)


OP_TABLE: Mapping[Op, OpSpec] = {
    "encode": OpSpec("encode", "encode", "image", np.uint16),
    "decode": OpSpec("decode", "decode", "codes", np.uint8),
    "embed_image": OpSpec("embed_image", "embed_images", "image", np.float32),
    "embed_codes": OpSpec("embed_codes", "embed_codes", "codes", np.float32),
}


def run_op(runtime: Any, op: Op, batch: Array) -> Array:
    """One runtime call of ``op`` on a stacked batch; the result in the op's wire dtype, checked for length."""
    spec = OP_TABLE[op]
    out = np.ascontiguousarray(getattr(runtime, spec.method)(batch), dtype=spec.result_dtype)
    if out.shape[0] != batch.shape[0]:
        raise RuntimeError(f"runtime returned {out.shape[0]} results for {batch.shape[0]} items; this is a bug")
    return out


# --- policy, entries, batches -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPolicy:
    """When a batch closes. ``max_batch_size`` is the upper bound; ``caps`` (measured at warm-up, see
    ``autocap.py``) may lower it per op."""

    max_batch_size: int = 8
    max_queue_delay_s: float = 0.005
    caps: Mapping[Op, int] = field(default_factory=dict)

    def cap(self, op: Op) -> int:
        return max(1, min(self.max_batch_size, self.caps.get(op, self.max_batch_size)))

    def largest_cap(self) -> int:
        """The largest batch any op may form: how many entries a Redis worker needs in hand per batch (it
        reads ahead by this, not by ``max_batch_size``, so that with a cap of 1 it leaves the queue to its
        peers instead of holding items it will run one at a time)."""
        return max(self.cap(op) for op in OPS)

    def with_caps(self, caps: Mapping[Op, int]) -> BatchPolicy:
        return BatchPolicy(self.max_batch_size, self.max_queue_delay_s, dict(caps))


@dataclass(eq=False)
class Entry(Generic[R]):
    """One queued item. Times are seconds on the adapter's clock (monotonic in process, Redis TIME in workers)."""

    key: BatchKey
    enqueued: float
    deadline: float
    ref: R  # the adapter's handle: an asyncio future, a Redis work item
    cancelled: bool = False

    @property
    def op(self) -> Op:
        return self.key[0]


def key_of(op: Op, payload: Array) -> BatchKey:
    return (op, payload.dtype.str, tuple(int(s) for s in payload.shape))


@dataclass(frozen=True)
class Dropped(Generic[R]):
    entry: Entry[R]
    reason: DropReason


@dataclass(frozen=True)
class Batch(Generic[R]):
    """Entries to run together now (all of one key), and entries dropped on the way."""

    key: BatchKey
    entries: list[Entry[R]]
    reason: CloseReason
    dropped: list[Dropped[R]]
    opened: float  # enqueue time of the first entry (the delay clock)

    @property
    def op(self) -> Op:
        return self.key[0]


@dataclass(frozen=True)
class Wait(Generic[R]):
    """Nothing to run yet: wait until ``until`` (None: until a new entry arrives); answer ``dropped``."""

    until: float | None
    dropped: list[Dropped[R]]


def next_batch(
    entries: Sequence[Entry[R]],
    policy: BatchPolicy,
    now: float,
    *,
    run_estimate_s: Mapping[Op, float] | None = None,
    draining: bool = False,
) -> Batch[R] | Wait[R]:
    """The batch to run now from ``entries`` (arrival order), or how long to wait. Pure: reads only its args."""
    est = run_estimate_s or {}
    dropped: list[Dropped[R]] = []
    live: list[Entry[R]] = []
    for e in entries:
        if e.deadline <= now + est.get(e.op, 0.0):  # first: a request given up at its deadline is not "cancelled"
            dropped.append(Dropped(e, "deadline_exceeded"))
        elif e.cancelled:
            dropped.append(Dropped(e, "cancelled"))
        else:
            live.append(e)
    if not live:
        return Wait(None, dropped)
    first = live[0]
    cap = policy.cap(first.op)
    members = [e for e in live if e.key == first.key][:cap]
    close_at = first.enqueued + policy.max_queue_delay_s
    if len(members) >= cap:
        return Batch(first.key, members, "full", dropped, first.enqueued)
    if draining:
        return Batch(first.key, members, "drain", dropped, first.enqueued)
    if now >= close_at:
        return Batch(first.key, members, "delay", dropped, first.enqueued)
    return Wait(close_at, dropped)


def take(entries: list[Entry[R]], decided: Batch[R] | Wait[R]) -> None:
    """Remove the entries ``decided`` uses (batch members and dropped ones) from ``entries``, in place."""
    gone = {id(d.entry) for d in decided.dropped}
    if isinstance(decided, Batch):
        gone |= {id(e) for e in decided.entries}
    entries[:] = [e for e in entries if id(e) not in gone]


def bucket_of(key: BatchKey) -> str:
    """Shape bucket label: the leading spatial size of the payload (image side or code grid)."""
    shape = key[2]
    return str(shape[0]) if shape else "0"


def op_bucket(op: Op, info: ModelInfo) -> str:
    """The ``bucket`` label of ``op``'s payloads for this model (what ``bucket_of`` gives their batches), for
    the API-side stages of the same request."""
    return str(info.image_size if OP_TABLE[op].takes == "image" else info.grid)
