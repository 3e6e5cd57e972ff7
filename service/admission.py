"""The one admission rule, as a pure function: admit an item, or refuse it with 429 and a Retry-After.

Both adapters ask ``admit`` with what they see; the Redis adapter's ``ADMIT_LUA`` (``redis_protocol.py``)
computes the same thing inside Redis, atomically with the XADD (a table test holds the two equal):

- **Scope**: per op. ``queued`` counts the op's items admitted and not yet answered (waiting and running),
  bounded by ``max_entries`` (``EVOTOK_MAX_QUEUE_SIZE`` in process, ``EVOTOK_REDIS_MAX_ENTRIES`` per stream) and
  their payload bytes by ``max_bytes`` (Redis only; in process the body budget bounds bytes).
- **Predicted wait**: ``queued * item_s / parallel + batch_s``: the items ahead shared by the ``parallel``
  runtime lanes (in process) or live workers (Redis), plus one batch of our own.
- **Status**: ``full`` when the bound is reached; ``too_short`` when even one batch of our own takes longer
  than the request's remaining deadline (504 at once: no wait could meet it, a retry would not help);
  ``unmeetable`` when the queue ahead makes the predicted wait exceed it (429 at once, with Retry-After,
  rather than admitted and dropped with 504 later); else ``ok``.
  With no live worker (``parallel == 0``, Redis) the item is admitted within the bound and its deadline, so
  that queue lag builds and an autoscaler (KEDA) can start a worker: nothing is predicted then.
- **Retry-After**: the predicted wait, rounded up, at least 1 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from evotok.service.errors import DeadlineExceeded, Overloaded

Status = Literal["ok", "full", "too_short", "unmeetable"]


@dataclass(frozen=True)
class View:
    """What an adapter sees at admission (times in seconds, sizes in items and bytes)."""

    queued: int  # the op's items admitted and not answered
    max_entries: int
    item_s: float  # estimated runtime seconds per item at the usual batch size (0 = unknown)
    batch_s: float  # estimated seconds of one batch (0 = unknown)
    parallel: int  # runtime lanes (in process) / live workers (Redis); 0 = none
    remaining_s: float  # the request's remaining deadline
    nbytes: int = 0
    queued_bytes: int = 0
    max_bytes: int | None = None


@dataclass(frozen=True)
class Admission:
    status: Status
    wait_s: float  # predicted time to answer

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def retry_after_s(self) -> float:
        return float(max(1, math.ceil(self.wait_s)))


def predicted_wait_s(queued: int, item_s: float, batch_s: float, parallel: int) -> float:
    """Seconds until an item admitted now is answered (milliseconds rounded up, as the Lua script does)."""
    return math.ceil(1000 * (queued * item_s / max(1, parallel) + batch_s) - 1e-6) / 1000  # float noise


def admit(v: View) -> Admission:
    wait = predicted_wait_s(v.queued, v.item_s, v.batch_s, v.parallel)
    if v.queued + 1 > v.max_entries or (v.max_bytes is not None and v.queued_bytes + v.nbytes > v.max_bytes):
        return Admission("full", wait)
    if v.parallel > 0 and math.ceil(1000 * v.batch_s - 1e-6) / 1000 > v.remaining_s:
        return Admission("too_short", wait)
    if v.parallel > 0 and wait > v.remaining_s:
        return Admission("unmeetable", wait)
    return Admission("ok", wait)


def refusal(op: str, a: Admission) -> Overloaded | DeadlineExceeded:
    """The answer of a refused admission (both adapters raise it): 504 for ``too_short``, else 429."""
    if a.status == "too_short":
        return DeadlineExceeded(f"the request deadline is shorter than one {op} batch (~{a.wait_s:.3f} s)")
    if a.status == "full":
        return Overloaded(f"{op} queue is full; retry later", retry_after_s=a.retry_after_s)
    return Overloaded(f"{op} queue wait (~{a.wait_s:.1f} s) exceeds the request deadline",
                      retry_after_s=a.retry_after_s)
