"""``LocalBatcher``: the front-end side of the local adapter (``Batcher`` for the routes of a front-end process).

``submit`` writes the payload into a free shared-memory slot (``protocol.Slots``; inline in the frame when none
is free), sends the item's descriptor with its absolute deadline to the runtime process and awaits the answer
until the deadline (504), turning an error answer into ``errors.error_of_code(code, message)`` (429 keeps its
Retry-After). When its caller goes away (the task is cancelled) or the deadline passes, a cancel frame tells the
runtime process to skip the item. The connection is kept by one task that reconnects while the runtime process
is restarted: when it is lost, every item in flight is answered 503 ``not_ready`` at once (with Retry-After),
and the front end is not ready until a runtime process says it is (its golden self-test passed).
Admission, batching, deadlines in the queue and run-time estimates are the runtime process's (the one core).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evotok.export.types import ModelInfo, SelfTestResult
from evotok.service import metrics
from evotok.service.batcher import Batcher, BatcherStats
from evotok.service.core import Op
from evotok.service.errors import DeadlineExceeded, NotReady, error_of_code
from evotok.service.local import protocol

if TYPE_CHECKING:
    from evotok.service.settings import Settings
    from evotok.service.state import ServiceState

log = logging.getLogger(__name__)
Array = Any
SLOTS = 64  # shared-memory slots per front end (items beyond travel inline)


@dataclass
class Pending:
    future: asyncio.Future[Array]
    slot: int  # -1: inline
    op: Op


class LocalBatcher(Batcher):
    def __init__(self, settings: Settings, socket_path: Path | str, slots: int = SLOTS) -> None:
        self.settings = settings
        self.socket_path = str(socket_path)
        self.n_slots = slots
        self.slots: protocol.Slots | None = None
        self._status: dict[str, Any] | None = None  # the runtime process's last status (None: not connected)
        self._writer: protocol.FrameWriter | None = None
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._state: ServiceState | None = None
        self._draining = False
        self.connects = 0  # connections made (1 + reconnects)
        self.lost = 0  # items answered 503 because the runtime process went away

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._keep_connected(), name="evotok-local-conn")

    async def prepare(self, state: ServiceState) -> None:
        """The model card, self-test and readiness come from the runtime process's status frames."""
        self._state = state
        state.phase = "waiting for the runtime process"
        if self._status is not None:
            self._apply(self._status)

    async def _keep_connected(self) -> None:
        while not self._draining:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 20)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.connects += 1
            out = self._writer = protocol.FrameWriter(writer)
            try:
                await self._read(reader, out)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            except Exception:
                log.exception("runtime connection failed")
            finally:
                self._lose(out)
            if not self._draining:
                log.warning("connection to the runtime process lost; reconnecting")
                await asyncio.sleep(0.05)

    def _lose(self, writer: protocol.FrameWriter) -> None:
        self._writer, self._status = None, None
        writer.close()
        metrics.READY.set(0)
        if self._state is not None and not self._draining:
            self._state.phase = "waiting for the runtime process"
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                self.lost += 1
                p.future.set_exception(NotReady("the runtime process went away while this request was in "
                                                "flight; retry", retry_after_s=1.0))
        if self.slots is not None:
            self.slots.reset()  # nobody reads them any more

    async def _read(self, reader: asyncio.StreamReader, writer: protocol.FrameWriter) -> None:
        attached = False  # the slot block is announced on each connection, once the model's size is known
        while True:
            header, body = await protocol.read_frame(reader)
            kind = header.get("t")
            if kind == "a":
                self._answer(header, body)
            elif kind == "st":
                self._status = header
                if not attached and header.get("info"):
                    self._attach(writer, header)
                    attached = True
                self._apply(header)

    def _attach(self, writer: protocol.FrameWriter, status: dict[str, Any]) -> None:
        """Make (once) this front end's slot block for the model's item size and tell the runtime process."""
        size = protocol.slot_bytes_for(ModelInfo(**status["info"]))
        if self.slots is not None and self.slots.size != size:
            self.slots.close()
            self.slots = None
        if self.slots is None and self.n_slots > 0:
            try:
                self.slots = protocol.Slots(self.n_slots, size)
            except OSError as exc:  # no /dev/shm: every item travels inline
                log.warning("no shared memory for the hand-off (%s); payloads go through the socket", exc)
                self.n_slots = 0
        if self.slots is not None:
            writer.send({"t": "attach", "shm": self.slots.name, "slots": self.slots.n,
                         "slot_bytes": self.slots.size})

    def _apply(self, st: dict[str, Any]) -> None:
        state = self._state
        if state is None or state.phase == "draining":
            return
        if st.get("info"):
            info = dict(st["info"])
            info["providers"] = tuple(info.get("providers", ()))
            info["semantic_by_depth"] = tuple(info.get("semantic_by_depth", ()))
            state.info = ModelInfo(**info)
        if st.get("self_test"):
            t = dict(st["self_test"])
            t["agreement_by_depth"] = tuple(t.get("agreement_by_depth", ()))
            state.self_test = SelfTestResult(**t)
        state.details.update(st.get("details") or {})
        state.startup_error = st.get("error")
        phase = str(st.get("phase", "starting"))
        state.phase = "runtime draining" if phase == "draining" else phase  # "draining" is this process's own
        metrics.READY.set(1 if self._ready() else 0)

    def _answer(self, h: dict[str, Any], body: bytes) -> None:
        p = self._pending.pop(int(h["id"]), None)
        if p is None:
            return
        slot = int(h.get("slot", -1))
        try:
            if p.future.done():  # its caller gave up (deadline, client gone)
                return
            code = h["code"]
            if code == "ok":
                if slot >= 0 and self.slots is not None:
                    p.future.set_result(self.slots.get(slot, h["dt"], h["sh"]))
                else:
                    p.future.set_result(protocol.array_of(body, h["dt"], h["sh"]).copy())
                return
            exc = error_of_code(code, h.get("msg", ""))
            if h.get("ra") is not None:
                exc.retry_after_s = float(h["ra"])
            p.future.set_exception(exc)
        finally:
            if p.slot >= 0 and self.slots is not None:
                self.slots.give(p.slot)

    # --- the Batcher interface ----------------------------------------------------------------------
    def _ready(self) -> bool:
        st = self._status
        return self._writer is not None and st is not None and bool(st.get("ready")) and not self._draining

    def stats(self) -> BatcherStats:
        n = len(self._pending)
        return BatcherStats(queued=n, in_flight=n, oldest_age_s=0.0, ready=self._ready(), draining=self._draining)

    def liveness_problem(self) -> str | None:
        """The runtime process's own (a runtime call hung past ``EVOTOK_RUNTIME_HANG_S``), as today."""
        st = self._status
        problem = None if st is None else st.get("problem")
        return None if problem is None else str(problem)

    def batch_caps(self) -> dict[str, Any] | None:
        st = self._status
        caps = None if st is None else st.get("caps")
        return None if caps is None else dict(caps)

    def runtime_lanes(self) -> int | None:
        st = self._status
        lanes = None if st is None else st.get("lanes")
        return None if lanes is None else int(lanes)

    async def submit(self, op: Op, payload: Array, deadline: float) -> Array:
        if self._draining:
            raise NotReady("server is draining; retry on another replica")
        writer = self._writer
        if writer is None or not self._ready():
            raise NotReady("the runtime process is not ready; see GET /readyz", retry_after_s=1.0)
        now = time.monotonic()
        if deadline <= now:
            metrics.DEADLINE_EXCEEDED.labels(op, "api").inc()
            raise DeadlineExceeded("request deadline passed before it was queued")
        arr = np.ascontiguousarray(payload)
        item = next(self._ids)
        slot = -1
        if self.slots is not None and arr.nbytes <= self.slots.size:
            taken = self.slots.take()
            if taken is not None:
                slot = taken
                self.slots.put(slot, arr)
        header = {"t": "s", "id": item, "op": op, "dt": arr.dtype.str, "sh": list(arr.shape),
                  "dl": protocol.wall_of(deadline), "slot": slot}
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Array] = loop.create_future()
        self._pending[item] = Pending(future, slot, op)
        writer.send(header, b"" if slot >= 0 else arr.data.cast("B"))
        # one timer instead of wait_for's waiter and callbacks; the runtime process counts its own deadline drop
        timer = loop.call_later(deadline - now, self._expire, future, deadline - now)
        try:
            return await future
        except (DeadlineExceeded, asyncio.CancelledError):  # past its deadline, or its caller is gone
            self._cancel(item, writer)
            raise
        finally:
            timer.cancel()

    @staticmethod
    def _expire(future: asyncio.Future[Array], budget_s: float) -> None:
        if not future.done():
            future.set_exception(DeadlineExceeded(f"no result within the request deadline ({budget_s:.3f} s)"))

    def _cancel(self, item: int, writer: protocol.FrameWriter) -> None:
        """The caller is gone: the runtime process skips the item (its answer still frees the slot)."""
        if item in self._pending and writer is self._writer and not writer.is_closing():
            writer.send({"t": "c", "id": item})

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, wait for the answers of what this front end sent (up to ``timeout_s``), answer the
        rest ``not_ready``, close the connection and the slot block."""
        self._draining = True
        end = time.monotonic() + timeout_s
        while self._pending and self._writer is not None and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(NotReady("server is shutting down"))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._writer is not None:
            self._writer.close()
        if self.slots is not None:
            self.slots.close()
            self.slots = None
