"""A deterministic discrete-event simulation of the serving core inside models of its two adapters.

What is REAL here (imported and run unchanged): the batch step ``step.Scheduler`` (``next``/``peek``/``run``
with an injected clock, so ``RunTimes`` learn simulated durations), ``core.next_batch``/``take``, the
admission rule ``admission.admit``/``refusal`` (with the status codes of ``errors.py``),
``step.answers_of_batch``/``answers_of_dropped``, the metrics they record (``evotok.service.metrics``), and on
the Redis side the work-entry parsing and dead-lettering of ``worker/streams.admit``, ``Outcome.reply`` (the
wire packing of answers) and ``redis_protocol.parse_reply``. Runtime outputs come from ``FakeRuntime`` (no
delay; ``SimRuntime`` charges the simulated cost).

What is a MODEL (written here, mirroring the adapters as they are written, not running them): the asyncio
event loop and lane threads of ``inprocess.py``; Redis itself (streams, the consumer group's pending-entries
list, TTL'd cancel marks, the heartbeat sorted set, the stats hash, the Lua scripts' effects), the worker loop
of ``worker/consumer.py`` and the heartbeat thread, and the API side of ``redis_queue.py``. Not modelled: HTTP
and body decoding (a request arrives at admission), API replicas other than one, ``XGROUP DELCONSUMER``, the
gauge lease, Redis restarts that lose data, drains, a Redis stall longer than the worker's socket timeout (5 s;
stalls here last at most 1.5 s), and a polling worker's 2 ms read interval (a worker waiting for a batch to
close is woken by an XADD at once, as a lane is by ``notify``).

Time is an integer count of microseconds (``Sim.now``); the core sees seconds (``now / 1e6``). Redis TIME is
the same clock (ms = ``now // 1000``). Nothing sleeps, nothing is threaded, every choice is drawn from
``random.Random(seed)``, so a seed replays exactly.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evotok.export.fake import FakeRuntime
from evotok.service import admission, metrics
from evotok.service.core import OPS, Batch, BatchPolicy, Entry, Op, Wait, bucket_of, key_of, run_op
from evotok.service.errors import error_of_code
from evotok.service.redis_protocol import Keys, WorkItem, pack_array, parse_reply
from evotok.service.step import Answer, RunTimes, Scheduler, answers_of_batch, answers_of_dropped
from evotok.service.worker.streams import Outcome, RawEntry
from evotok.service.worker.streams import admit as streams_admit

US = 1_000_000  # ticks per second
MS = 1_000
IMAGE, GRID = 16, 4
DEPTH: dict[Op, int] = {"decode": 2, "embed_codes": 4}  # one payload key per op
WHERE = {"inprocess": "queue", "redis": "worker"}  # the Scheduler's label for deadline drops


# --- the trace and the faults -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    id: int
    t: int  # arrival (admission) time, ticks
    op: Op
    budget: int  # deadline - arrival, ticks (a whole number of ms)
    cancel_at: int | None = None  # the client goes away at this time (if still waiting)

    @property
    def deadline(self) -> int:
        return self.t + self.budget


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    kind: str  # redis: "stall" | "down"; runtime: "slow" | "hang"
    factor: float = 1.0  # slow: cost multiplier; hang: seconds a call started inside hangs


@dataclass(frozen=True)
class Kill:
    worker: int
    at: int
    restart_after: int


@dataclass(frozen=True)
class Faults:
    redis: tuple[Window, ...] = ()
    runtime: tuple[Window, ...] = ()
    kills: tuple[Kill, ...] = ()
    fail_p: float = 0.0  # probability that a runtime call raises


@dataclass(frozen=True)
class Trace:
    seed: int
    requests: tuple[Request, ...]
    policy: BatchPolicy
    costs: dict[Op, tuple[int, int]]  # per op (A, b) in ticks: a call of n items costs A + b * n (+-10 % jitter)
    faults: Faults
    parallel: int  # lanes (in process) / workers (Redis)
    max_entries: int
    max_deliveries: int = 3  # Redis: deliveries before an entry is dead-lettered


def make_trace(seed: int, *, faults: bool = True, parallel: int | None = None, n: int = 120,
               gaps: tuple[int, ...] = (2, 4, 8)) -> Trace:
    """A seeded arrival trace: a steady stream with bursts (several requests 1 ms apart), a deadline storm
    (short deadlines), client cancels, and (``faults``) Redis stalls/outages, worker kills, slow/hung runtime
    windows and failing calls. Arrival times are distinct whole milliseconds (Redis ``enq_ms`` equals the
    in-process enqueue time, so both adapters see the same arrival order)."""
    rng = random.Random(seed)
    policy = BatchPolicy(max_batch_size=rng.choice([2, 4, 8]), max_queue_delay_s=rng.choice([0.0, 0.002, 0.005, 0.02]),
                         caps={"embed_image": rng.choice([1, 2, 8])} if rng.random() < 0.3 else {})
    costs: dict[Op, tuple[int, int]] = {op: (rng.randint(2, 8) * MS, rng.randint(200, 2500)) for op in OPS}
    parallel = parallel or rng.randint(1, 3)
    gap_ms = rng.choice(gaps)  # mean inter-arrival time, ms
    storm = rng.randint(0, n * gap_ms)
    times: set[int] = set()
    reqs: list[Request] = []
    t_ms = 1
    while len(reqs) < n:
        burst = rng.randint(3, 12) if rng.random() < 0.08 else 1
        op = rng.choice(OPS)
        for _ in range(burst):
            while t_ms in times:
                t_ms += 1
            times.add(t_ms)
            budget_ms = rng.randint(15, 150) if storm <= t_ms < storm + 100 else rng.randint(150, 2500)
            cancel = None
            if rng.random() < 0.08:
                cancel = t_ms * MS + rng.randint(0, budget_ms) * MS + rng.randint(0, 999)
            reqs.append(Request(len(reqs) + 1, t_ms * MS, op if burst > 1 else rng.choice(OPS), budget_ms * MS, cancel))
        t_ms += max(1, int(rng.expovariate(1 / gap_ms)))
    end = reqs[-1].t
    f = Faults()
    if faults:
        redis = []
        for _ in range(rng.randint(0, 2)):
            s = rng.randint(0, end)
            redis.append(Window(s, s + rng.randint(50, 1500) * MS, rng.choice(["stall", "stall", "down"])))
        redis.sort(key=lambda w: w.start)
        merged: list[Window] = []  # no overlapping outages
        for w in redis:
            if not merged or w.start > merged[-1].end:
                merged.append(w)
        runtime = []
        if rng.random() < 0.4:
            s = rng.randint(0, end)
            runtime.append(Window(s, s + rng.randint(50, 400) * MS, "slow", rng.choice([3.0, 10.0])))
        if rng.random() < 0.25:
            s = rng.randint(0, end)
            runtime.append(Window(s, s + rng.randint(1, 30) * MS, "hang", rng.uniform(1.0, 3.0)))
        kills = tuple(Kill(rng.randrange(parallel), rng.randint(0, end), rng.randint(100, 1500) * MS)
                      for _ in range(rng.randint(0, 2)))
        f = Faults(tuple(merged), tuple(runtime), kills, rng.choice([0.0, 0.0, 0.05, 0.2]))
    return Trace(seed, tuple(reqs), policy, costs, f, parallel, rng.choice([8, 32, 1000]), rng.choice([1, 2, 3]))


def payload_of_request(r: Request) -> np.ndarray:
    v = r.id % 250 + 1
    if r.op in ("encode", "embed_image"):
        return np.full((IMAGE, IMAGE, 3), v, np.uint8)
    return np.full((GRID, GRID, DEPTH[r.op]), v, np.uint16)


# --- the runtime: real FakeRuntime outputs, simulated costs --------------------------------------------------
@dataclass
class Ticket:
    """One runtime call's fate, drawn when its batch forms: how long it takes and whether it raises."""

    cost: int
    fail: bool


