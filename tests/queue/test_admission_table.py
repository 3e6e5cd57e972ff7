"""One admission rule: ``admission.admit`` (in process) and ``ADMIT_LUA`` (Redis) give the same answers on a table."""

from __future__ import annotations

import itertools

import pytest
import redis

from evotok.service.admission import Admission, View, admit, refusal
from evotok.service.errors import DeadlineExceeded, Overloaded
from evotok.service.redis_protocol import ADMIT_LUA, Keys
from tests.queue.queue_harness import RedisServer

pytestmark = pytest.mark.redis
WINDOW_MS = 10_000
# (queued, max_entries, item_ms, batch_ms, live workers, remaining_ms, nbytes, queued_bytes, max_bytes)
ROWS = [
    (0, 4, 10.0, 10.0, 1, 1000, 10, 0, 1000),  # empty queue: ok
    (3, 4, 10.0, 10.0, 1, 1000, 10, 0, 1000),  # last place: ok
    (4, 4, 10.0, 10.0, 1, 1000, 10, 0, 1000),  # full
    (1, 8, 10.0, 10.0, 1, 1000, 500, 600, 1000),  # full by bytes
    (0, 8, 50.0, 400.0, 1, 300, 10, 0, 1000),  # one batch is longer than the deadline: too_short (504)
    (20, 64, 40.0, 80.0, 1, 500, 10, 0, 10**9),  # the queue ahead makes it unmeetable (429)
    (20, 64, 40.0, 80.0, 4, 500, 10, 0, 10**9),  # four workers share the queue: ok
    (20, 64, 40.0, 80.0, 0, 500, 10, 0, 10**9),  # no live worker: admitted (scale from zero)
    (64, 64, 40.0, 80.0, 0, 500, 10, 0, 10**9),  # no live worker, but full: full
    (0, 8, 0.0, 0.0, 1, 1, 10, 0, 1000),  # no estimate yet: ok
    (7, 8, 12.5, 33.3, 3, 63, 10, 0, 1000),  # rounding: 7 * 12.5 / 3 + 33.3 = 62.47 -> 63 ms: ok
    (7, 8, 12.5, 33.3, 3, 62, 10, 0, 1000),  # ... and 1 ms less: unmeetable
]
# what the rule must answer for each row, worked out by hand: (status, predicted wait in ms)
EXPECTED = [("ok", 10), ("ok", 40), ("full", 50), ("full", 20), ("too_short", 400), ("unmeetable", 880),
            ("ok", 280), ("ok", 880), ("full", 2640), ("ok", 0), ("ok", 63), ("unmeetable", 63)]


def lua_admit(client: redis.Redis, keys: Keys, row: tuple[float, ...], case: int) -> tuple[str, int]:
    queued, max_entries, item_ms, batch_ms, live, remaining_ms, nbytes, queued_bytes, max_bytes = row
    op = "encode"
    work = keys.work(op)
    client.delete(work, keys.bytes(op), keys.workers, keys.stats(op))
    for i in range(int(queued)):
        client.xadd(work, {"rid": f"q{case}-{i}"})
    client.set(keys.bytes(op), int(queued_bytes))
    client.hset(keys.stats(op), mapping={"item_ms": f"{item_ms:.3f}", "batch_ms": f"{batch_ms:.3f}"})
    sec, usec = client.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    for w in range(int(live)):
        client.zadd(keys.workers, {f"w{w}": now_ms})
    client.zadd(keys.workers, {"dead": now_ms - 10 * WINDOW_MS})  # a worker past its window does not count
    res = client.eval(ADMIT_LUA, 4, work, keys.bytes(op), keys.workers, keys.stats(op),
                      int(max_entries), int(max_bytes), WINDOW_MS, int(remaining_ms), int(nbytes),
                      "rid", f"r{case}", "data", b"x" * int(nbytes))
    status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
    if status == "ok":
        assert client.xlen(work) == queued + 1 and int(client.get(keys.bytes(op)) or 0) == queued_bytes + nbytes
    else:
        assert client.xlen(work) == queued  # refused: nothing written
    return status, int(res[1])


def test_inprocess_and_lua_admission_agree(redis_server: RedisServer, prefix: str) -> None:
    client = redis.Redis(port=redis_server.port)
    keys = Keys(prefix)
    for case, row in enumerate(ROWS):
        queued, max_entries, item_ms, batch_ms, live, remaining_ms, nbytes, queued_bytes, max_bytes = row
        mine = admit(View(queued=int(queued), max_entries=int(max_entries), item_s=item_ms / 1000,
                          batch_s=batch_ms / 1000, parallel=int(live), remaining_s=remaining_ms / 1000,
                          nbytes=int(nbytes), queued_bytes=int(queued_bytes), max_bytes=int(max_bytes)))
        status, wait_ms = lua_admit(client, keys, row, case)
        assert (mine.status, round(mine.wait_s * 1000)) == EXPECTED[case], (case, row)  # the rule itself
        assert (status, wait_ms) == EXPECTED[case], (case, row)  # and the Lua admission, the same
    statuses = {admit(View(int(r[0]), int(r[1]), r[2] / 1000, r[3] / 1000, int(r[4]), r[5] / 1000, int(r[6]),
                           int(r[7]), int(r[8]))).status for r in ROWS}
    assert statuses == {"ok", "full", "too_short", "unmeetable"}  # the table covers every answer


@pytest.mark.parametrize(("status", "error", "http"), [("full", Overloaded, 429), ("unmeetable", Overloaded, 429),
                                                       ("too_short", DeadlineExceeded, 504)])
def test_refusals_and_retry_after(status: str, error: type, http: int) -> None:
    for wait_s in (0.0, 0.2, 1.0, 2.4):
        exc = refusal("encode", Admission(status, wait_s))  # type: ignore[arg-type]
        assert isinstance(exc, error) and exc.status == http
        if http == 429:
            assert exc.retry_after_s == max(1, -(-wait_s // 1))  # the predicted wait, rounded up, at least 1 s


def test_parallel_lanes_share_the_queue() -> None:
    waits = [admit(View(8, 64, 0.1, 0.1, p, 10.0)).wait_s for p in (1, 2, 4)]
    assert waits == pytest.approx([0.9, 0.5, 0.3])
    assert [a for a, b in itertools.pairwise(waits) if a <= b] == []
