"""Batching that pays for itself: the batch cap per op, chosen by measured throughput at warm-up.

For each op, walking up the sizes ``b`` = 1, 2, 4, ... up to ``max_batch_size`` (and ``max_batch_size`` itself),
time the served path: every runtime lane that will serve (``runtime_setup.resolve_lanes``) stacking ``b``
payloads and calling the warm runtime, all at once, and take the throughput, items per second of wall time
(best of ``repeats``). Timing one call alone would mislead on a CPU, where two lanes of batch 1 keep the cores
busier than one lane of batch 2. The cap is the size of the highest throughput; the walk stops measuring at the
first flat step, a size that does not raise throughput by more than ``min_gain`` (3% by default: measurement
noise) over the best so far, so one lucky sample further up cannot set the cap, and warm-up does not time sizes
that cannot pay. With the default queue delay of 0 a batch only forms from requests already waiting, so a larger
cap never makes a lone request wait: the throughput-best size is the right cap. Where batching does not pay
(``t(b)`` grows linearly) the cap stays 1.

``choose_cap`` is pure (tests give it recorded curves); ``measure`` runs the runtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evotok.service.core import OP_TABLE, OPS, Op, run_op

DEFAULT_MIN_GAIN = 0.03


def sizes_up_to(max_batch_size: int) -> list[int]:
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    return [*out, max_batch_size]


@dataclass(frozen=True)
class CapChoice:
    """One op's measurement: per-item seconds by batch size, and the cap chosen from it."""

    op: Op
    item_s: Mapping[int, float]  # batch size -> seconds per item
    cap: int

    def to_dict(self) -> dict[str, Any]:
        return {"cap": self.cap, "item_ms": {str(b): round(1000 * s, 3) for b, s in sorted(self.item_s.items())}}


def choose_cap(item_s: Mapping[int, float], min_gain: float = DEFAULT_MIN_GAIN) -> int:
    """The size of the highest throughput (``1 / item_s``), walking up until the first size that does not beat
    the best so far by more than ``min_gain``."""
    sizes = sorted(item_s)
    cap = sizes[0]
    for b in sizes[1:]:
        if not flat_step(item_s[cap], item_s[b], min_gain):
            cap = b
        else:
            break
    return cap


def flat_step(best_item_s: float, item_s: float, min_gain: float) -> bool:
    """True when a size's throughput is not more than ``min_gain`` above the best so far."""
    return (best_item_s / item_s) - 1.0 <= min_gain if item_s > 0 else False


def measure(runtime: Any, max_batch_size: int, *, repeats: int = 3, min_gain: float = DEFAULT_MIN_GAIN,
            ops: Sequence[Op] = OPS, sizes: Sequence[int] | None = None, warm: bool = True,
            lanes: int = 1) -> dict[Op, CapChoice]:
    """Time every op at each size up to its first flat step and choose each op's cap. A size is timed as it is
    served: ``lanes`` threads (the runtime lanes that will serve) each stacking ``b`` items and calling the
    runtime, all at once; its per-item time is the wall time over the items done (best of ``repeats`` rounds,
    after one untimed call per lane when ``warm``). ``sizes`` defaults to ``sizes_up_to(max_batch_size)``; a
    single size fixes the cap."""
    out: dict[Op, CapChoice] = {}
    for op in ops:
        curve: dict[int, float] = {}
        best = float("inf")
        item = OP_TABLE[op].example(runtime.info, 1)[0]
        for b in sizes or sizes_up_to(max_batch_size):
            if warm:  # a shape the warm-up did not cover pays its first call here
                _served(runtime, op, item, b, lanes, calls=1)
            curve[b] = min(_served(runtime, op, item, b, lanes, calls=2) for _ in range(repeats))
            if len(curve) > 1 and flat_step(best, curve[b], min_gain):
                break
            best = min(best, curve[b])
        out[op] = CapChoice(op, curve, choose_cap(curve, min_gain))
    return out


def _served(runtime: Any, op: Op, item: Any, b: int, lanes: int, calls: int) -> float:
    """Seconds per item when ``lanes`` threads each run ``calls`` batches of ``b`` (stack + runtime call) at once."""

    def lane() -> None:
        for _ in range(calls):
            run_op(runtime, op, np.stack([item] * b))

    if lanes <= 1:
        t0 = time.perf_counter()
        lane()
        return (time.perf_counter() - t0) / (b * calls)
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) / (b * calls * lanes)