class SimRuntime:
    """FakeRuntime's outputs; each call advances the call clock ``t`` (seconds) by the ticket's cost, which is
    what ``Scheduler.run`` (clock injected) records as the runtime time."""

    def __init__(self, trace: Trace) -> None:
        self.fake = FakeRuntime(image_size=IMAGE, grid=GRID)
        self.info = self.fake.info
        self.trace = trace
        self.rng = random.Random(trace.seed * 7919 + 1)
        self.t = 0.0
        self.ticket: Ticket | None = None
        self.calls = 0

    def draw(self, op: Op, n: int, now: int) -> Ticket:
        a, b = self.trace.costs[op]
        cost = int((a + b * n) * self.rng.uniform(0.9, 1.1))
        for w in self.trace.faults.runtime:
            if w.start <= now < w.end:
                cost = int(w.factor * US) if w.kind == "hang" else int(cost * w.factor)
        return Ticket(max(1, cost), self.rng.random() < self.trace.faults.fail_p)

    def _call(self, method: str, batch: Any) -> Any:
        ticket = self.ticket
        assert ticket is not None, "a call without a ticket; this is a bug of the simulation"
        self.ticket = None
        self.calls += 1
        self.fake.batch_sizes.clear()
        self.t += ticket.cost / US
        if ticket.fail:
            raise RuntimeError("injected runtime failure")
        return getattr(self.fake, method)(batch)

    def encode(self, batch: Any) -> Any:
        return self._call("encode", batch)

    def decode(self, batch: Any) -> Any:
        return self._call("decode", batch)

    def embed_codes(self, batch: Any) -> Any:
        return self._call("embed_codes", batch)

    def embed_images(self, batch: Any) -> Any:
        return self._call("embed_images", batch)


_REFERENCE: dict[tuple[Op, int], np.ndarray] = {}
_REF_RUNTIME = FakeRuntime(image_size=IMAGE, grid=GRID)


def reference(r: Request) -> np.ndarray:
    """The result a request must get: the FakeRuntime on its payload alone."""
    key = (r.op, r.id % 250)
    if key not in _REFERENCE:
        _REFERENCE[key] = run_op(_REF_RUNTIME, r.op, payload_of_request(r)[None])[0]
        _REF_RUNTIME.batch_sizes.clear()
    return _REFERENCE[key]


def seeded_times(trace: Trace) -> RunTimes:
    """Start-up's estimates (``startup.start_runtime`` times one batch at the cap): the cost model's mean."""
    times = RunTimes()
    for op in OPS:
        cap = trace.policy.cap(op)
        a, b = trace.costs[op]
        times.seed(op, (a + b * cap) / US, cap)
    return times


# --- the event loop -----------------------------------------------------------------------------------------
# Order of events at the same tick: faults/Redis resuming, then API commands queued during a stall (in the order
# they were issued), client-side events (give-ups at the deadline, cancels), arrivals, runtime calls finishing,
# then lanes/workers waking.
P_FAULT, P_API, P_CLIENT, P_ARRIVE, P_DONE, P_WAKE = range(6)


class Sim:
    def __init__(self) -> None:
        self.now = 0
        self.step = 0  # how many events have run (orders "visible before")
        self._heap: list[tuple[int, int, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, t: int, prio: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), prio, self._seq, fn))

    def run(self, until: int, idle: Callable[[], bool] | None = None) -> None:
        while self._heap and self._heap[0][0] <= until:
            t, _, _, fn = heapq.heappop(self._heap)
            self.now = t
            self.step += 1
            fn()
            if idle is not None and idle():
                return


def ticks_of(s: float) -> int:
    """A wake-up time in ticks, never before ``s`` seconds (a lane woken early would wait again forever)."""
    t = math.ceil(s * US - 1e-3)
    while t / US < s:
        t += 1
    return t


# --- what both models record --------------------------------------------------------------------------------
@dataclass
class Caller:
    """The HTTP handler of one request: its one answer (status, code, time) and the answers it got."""

    req: Request
    state: str = "new"  # new | admitting | waiting | done
    status: int | None = None
    code: str = ""
    answered_at: int | None = None
    answers: int = 0
    admitted: bool = False
    refused: bool = False  # answered by admission (429/504, 503 when Redis refuses the connection)
    done_step: int | None = None  # Sim.step at which the caller stopped waiting (cancel visible in process)
    result: Any = None

    def finish(self, sim: Sim, status: int, code: str, result: Any = None) -> None:
        self.answers += 1
        self.status, self.code, self.answered_at, self.result = status, code, sim.now, result
        self.state = "done"
        if self.done_step is None:
            self.done_step = sim.step


