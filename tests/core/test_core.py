"""The pure batching core on recorded arrival traces: delay, size, deadlines, cancellation, grouping, caps."""

from __future__ import annotations

import numpy as np
import pytest

from evotok.export.fake import FakeRuntime
from evotok.service.autocap import choose_cap, measure, sizes_up_to
from evotok.service.core import (
    OP_TABLE,
    OPS,
    Batch,
    BatchPolicy,
    Entry,
    PayloadError,
    Wait,
    key_of,
    next_batch,
)
from evotok.service.step import execute
from tests.core.trace import ADAPTER_POLICY, ADAPTER_TRACE, Arrival, Ran, replay


def test_adapter_trace_expected_batches() -> None:
    ran, dropped = replay(ADAPTER_TRACE, ADAPTER_POLICY)
    assert ran == [
        Ran("encode", (1, 2, 3, 4), "full"),
        Ran("encode", (5, 6), "delay"),
        Ran("decode", (11, 13), "delay"),
        Ran("decode", (12,), "delay"),
        Ran("embed_codes", (21,), "delay"),
    ]
    assert dropped == {}


def test_delay_clock_starts_at_enqueue_not_at_first_read() -> None:
    e = Entry(key_of("encode", np.zeros((4, 4, 3), np.uint8)), enqueued=10.0, deadline=99.0, ref=None)
    decided = next_batch([e], BatchPolicy(8, 0.5), now=10.2)
    assert isinstance(decided, Wait) and decided.until == pytest.approx(10.5)
    assert isinstance(next_batch([e], BatchPolicy(8, 0.5), now=10.5), Batch)


def test_size_closes_at_once_and_zero_delay_never_waits() -> None:
    trace = [Arrival(0.0, i, "encode") for i in range(1, 4)]
    assert replay(trace, BatchPolicy(2, 10.0))[0] == [Ran("encode", (1, 2), "full"), Ran("encode", (3,), "delay")]
    assert [r.ids for r in replay(trace, BatchPolicy(8, 0.0))[0]] == [(1, 2, 3)]


def test_deadline_drops_include_the_expected_run_time() -> None:
    trace = [Arrival(0.0, 1, "encode", deadline_s=0.05), Arrival(0.0, 2, "encode", deadline_s=5.0)]
    ran, dropped = replay(trace, BatchPolicy(8, 0.1))
    assert ran == [Ran("encode", (2,), "delay")] and dropped == {1: "deadline_exceeded"}
    entries = [Entry(key_of("encode", np.zeros((4, 4, 3), np.uint8)), 0.0, 0.3, ref=1)]
    decided = next_batch(entries, BatchPolicy(1, 0.0), now=0.0, run_estimate_s={"encode": 0.5})
    assert isinstance(decided, Wait) and [d.reason for d in decided.dropped] == ["deadline_exceeded"]


def test_cancelled_entries_are_skipped_and_do_not_hold_the_delay() -> None:
    trace = [Arrival(0.0, 1, "encode", cancel_at=0.05), Arrival(0.2, 2, "encode")]
    ran, dropped = replay(trace, BatchPolicy(8, 0.3))
    assert dropped == {1: "cancelled"}
    assert ran == [Ran("encode", (2,), "delay")]


def test_grouping_by_op_shape_and_dtype() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    entries = [
        Entry(key_of("encode", img), 0.0, 9.0, ref="a"),
        Entry(key_of("embed_image", img), 0.0, 9.0, ref="b"),  # same payload, other op
        Entry(key_of("encode", img.astype(np.uint16)), 0.0, 9.0, ref="c"),  # same shape, other dtype
        Entry(key_of("encode", np.zeros((8, 8, 3), np.uint8)), 0.0, 9.0, ref="d"),  # other shape
        Entry(key_of("encode", img), 0.0, 9.0, ref="e"),
    ]
    decided = next_batch(entries, BatchPolicy(8, 0.0), now=1.0)
    assert isinstance(decided, Batch) and [e.ref for e in decided.entries] == ["a", "e"]


