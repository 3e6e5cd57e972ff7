"""Batching that pays for itself: the batch cap per op, measured on the actual runtime at warm-up.

For each op and each size ``b`` in 1, 2, 4, ... up to ``max_batch_size`` (and ``max_batch_size`` itself), time
a warm runtime call (best of ``repeats``) and take the per-item time ``t(b) / b``. Walking up the sizes, the cap
moves to ``b`` while ``b`` lowers the per-item time of the size before it by at least ``min_gain`` (25% by
default), and the walk stops at the first size that does not: the largest size that still lowers per-item time
meaningfully. (Stopping at the first flat step keeps one noisy, lucky measurement further up from setting the
cap: on a CPU the curve is flat after 2 and a single fast sample at 8 must not make every request wait for 8.) Where batching does not pay (ONNX
Runtime on a small CPU: ``t(b)`` grows linearly) the cap stays 1, and a request never waits for others.

``choose_cap`` is pure (tests give it recorded curves); ``measure`` runs the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evotok.service.core import OP_TABLE, OPS, Op, run_op

DEFAULT_MIN_GAIN = 0.25


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
    """Walk up the sizes while each lowers the per-item time of the previous one by ``min_gain``; the last one."""
    sizes = sorted(item_s)
    cap = sizes[0]
    for b in sizes[1:]:
        if item_s[b] > (1.0 - min_gain) * item_s[cap]:
            break
        cap = b
    return cap


def measure(runtime: Any, max_batch_size: int, *, repeats: int = 3, min_gain: float = DEFAULT_MIN_GAIN,
            ops: Sequence[Op] = OPS, sizes: Sequence[int] | None = None, warm: bool = True) -> dict[Op, CapChoice]:
    """Time every op at every size (best of ``repeats`` calls, after one untimed call when ``warm``) and choose
    each op's cap. ``sizes`` defaults to ``sizes_up_to(max_batch_size)``; a single size fixes the cap."""
    out: dict[Op, CapChoice] = {}
    for op in ops:
        curve: dict[int, float] = {}
        for b in sizes or sizes_up_to(max_batch_size):
            x = OP_TABLE[op].example(runtime.info, b)
            if warm:
                run_op(runtime, op, x)  # a shape the warm-up did not cover pays its first-call cost here
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                run_op(runtime, op, x)
                best = min(best, time.perf_counter() - t0)
            curve[b] = best / b
        out[op] = CapChoice(op, curve, choose_cap(curve, min_gain))
    return out