@dataclass(frozen=True)
class Formed:
    """One batch as the core formed it."""

    op: Op
    ids: tuple[int, ...]
    reason: str
    at: int


@dataclass
class Truth:
    """What the simulation saw happen, counted by the model (the metrics must agree)."""

    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    batches: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    items: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)


class Model:
    """Shared by both adapter models: the trace, callers, the invariant checks made while it runs."""

    adapter = ""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.sim = Sim()
        self.runtime = SimRuntime(trace)
        self.callers = {r.id: Caller(r) for r in trace.requests}
        self.formed: list[Formed] = []
        self.truth = Truth()
        self.problems: list[str] = []
        self.ran: Counter[int] = Counter()  # request id -> runtime calls it was part of

    def problem(self, text: str) -> None:
        self.problems.append(f"t={self.sim.now / US:.6f}s {text}")

    def new_scheduler(self) -> Scheduler[Any]:
        return Scheduler(self.trace.policy, WHERE[self.adapter], times=seeded_times(self.trace),
                         clock=lambda: self.runtime.t)

    def note_dropped(self, sched: Scheduler[Any], decided: Batch[Any] | Wait[Any], cancel_seen: Callable[[Any], bool],
                     rid_of: Callable[[Any], int]) -> None:
        """Check each drop's reason against the model's own view, count it."""
        now_s = self.sim.now / US
        for d in decided.dropped:
            e = d.entry
            late = e.deadline <= now_s + sched.times.batch_s.get(e.op, 0.0)
            want = "deadline_exceeded" if late else "cancelled"
            if d.reason != want:
                self.problem(f"request {rid_of(e)} dropped as {d.reason}, the model says {want}")
            if want == "cancelled" and not cancel_seen(e):
                self.problem(f"request {rid_of(e)} dropped as cancelled without a visible cancel")
            self.truth.skipped[(e.op, d.reason)] += 1

    def note_formed(self, sched: Scheduler[Any], batch: Batch[Any], ids: tuple[int, ...]) -> None:
        now_s = self.sim.now / US
        for e, rid in zip(batch.entries, ids, strict=True):
            if e.deadline <= now_s + sched.times.batch_s.get(e.op, 0.0):
                self.problem(f"request {rid} formed into a batch that cannot finish before its deadline")
        self.formed.append(Formed(batch.op, ids, batch.reason, self.sim.now))

    def note_run(self, batch: Batch[Any], formed_at: int, done: Any, answers: list[Answer[Any]],
                 rid_of: Callable[[Any], int]) -> None:
        """After ``Scheduler.run``: count the call; a 200 is never given after its deadline plus one batch time."""
        bucket = bucket_of(batch.key)
        self.truth.batches[(batch.op, bucket, "ok" if done.ok else "error")] += 1
        if done.ok:
            self.truth.items[(batch.op, bucket)] += len(batch.entries)
        took = self.sim.now - formed_at
        if abs(done.runtime_s * US - took) > 2:
            self.problem(f"RunTimes got {done.runtime_s:.6f}s for a call of {took / US:.6f}s")
        for a in answers:
            rid = rid_of(a.entry)
            self.ran[rid] += 1
            if a.code == "ok" and self.sim.now / US > a.entry.deadline + took / US + 1e-9:
                self.problem(f"request {rid}: ok after its deadline plus one batch time")
            if a.code == "ok" and not np.array_equal(a.result, reference(self.callers[rid].req)):
                self.problem(f"request {rid}: got another item's result")


# --- model 1: the in-process adapter ------------------------------------------------------------------------
@dataclass
class InItem:
    """``inprocess.Item``: the payload and the caller (whose ``state == "done"`` is ``future.done()``)."""

    payload: np.ndarray
    caller: Caller


@dataclass
class Lane:
    idx: int
    token: int = 0  # invalidates a pending timed wake-up
    running: bool = False