def test_drain_closes_a_forming_batch() -> None:
    e = Entry(key_of("encode", np.zeros((4, 4, 3), np.uint8)), 0.0, 9.0, ref=1)
    decided = next_batch([e], BatchPolicy(8, 5.0), now=0.0, draining=True)
    assert isinstance(decided, Batch) and decided.reason == "drain"


def test_per_op_caps_bound_batches() -> None:
    trace = [Arrival(0.0, i, "encode") for i in range(1, 6)] + [Arrival(0.0, 10 + i, "decode", 2) for i in range(3)]
    policy = BatchPolicy(8, 0.0, caps={"encode": 1})
    sizes = [(r.op, len(r.ids)) for r in replay(trace, policy)[0]]
    assert sizes == [("encode", 1)] * 5 + [("decode", 3)]


def test_choose_cap_on_recorded_curves() -> None:
    cpu_ort = {1: 0.0150, 2: 0.0149, 4: 0.0151, 8: 0.0152}  # batching does not pay (2-core CPU)
    gpu_like = {1: 0.021, 2: 0.011, 4: 0.006, 8: 0.0035, 16: 0.0023, 32: 0.0016}
    flattening = {1: 0.020, 2: 0.012, 4: 0.0112, 8: 0.0110}  # 1 -> 2 pays 67% more throughput, 2 -> 4 7%, then flat
    noisy_cpu = {1: 0.0174, 2: 0.0139, 4: 0.0142, 8: 0.0121, 16: 0.0139}  # ORT CPU, 2 cores: 8 was one lucky sample
    assert choose_cap(cpu_ort) == 1
    assert choose_cap(gpu_like) == 32
    assert choose_cap(flattening) == 4
    assert choose_cap(noisy_cpu) == 2  # +25% throughput at 2; 4 is flat, so the walk stops: never 8
    assert choose_cap(flattening, min_gain=0.1) == 2
    assert choose_cap(flattening, min_gain=0.7) == 1
    assert sizes_up_to(8) == [1, 2, 4, 8] and sizes_up_to(12) == [1, 2, 4, 8, 12] and sizes_up_to(1) == [1]


def test_measure_on_cost_model_runtimes() -> None:
    fixed_cost = FakeRuntime(cost_ms=(20.0, 1.0))  # GPU-like: batching pays
    linear = FakeRuntime(cost_ms=(0.0, 30.0))  # per-item cost only: batching does not pay
    assert all(c.cap == 8 for c in measure(fixed_cost, 8, repeats=1, ops=("encode",)).values())
    flat = measure(linear, 8, repeats=2, ops=("encode",), min_gain=0.1)["encode"]  # 10%: a loaded machine's noise
    assert flat.cap == 1
    assert sorted(flat.item_s) == [1, 2]  # measuring stopped at the first flat step: 4 and 8 never timed
    two_lanes = measure(FakeRuntime(cost_ms=(20.0, 1.0)), 4, repeats=1, ops=("encode",), lanes=2)["encode"]
    assert two_lanes.cap == 4 and two_lanes.item_s[1] < 0.020  # two lanes at once: ~10.5 ms per item at b=1


def test_op_table_checks_and_shapes() -> None:
    rt = FakeRuntime()
    info = rt.info
    for op in OPS:
        spec = OP_TABLE[op]
        x = spec.example(info, 3)
        done = execute(rt, op, list(x), cap=4, bucket="t")
        assert done.ok and done.results is not None
        assert done.results.shape == (3, *spec.result_shape(info)) and done.results.dtype == spec.result_dtype
    bad = execute(rt, "decode", [np.zeros((4, 4, 9), np.uint16)], cap=4, bucket="t")  # depth 9 > D = 4
    assert isinstance(bad.error, PayloadError)
    wrong = execute(rt, "encode", [np.zeros((8, 8, 3), np.uint8)], cap=4, bucket="t")
    assert isinstance(wrong.error, PayloadError)
