"""The serving core under a deterministic simulation (``tests/core/sim.py``): 200 seeds through the in-process
adapter model, 200 seeds through the Redis adapter model (both with faults), and 100 seeds run fault-free
through both with 1 lane vs 1 worker. The core code (``Scheduler.next/peek/run``, ``next_batch``, admission,
answers, metrics) is real; the transports are models of ``inprocess.py`` and ``worker/`` + ``redis_queue.py``.

Invariants per seed:

- every request is answered exactly once on the caller side; a refused one got 429/504 (503: Redis refused the
  connection) at admission; every admitted Redis entry gets exactly one reply (and the streams, the pending
  list and the byte counters are empty at the end);
- nothing runs for a request whose cancel (or give-up mark) was visible before its batch formed; a drop's
  reason is ``deadline_exceeded`` iff the deadline cannot be met, else a visible cancel;
- no 200 after its deadline plus one batch time at the reply, never a 200 at or after its deadline on the caller
  side, and a 200 carries its own item's result;
- ``RunTimes`` get the simulated call durations;
- the deltas of the real prometheus counters (``ITEMS_SKIPPED``, ``DEADLINE_EXCEEDED`` by where, ``BATCHES`` by
  outcome, ``BATCH_ITEMS``, ``DEAD_LETTERS``) equal the simulated truth;
- with no faults and 1 lane vs 1 worker, the same trace forms the same batches (op, members, close reason).

A failing seed prints its reproduction, e.g. ``SIM_SEED=137 .venv/bin/pytest tests/core/test_simulation.py``
(runs only that seed, in every test) or ``-k "redis and seed_137"``.
"""

from __future__ import annotations

import logging
import os

import pytest

from tests.core.sim import Formed, make_trace, simulate

SEEDS = 200
SAME_SEEDS = 100
ONLY = os.environ.get("SIM_SEED")


def seeds(n: int, offset: int = 0) -> list[int]:
    return [int(ONLY)] if ONLY else list(range(offset, offset + n))


def fail(test: str, seed: int, problems: list[str]) -> None:
    head = "\n  ".join(problems[:12])
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    pytest.fail(f"{test} seed {seed}: {len(problems)} invariant(s) broken\n  {head}{more}\n"
                f"reproduce: SIM_SEED={seed} .venv/bin/pytest tests/core/test_simulation.py -k {test}",
                pytrace=False)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="evotok.service.worker.streams")  # dead letters are expected


@pytest.mark.parametrize("seed", seeds(SEEDS), ids=lambda s: f"seed_{s}")
def test_inprocess(seed: int) -> None:
    _, problems = simulate("inprocess", make_trace(seed))
    if problems:
        fail("test_inprocess", seed, problems)


@pytest.mark.parametrize("seed", seeds(SEEDS), ids=lambda s: f"seed_{s}")
def test_redis(seed: int) -> None:
    _, problems = simulate("redis", make_trace(seed))
    if problems:
        fail("test_redis", seed, problems)


@pytest.mark.parametrize("seed", seeds(SAME_SEEDS, 10_000), ids=lambda s: f"seed_{s}")
def test_same_batches(seed: int) -> None:
    """No faults, 1 lane vs 1 worker: the same batches (op, members, close reason) at the same simulated times.
    A Redis worker holds at most 2 x the largest cap entries (``HOLD_BATCHES``): once its read-ahead is full and
    an entry it would batch stays unread, its batches may legitimately differ (smaller, later), so they are
    compared up to that moment (``read_ahead_full_at``)."""
    trace = make_trace(seed, faults=False, parallel=1, gaps=(8, 16))
    a, pa = simulate("inprocess", trace)
    b, pb = simulate("redis", trace)
    problems = [f"inprocess: {p}" for p in pa] + [f"redis: {p}" for p in pb]
    until = b.read_ahead_full_at  # type: ignore[attr-defined]

    def shape(f: list[Formed]) -> list[tuple[str, tuple[int, ...], str, int]]:
        return [(x.op, x.ids, x.reason, x.at) for x in f if until is None or x.at < until]

    sa, sb = shape(a.formed), shape(b.formed)
    if sa != sb:
        k = next((i for i, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y), min(len(sa), len(sb)))
        problems.append(f"batches differ from #{k} ({len(sa)} vs {len(sb)} compared): in process "
                        f"{sa[k] if k < len(sa) else None}, redis {sb[k] if k < len(sb) else None}")
    if problems:
        fail("test_same_batches", seed, problems)


def test_same_batches_compares_most_batches() -> None:
    """The read-ahead cut-off above leaves most batches compared (and many traces compared whole)."""
    whole, compared, total = 0, 0, 0
    for seed in range(10_000, 10_040):
        trace = make_trace(seed, faults=False, parallel=1, gaps=(8, 16))
        b, _ = simulate("redis", trace)
        until = b.read_ahead_full_at  # type: ignore[attr-defined]
        whole += until is None
        compared += sum(1 for f in b.formed if until is None or f.at < until)
        total += len(b.formed)
    assert whole >= 10 and compared >= total / 2, (whole, compared, total)


def test_simulation_is_deterministic() -> None:
    trace = make_trace(7)
    for adapter in ("inprocess", "redis"):
        a, _ = simulate(adapter, trace)
        b, _ = simulate(adapter, trace)
        assert a.formed == b.formed and [c.status for c in a.callers.values()] == [
            c.status for c in b.callers.values()]


def test_traces_exercise_the_faults() -> None:
    """The seeds above really reach the paths they claim to (refusals, drops of both kinds, failures,
    reclaims/dead letters, Redis outages, kills)."""
    seen: dict[str, int] = {}
    for seed in range(40):
        for adapter in ("inprocess", "redis"):
            m, _ = simulate(adapter, make_trace(seed))
            statuses = [c.status for c in m.callers.values()]
            for s in (200, 429, 499, 500, 503, 504):
                seen[f"{adapter}:{s}"] = seen.get(f"{adapter}:{s}", 0) + statuses.count(s)
            seen[f"{adapter}:skipped"] = seen.get(f"{adapter}:skipped", 0) + sum(m.truth.skipped.values())
            seen[f"{adapter}:reran"] = seen.get(f"{adapter}:reran", 0) + sum(1 for v in m.ran.values() if v > 1)
            seen[f"{adapter}:dead"] = seen.get(f"{adapter}:dead", 0) + sum(m.truth.dead_letters.values())
    for key in ("inprocess:200", "inprocess:429", "inprocess:499", "inprocess:500", "inprocess:504",
                "inprocess:skipped", "redis:200", "redis:429", "redis:499", "redis:500", "redis:503", "redis:504",
                "redis:skipped", "redis:reran", "redis:dead"):
        assert seen[key] > 0, (key, seen)


def test_autoclaim_id_collision_across_streams() -> None:
    """Seed 2347 (found by running seeds 1000..3999): after a stall, entries of two ops land in the same ms with
    equal ids; a worker holding one reclaims the other. The consumer keys what it holds by (stream, id), so the
    reclaimed entry is read and run, not left pending with a raised delivery count (a false dead letter)."""
    _, problems = simulate("redis", make_trace(2347))
    assert not problems, problems