class InProcessModel(Model):
    """``inprocess.InProcessBatcher`` as written: ``submit`` admits (``admission.admit`` over the op's backlog:
    queued + running items, ``parallel`` = lanes), appends an entry and notifies one waiting lane; the caller
    waits until its deadline (504) or its client goes away (499). Each lane, when free, marks entries whose
    future is done as cancelled, asks ``Scheduler.next``, answers the dropped ones, and either runs the batch
    (notifying another lane if entries are left) or waits on the condition (FIFO waiters, ``notify`` wakes
    one) until ``Wait.until`` or a notify. Answers resolve only callers still waiting."""

    adapter = "inprocess"

    def __init__(self, trace: Trace) -> None:
        super().__init__(trace)
        self.sched = self.new_scheduler()
        self.lanes = [Lane(i) for i in range(trace.parallel)]
        self.waiters: deque[int] = deque()
        self.inflight: dict[int, Batch[InItem]] = {}
        for r in trace.requests:
            self.sim.at(r.t, P_ARRIVE, lambda r=r: self.arrive(r))
        for lane in self.lanes:
            self.sim.at(0, P_WAKE, lambda lane=lane: self.lane_next(lane))

    def backlog(self, op: Op) -> int:
        running = sum(len(b.entries) for b in self.inflight.values() if b.op == op)
        return sum(1 for e in self.sched.entries if e.op == op) + running

    def arrive(self, r: Request) -> None:
        c = self.callers[r.id]
        now_s, deadline_s = self.sim.now / US, r.deadline / US
        times = self.sched.times
        decision = admission.admit(admission.View(
            queued=self.backlog(r.op), max_entries=self.trace.max_entries, item_s=times.item_s.get(r.op, 0.0),
            batch_s=times.batch_s.get(r.op, 0.0), parallel=len(self.lanes), remaining_s=deadline_s - now_s))
        if not decision.ok:
            err = admission.refusal(r.op, decision)
            c.refused = True
            c.finish(self.sim, err.status, err.code)
            return
        c.admitted, c.state = True, "waiting"
        self.sched.entries.append(Entry(key_of(r.op, payload_of_request(r)), now_s, deadline_s,
                                        InItem(payload_of_request(r), c)))
        self.notify()
        self.sim.at(r.deadline, P_CLIENT, lambda: self.give_up(c, 504, "deadline_exceeded"))
        if r.cancel_at is not None:
            self.sim.at(r.cancel_at, P_CLIENT, lambda: self.give_up(c, 499, "client_closed_request"))

    def give_up(self, c: Caller, status: int, code: str) -> None:
        if c.state == "waiting":
            c.finish(self.sim, status, code)

    def notify(self) -> None:
        if self.waiters:
            lane = self.lanes[self.waiters.popleft()]
            lane.token += 1
            self.sim.at(self.sim.now, P_WAKE, lambda: self.lane_next(lane))

    def timed_wake(self, lane: Lane, token: int) -> None:
        if lane.token == token and lane.idx in self.waiters:
            self.waiters.remove(lane.idx)
            self.lane_next(lane)

    def lane_next(self, lane: Lane) -> None:
        """One turn of ``InProcessBatcher._next``."""
        for e in self.sched.entries:
            e.cancelled = e.ref.caller.state == "done"
        decided = self.sched.next(self.sim.now / US)
        self.note_dropped(self.sched, decided, lambda e: e.ref.caller.state == "done", lambda e: e.ref.caller.req.id)
        self.answer(answers_of_dropped(decided.dropped))
        if isinstance(decided, Batch):
            ids = tuple(e.ref.caller.req.id for e in decided.entries)
            for e in decided.entries:
                c = e.ref.caller
                if c.done_step is not None and c.done_step < self.sim.step:
                    self.problem(f"request {c.req.id} runs although its caller stopped waiting before")
            self.note_formed(self.sched, decided, ids)
            self.inflight[id(decided)] = decided
            if self.sched.entries:
                self.notify()
            lane.running = True
            ticket = self.runtime.draw(decided.op, len(decided.entries), self.sim.now)
            formed_at = self.sim.now
            self.sim.at(formed_at + ticket.cost, P_DONE, lambda: self.finish_call(lane, decided, formed_at, ticket))
            return
        self.waiters.append(lane.idx)
        if decided.until is not None:
            lane.token += 1
            token = lane.token
            self.sim.at(ticks_of(decided.until), P_WAKE, lambda: self.timed_wake(lane, token))

    def finish_call(self, lane: Lane, batch: Batch[InItem], formed_at: int, ticket: Ticket) -> None:
        self.runtime.t, self.runtime.ticket = formed_at / US, ticket
        done = self.sched.run(self.runtime, batch)
        self.inflight.pop(id(batch), None)
        answers = answers_of_batch(batch, done)
        self.note_run(batch, formed_at, done, answers, lambda e: e.ref.caller.req.id)
        self.answer(answers)
        lane.running = False
        self.lane_next(lane)

    def answer(self, answers: list[Answer[InItem]]) -> None:
        """``InProcessBatcher._answer``: a caller that stopped waiting has nobody to answer."""
        for a in answers:
            c = a.entry.ref.caller
            if c.state != "waiting":
                continue
            if a.code == "ok":
                c.finish(self.sim, 200, "ok", a.result)
            else:
                c.finish(self.sim, error_of_code(a.code, a.message).status, a.code)

    def run(self) -> None:
        end = max(r.deadline for r in self.trace.requests) + 5 * US
        self.sim.run(end)
        if self.sched.entries or self.inflight:
            self.problem(f"{len(self.sched.entries)} entries queued, {len(self.inflight)} batches running at the end")


# --- model 2: the Redis adapter -----------------------------------------------------------------------------
@dataclass
class Pending:
    """A row of the consumer group's pending-entries list."""

    consumer: str
    deliveries: int
    delivered_at: int  # ticks (the idle clock)


@dataclass
class RedisState:
    """Redis as the adapter uses it: work streams (entry id -> fields, insertion order), the group's read
    cursor and PEL, byte counters, TTL'd cancel marks, the heartbeat zset, the stats hash, the reply stream."""

    keys: Keys
    streams: dict[Op, dict[str, dict[bytes, bytes]]]
    last_read: dict[Op, tuple[int, int]]
    pel: dict[Op, dict[str, Pending]]
    used: dict[Op, int]
    marks: dict[str, int]  # rid -> expiry tick
    beats: dict[str, int]  # worker -> last heartbeat tick
    stats: dict[Op, tuple[float, float]]  # item_ms, batch_ms as the heartbeat writes them ("%.3f")
    last_id: dict[Op, tuple[int, int]] = field(default_factory=dict)  # per stream, as Redis assigns ids
    dlq: list[dict[str, Any]] = field(default_factory=list)

    def xadd(self, op: Op, now_ms: int, fields: dict[bytes, bytes]) -> str:
        ms, seq = self.last_id.get(op, (0, 0))
        self.last_id[op] = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        eid = f"{self.last_id[op][0]}-{self.last_id[op][1]}"
        self.streams[op][eid] = fields
        return eid

    def mark_exists(self, rid: str, now: int) -> bool:
        return self.marks.get(rid, -1) > now


def id_tuple(eid: str) -> tuple[int, int]:
    a, b = eid.split("-")
    return int(a), int(b)


class _DlqClient:
    """The one Redis call ``streams.dead_letter`` makes (XADD to the dead-letter stream)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def xadd(self, key: str, fields: dict[str, Any], **_: Any) -> None:
        self.state.dlq.append(fields)


@dataclass
class Worker:
    """One worker process: its ``Consumer`` state (a real ``Scheduler``) and whether it is alive."""

    idx: int
    name: str
    sched: Scheduler[WorkItem]
    alive: bool = True
    gen: int = 0  # bumped by a kill: events of the dead process are ignored
    token: int = 0  # invalidates a pending wake-up
    state: str = "idle"  # idle (blocked read) | waiting (batch closes later) | running | blocked (Redis) | dead
    need_setup: bool = True
    redis_ok: bool = False
    next_claim: int = 0
    backoff: int = 100 * MS
    room_wait: bool = False  # waiting with no read room: an XADD does not wake it


class RedisModel(Model):
    """The Redis adapter as written. API side (``redis_queue.RedisBatcher``): the Lua admission decides from
    the stream view (``admission.admit`` over XLEN = entries not yet deleted, ``parallel`` = workers with a
    heartbeat in the liveness window, estimates from the last published stats), XADDs with Redis-time
    ``enq_ms``/``deadline_ms``; the caller waits until its deadline (504 + a cancel mark, TTL 1 s) or its
    client goes away (499 + a mark); an admission in flight during a stall waits until Redis resumes or the
    deadline (then 504, the XADD lands at resume, followed by the mark); a refused connection (Redis down) is
    503 at once. Replies resolve only callers still waiting. Worker (``worker/consumer.Consumer``): recovery
    read of its own pending entries after (re)connecting (delivery count + 1), XAUTOCLAIM of entries idle
    longer than ``claim_idle`` every ``claim_idle / 2`` (count + 1) after touching its held entries (XCLAIM
    JUSTID, no count), read-ahead of ``2 x largest cap`` per read (COUNT per stream), ``peek`` then a refresh of
    the cancel marks when a batch is due, ``next``, run, deliver (DELIVER_LUA: reply only if XDEL removed the
    entry), publish stats. Dead-lettering (deliveries > max) is the real ``streams.admit``. A killed worker's
    batch is lost and its entries stay pending; it restarts later under its name. Heartbeats every ``hb``."""

    adapter = "redis"
    HB = 100 * MS
    WINDOW = 300 * MS
    CLAIM_IDLE = 500 * MS
    BLOCK = 50 * MS

    def __init__(self, trace: Trace) -> None:
        super().__init__(trace)
        keys = Keys("sim")
        self.keys = keys
        self.redis = RedisState(keys, {op: {} for op in OPS}, {op: (0, 0) for op in OPS}, {op: {} for op in OPS},
                                {op: 0 for op in OPS}, {}, {}, {})
        self.reply_key = keys.reply("api")
        self.rid_to_req: dict[str, int] = {}
        self.replies: Counter[str] = Counter()  # rid -> replies written to the reply stream
        self.dropped_replies = 0
        self.handouts: Counter[tuple[str, str]] = Counter()  # entry -> times a worker process was given it
        self.read_ahead_full_at: int | None = None  # first time entries stayed unread for want of room
        self.workers = [Worker(i, f"w{i}", self.new_scheduler()) for i in range(trace.parallel)]
        for r in trace.requests:
            self.sim.at(r.t, P_ARRIVE, lambda r=r: self.arrive(r))
        for w in self.workers:
            self.sim.at(0, P_WAKE, lambda w=w: self.turn(w, w.gen))
            self.sim.at(self.HB, P_WAKE, lambda w=w: self.heartbeat(w))
        for k in trace.faults.kills:
            if k.worker < len(self.workers):
                self.sim.at(k.at, P_FAULT, lambda k=k: self.kill(self.workers[k.worker], k.restart_after))
        for win in trace.faults.redis:
            self.sim.at(win.end, P_FAULT, lambda: None)  # a turn boundary at resume

    # --- Redis availability ---
    def outage(self, t: int | None = None) -> Window | None:
        t = self.sim.now if t is None else t
        for w in self.trace.faults.redis:
            if w.start <= t < w.end:
                return w
        return None

    def live_workers(self, now_ms: int) -> int:
        return sum(1 for t in self.redis.beats.values() if t // MS >= now_ms - self.WINDOW // MS)

    # --- API side ---
    def arrive(self, r: Request) -> None:
        c = self.callers[r.id]
        out = self.outage()
        if out is not None and out.kind == "down":
            c.refused = True
            c.finish(self.sim, 503, "not_ready")  # cannot connect: nothing was written
            return
        rid = f"r{r.id:05d}"
        self.rid_to_req[rid] = r.id
        remaining_ms = (r.deadline - self.sim.now) // MS
        c.state = "admitting"
        self.sim.at(r.deadline, P_CLIENT, lambda: self.give_up(c, rid, 504, "deadline_exceeded"))
        if r.cancel_at is not None:
            self.sim.at(r.cancel_at, P_CLIENT, lambda: self.give_up(c, rid, 499, "client_closed_request"))
        if out is None:
            self.admit_lua(c, rid, remaining_ms)
        else:  # stalled: the command runs when Redis resumes, whether or not the caller still waits
            self.sim.at(out.end, P_API, lambda: self.admit_lua(c, rid, remaining_ms))

    def admit_lua(self, c: Caller, rid: str, remaining_ms: int) -> None:
        """ADMIT_LUA's effect, deciding with the one admission rule."""
        r, now_ms = c.req, self.sim.now // MS
        payload = payload_of_request(r)
        wire = pack_array(payload)
        item_ms, batch_ms = self.redis.stats.get(r.op, (0.0, 0.0))
        decision = admission.admit(admission.View(
            queued=len(self.redis.streams[r.op]), max_entries=self.trace.max_entries, item_s=item_ms / 1000,
            batch_s=batch_ms / 1000, parallel=self.live_workers(now_ms), remaining_s=remaining_ms / 1000,
            nbytes=len(wire.data), queued_bytes=self.redis.used[r.op], max_bytes=1 << 30))
        if decision.ok:
            self.redis.xadd(r.op, now_ms, {
                b"rid": rid.encode(), b"reply": self.reply_key.encode(), b"dtype": wire.dtype.encode(),
                b"shape": wire.shape.encode(), b"data": wire.data, b"deadline_ms": str(now_ms + remaining_ms).encode(),
                b"enq_ms": str(now_ms).encode()})
            self.redis.used[r.op] += len(wire.data)
            c.admitted = True
            self.wake_readers()
        if c.state != "admitting":
            return  # the caller already gave up (its mark follows this command)
        if not decision.ok:
            err = admission.refusal(r.op, decision)
            c.refused = True
            c.finish(self.sim, err.status, err.code)
            return
        c.state = "waiting"

    def give_up(self, c: Caller, rid: str, status: int, code: str) -> None:
        if c.state not in ("admitting", "waiting"):
            return
        if c.state == "admitting":
            ttl = max(1000, (c.req.budget // MS) + 5000)
        elif status == 504:
            ttl = 1000
        else:
            ttl = max(1000, math.ceil((c.req.deadline - self.sim.now) / MS))
        c.finish(self.sim, status, code)
        self.mark_cancelled(rid, ttl)

    def mark_cancelled(self, rid: str, ttl_ms: int) -> None:
        """``_mark_cancelled``: SET with PX, retried while Redis does not answer (until ``ttl``)."""
        issued = self.sim.now
        out = self.outage()
        if out is None:
            self.redis.marks[rid] = self.sim.now + ttl_ms * MS
            return

        def land() -> None:
            if self.sim.now < issued + ttl_ms * MS:
                self.redis.marks[rid] = self.sim.now + ttl_ms * MS

        self.sim.at(out.end, P_API, land)

    def on_reply(self, fields: dict[bytes, bytes]) -> None:
        """The reply reader: resolve the caller if it still waits, else count a dropped reply."""
        reply = parse_reply(fields)
        self.replies[reply.request_id] += 1
        c = self.callers[self.rid_to_req[reply.request_id]]
        if c.state != "waiting":
            self.dropped_replies += 1
            return
        if reply.status == "ok":
            c.finish(self.sim, 200, "ok", reply.result)
        else:
            c.finish(self.sim, error_of_code(reply.status, reply.message).status, reply.status)

    # --- workers ---
    def wake_readers(self) -> None:
        """A new entry: wake the workers blocked in a read (not those whose read-ahead is full)."""
        for w in self.workers:
            if w.alive and w.room_wait and self.read_ahead_full_at is None:
                self.read_ahead_full_at = self.sim.now
            if w.alive and w.state in ("idle", "waiting") and not w.room_wait:
                self.wake(w, self.sim.now)

    def wake(self, w: Worker, t: int, prio: int = P_WAKE) -> None:
        w.token += 1
        token, gen = w.token, w.gen
        self.sim.at(t, prio, lambda: self.turn(w, gen) if w.token == token else None)

    def kill(self, w: Worker, restart_after: int) -> None:
        if not w.alive:
            return
        w.alive, w.gen, w.state = False, w.gen + 1, "dead"
        w.sched.entries.clear()  # the process is gone; its entries stay pending in Redis
        self.sim.at(self.sim.now + restart_after, P_FAULT, lambda: self.restart(w))

    def restart(self, w: Worker) -> None:
        w.alive, w.gen, w.state = True, w.gen + 1, "idle"
        w.sched = self.new_scheduler()  # a new process: start-up seeds its estimates
        w.need_setup, w.redis_ok, w.next_claim = True, False, 0
        self.wake(w, self.sim.now)
        self.sim.at(self.sim.now + self.HB, P_WAKE, lambda: self.heartbeat(w))

    def heartbeat(self, w: Worker) -> None:
        if not w.alive:
            return  # the restart starts a new heartbeat thread
        if w.redis_ok and self.outage() is None:
            self.beat(w)
        self.sim.at(self.sim.now + self.HB, P_WAKE, lambda: self.heartbeat(w))

    def beat(self, w: Worker) -> None:
        """Estimates, then the heartbeat (``Heartbeat.beat``); also the stats publish after each batch."""
        self.publish_stats(w)
        self.redis.beats[w.name] = self.sim.now

    def publish_stats(self, w: Worker) -> None:
        t = w.sched.times
        for op, item_s in list(t.item_s.items()):
            self.redis.stats[op] = (float(f"{1000 * item_s:.3f}"), float(f"{1000 * t.batch_s.get(op, 0.0):.3f}"))

    def redis_down(self, w: Worker) -> None:
        """REDIS_DOWN in ``Consumer.run``: drop what it holds (still pending in Redis), back off, reconnect."""
        w.redis_ok, w.need_setup = False, True
        w.sched.entries.clear()
        w.state = "blocked"
        self.wake(w, self.sim.now + w.backoff)
        w.backoff = min(250 * MS, w.backoff * 2)

    def turn(self, w: Worker, gen: int) -> None:
        """One pass of ``Consumer.run``'s loop (setup, autoclaim, ``_step``)."""
        if not w.alive or w.gen != gen or w.state == "running":
            return
        out = self.outage()
        if out is not None:
            if out.kind == "down":
                self.redis_down(w)
            else:
                w.state = "blocked"
                self.wake(w, out.end, P_WAKE)  # its command answers when Redis resumes
            return
        w.backoff = 100 * MS
        if w.need_setup:
            self.setup(w)
        self.maybe_autoclaim(w)
        self.step_worker(w)

    def hold(self, w: Worker, raw: list[RawEntry]) -> None:
        """``Consumer._hold``: the real ``streams.admit`` (dead letters over ``max_deliveries``), arrival order."""
        out = Outcome()
        for e in raw:
            self.handouts[(e.stream, e.entry_id)] += 1
            if e.deliveries != self.handouts[(e.stream, e.entry_id)]:
                self.problem(f"entry {e.entry_id} of {e.stream}: delivery count {e.deliveries}, handed to workers "
                             f"{self.handouts[(e.stream, e.entry_id)]} times (a false dead letter waits)")
            if e.deliveries > self.trace.max_deliveries:
                self.truth.dead_letters[(self.keys.op_of_stream(e.stream), "poison")] += 1
        w.sched.entries.extend(streams_admit(_DlqClient(self.redis), self.keys, w.name, raw,  # type: ignore[arg-type]
                                             self.trace.max_deliveries, out))
        w.sched.entries.sort(key=lambda e: e.enqueued)
        self.deliver(out)

    def setup(self, w: Worker) -> None:
        """``Consumer._setup``: the immediate beat, then the recovery read (``XREADGROUP ... 0``: this consumer's
        pending entries, each delivery counted again)."""
        w.need_setup, w.redis_ok = False, True
        self.beat(w)
        raw: list[RawEntry] = []
        for op in OPS:
            for eid, p in sorted(self.redis.pel[op].items(), key=lambda kv: id_tuple(kv[0])):
                if p.consumer == w.name:
                    p.deliveries += 1
                    p.delivered_at = self.sim.now
                    raw.append(RawEntry(self.keys.work(op), eid, self.redis.streams[op][eid], p.deliveries))
        if raw:
            self.hold(w, raw)

    def maybe_autoclaim(self, w: Worker) -> None:
        """``_maybe_autoclaim``: touch own held entries (XCLAIM JUSTID: idle reset, owner = self, no count), then
        XAUTOCLAIM per stream (idle > claim_idle: owner = self, count + 1), skipping held (stream, id) pairs."""
        if self.sim.now < w.next_claim:
            return
        for e in w.sched.entries:
            p = self.redis.pel[e.op].get(e.ref.entry_id)
            if p is not None:
                p.consumer, p.delivered_at = w.name, self.sim.now
        held_pairs = {(e.op, e.ref.entry_id) for e in w.sched.entries}
        claimed: list[RawEntry] = []
        more = False
        cap = w.sched.policy.largest_cap()
        for op in OPS:
            idle = [(eid, p) for eid, p in sorted(self.redis.pel[op].items(), key=lambda kv: id_tuple(kv[0]))
                    if self.sim.now - p.delivered_at > self.CLAIM_IDLE]
            more = more or len(idle) > cap
            for eid, p in idle[:cap]:
                p.consumer, p.deliveries, p.delivered_at = w.name, p.deliveries + 1, self.sim.now
                if (op, eid) in held_pairs:
                    self.problem(f"{w.name}'s XAUTOCLAIM counted a delivery of entry {eid} it holds itself")
                else:  # held entries are keyed by (stream, id), as Consumer._maybe_autoclaim keys them
                    claimed.append(RawEntry(self.keys.work(op), eid, self.redis.streams[op][eid], p.deliveries))
        if claimed:
            self.hold(w, claimed)
        if not more:
            w.next_claim = self.sim.now + max(50 * MS, self.CLAIM_IDLE // 2)

    def read(self, w: Worker) -> None:
        """``_read``'s XREADGROUP ``>``: up to ``room`` new entries per stream into the PEL (count 1)."""
        room = 2 * w.sched.policy.largest_cap() - len(w.sched.entries)
        w.room_wait = room <= 0
        unread = {op: [eid for eid in self.redis.streams[op] if id_tuple(eid) > self.redis.last_read[op]]
                  for op in OPS}
        if self.read_ahead_full_at is None and any(len(u) > max(0, room) for u in unread.values()):
            self.read_ahead_full_at = self.sim.now
        if room <= 0:
            return
        raw: list[RawEntry] = []
        for op in OPS:
            new = unread[op][:room]
            for eid in new:
                self.redis.pel[op][eid] = Pending(w.name, 1, self.sim.now)
                self.redis.last_read[op] = id_tuple(eid)
                raw.append(RawEntry(self.keys.work(op), eid, self.redis.streams[op][eid], 1))
        if raw:
            self.hold(w, raw)

    def step_worker(self, w: Worker) -> None:
        """``Consumer._step``."""
        now_s = self.sim.now / US
        self.read(w)
        if isinstance(w.sched.peek(now_s), Batch):
            for e in w.sched.entries:  # _refresh_cancel_marks
                e.cancelled = self.redis.mark_exists(e.ref.request_id, self.sim.now)
        decided = w.sched.next(now_s)
        self.note_dropped(w.sched, decided, lambda e: self.redis.mark_exists(e.ref.request_id, self.sim.now),
                          lambda e: self.rid_to_req[e.ref.request_id])
        out = Outcome()
        for a in answers_of_dropped(decided.dropped):
            out.reply(a.entry.ref, a.code, a.message, a.result)
        if isinstance(decided, Wait):
            self.deliver(out)
            w.state = "idle" if decided.until is None else "waiting"
            self.read(w)  # the blocking read (room may have grown)
            wake = self.sim.now + self.BLOCK if decided.until is None else ticks_of(decided.until)
            self.wake(w, wake)
            return
        ids = tuple(self.rid_to_req[e.ref.request_id] for e in decided.entries)
        for e, rid in zip(decided.entries, ids, strict=True):
            if self.redis.mark_exists(e.ref.request_id, self.sim.now):
                self.problem(f"request {rid} runs although its cancel mark is set")
        self.note_formed(w.sched, decided, ids)
        w.state = "running"
        ticket = self.runtime.draw(decided.op, len(decided.entries), self.sim.now)
        formed_at, gen = self.sim.now, w.gen
        self.sim.at(formed_at + ticket.cost, P_DONE,
                    lambda: self.finish_call(w, gen, decided, formed_at, ticket, out))

    def finish_call(self, w: Worker, gen: int, batch: Batch[WorkItem], formed_at: int, ticket: Ticket,
                    out: Outcome) -> None:
        if w.gen != gen:
            return  # killed during the call: the batch is lost, its entries stay pending
        self.runtime.t, self.runtime.ticket = formed_at / US, ticket
        done = w.sched.run(self.runtime, batch)
        answers = answers_of_batch(batch, done)
        self.note_run(batch, formed_at, done, answers, lambda e: self.rid_to_req[e.ref.request_id])
        for a in answers:
            out.reply(a.entry.ref, a.code, a.message, a.result)
        self.deliver_then_continue(w, gen, out)

    def deliver_then_continue(self, w: Worker, gen: int, out: Outcome) -> None:
        if w.gen != gen:
            return
        win = self.outage()
        if win is not None and win.kind == "stall":
            w.state = "blocked"  # the delivery waits for Redis
            self.sim.at(win.end, P_DONE, lambda: self.deliver_then_continue(w, gen, out))
            return
        w.state = "idle"
        if win is not None:  # down: the answers are lost, the entries stay pending (recovered on reconnect)
            self.redis_down(w)
            return
        self.deliver(out)
        self.publish_stats(w)  # on_batch
        self.wake(w, self.sim.now)

    def deliver(self, out: Outcome) -> None:
        """``streams.deliver``: DELIVER_LUA per stream (XACK; only if XDEL removed the entry: the reply and the
        byte counter), XACK + XDEL of orphans."""
        for stream, args in out.by_stream.items():
            op = self.keys.op_of_stream(stream)
            for i in range(0, len(args), 9):
                eid, nbytes, _reply_key, rid, status, message, dtype, shape, data = args[i: i + 9]
                self.redis.pel[op].pop(str(eid), None)
                if self.redis.streams[op].pop(str(eid), None) is None:
                    continue
                self.redis.used[op] = max(0, self.redis.used[op] - int(nbytes))
                enc = [v if isinstance(v, bytes) else str(v).encode() for v in (rid, status, message, dtype, shape, data)]
                self.on_reply(dict(zip([b"rid", b"status", b"message", b"dtype", b"shape", b"data"], enc, strict=True)))
        for stream, ids in out.orphans.items():
            op = self.keys.op_of_stream(stream)
            for eid in ids:
                self.redis.pel[op].pop(eid, None)
                self.redis.streams[op].pop(eid, None)

    def run(self) -> None:
        last = max([r.deadline for r in self.trace.requests]
                   + [w.end for w in self.trace.faults.redis]
                   + [k.at + k.restart_after for k in self.trace.faults.kills])
        self.sim.run(last + 10 * US, idle=lambda: self.sim.now > last and self.drained())
        if not self.drained():
            self.problem("not drained at the end: " + ", ".join(
                f"{op}: {len(self.redis.streams[op])} entries, {len(self.redis.pel[op])} pending"
                for op in OPS if self.redis.streams[op] or self.redis.pel[op]))
        for op in OPS:
            if self.redis.used[op]:
                self.problem(f"byte counter of {op} is {self.redis.used[op]} with nothing queued")
        for rid, rq in self.rid_to_req.items():
            if self.callers[rq].admitted and self.replies[rid] != 1:
                self.problem(f"request {rq}: {self.replies[rid]} replies written for one admitted entry")

    def drained(self) -> bool:
        return (all(not self.redis.streams[op] and not self.redis.pel[op] for op in OPS)
                and all(w.alive and w.state != "running" for w in self.workers))


# --- checks after a run -------------------------------------------------------------------------------------
def counters() -> dict[str, float]:
    """The counters the core records, read from the real prometheus metrics."""
    out: dict[str, float] = {}

    def get(name: str, c: Any, *labels: str) -> None:
        out[f"{name}{labels}"] = c.labels(*labels)._value.get()

    for op in OPS:
        for reason in ("cancelled", "deadline_exceeded"):
            get("skipped", metrics.ITEMS_SKIPPED, op, reason)
        for where in ("queue", "worker"):
            get("deadline", metrics.DEADLINE_EXCEEDED, op, where)
        get("dead_letters", metrics.DEAD_LETTERS, op, "poison")
        for bucket in (str(IMAGE), str(GRID)):
            get("items", metrics.BATCH_ITEMS, op, bucket)
            for outcome in ("ok", "error"):
                get("batches", metrics.BATCHES, op, bucket, outcome)
    return out


def expected_counters(model: Model) -> dict[str, float]:
    t, where = model.truth, WHERE[model.adapter]
    out: dict[str, float] = {}
    for op in OPS:
        for reason in ("cancelled", "deadline_exceeded"):
            out[f"skipped{(op, reason)}"] = t.skipped[(op, reason)]
        for w in ("queue", "worker"):
            out[f"deadline{(op, w)}"] = t.skipped[(op, "deadline_exceeded")] if w == where else 0
        out[f"dead_letters{(op, 'poison')}"] = t.dead_letters[(op, "poison")]
        for bucket in (str(IMAGE), str(GRID)):
            out[f"items{(op, bucket)}"] = t.items[(op, bucket)]
            for outcome in ("ok", "error"):
                out[f"batches{(op, bucket, outcome)}"] = t.batches[(op, bucket, outcome)]
    return out


def check(model: Model, before: dict[str, float]) -> list[str]:
    """The invariants that hold at the end of a run (plus the ones recorded while it ran)."""
    problems = list(model.problems)
    refusals = {429, 503, 504} if model.adapter == "redis" else {429, 504}
    for c in model.callers.values():
        r = c.req
        if c.answers != 1:
            problems.append(f"request {r.id}: answered {c.answers} times (caller side)")
            continue
        assert c.answered_at is not None and c.status is not None
        if c.refused and (c.admitted or c.status not in refusals):
            problems.append(f"request {r.id}: refused with {c.status} (admitted: {c.admitted})")
        if c.refused and model.adapter == "inprocess" and c.answered_at != r.t:
            problems.append(f"request {r.id}: refused at {c.answered_at}, not at its admission")
        if not c.refused and not c.admitted and not (model.adapter == "redis" and c.status in (499, 504)):
            problems.append(f"request {r.id}: answered {c.status} without being admitted or refused")
        if c.status == 200:
            if c.answered_at >= r.deadline:
                problems.append(f"request {r.id}: 200 at or after its deadline (caller side)")
            if not np.array_equal(c.result, reference(r)):
                problems.append(f"request {r.id}: 200 with another item's result")
        if c.answered_at > r.deadline:
            problems.append(f"request {r.id}: answered after its deadline")
        if c.status == 499 and (r.cancel_at is None or c.answered_at != r.cancel_at):
            problems.append(f"request {r.id}: 499 without its client going away")
    after = counters()
    want = expected_counters(model)
    for k, v in want.items():
        if after[k] - before[k] != v:
            problems.append(f"counter {k}: moved by {after[k] - before[k]:g}, simulated truth {v:g}")
    return problems


def simulate(adapter: str, trace: Trace) -> tuple[Model, list[str]]:
    """Run one trace through one adapter model; the problems found (empty: every invariant held)."""
    model: Model = InProcessModel(trace) if adapter == "inprocess" else RedisModel(trace)
    before = counters()
    model.run()
    return model, check(model, before)
