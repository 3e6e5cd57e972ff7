"""The runtime process: one per device, fed by every front-end process through a unix socket.

``python -m evotok.service.local.runtime_proc`` (started by ``supervisor.py``; the socket path in
``EVOTOK_LOCAL_SOCKET``). It listens first, then builds and prepares the Runtime with the one start-up path
(``InProcessBatcher.prepare`` -> ``startup.start_runtime``: load, warm-up, golden self-test, caps). Each item
received becomes ``InProcessBatcher.submit`` on this process's event loop: the same admission rule (per-op bound
``EVOTOK_MAX_QUEUE_SIZE`` over all front ends, ``parallel`` = its lanes), the same ``step.Scheduler`` forming
batches over the items of all front ends, the same answers (an error travels as its code and message). A cancel
frame, or the front end's connection closing, cancels the item's wait, so the core skips it as ``cancelled``.
SIGTERM drains: no new items, admitted ones run, then the Runtime closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evotok.service import metrics
from evotok.service.core import OPS, Op
from evotok.service.errors import ServiceError
from evotok.service.inprocess import InProcessBatcher
from evotok.service.local import protocol
from evotok.service.runtime_setup import base_policy, build_runtime
from evotok.service.settings import Settings
from evotok.service.startup import configure_logging
from evotok.service.state import ServiceState

log = logging.getLogger("evotok.service.local.runtime")
_MAPPED: list[Any] = []  # front ends' slot blocks, mapped for the process's life (a lane may still read one)


class Conn:
    """One front end's connection: its writer, its slot block and its items in flight."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.out = protocol.FrameWriter(writer)  # a batch's answers in one write
        self.shm: Any = None
        self.slot_bytes = 0
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def send(self, header: dict[str, Any], body: bytes | memoryview = b"") -> None:
        self.out.send(header, body)


class RuntimeServer:
    def __init__(self, settings: Settings, socket_path: Path) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.batcher = InProcessBatcher(base_policy(settings), settings.max_queue_size,
                                        runtime_factory=lambda: build_runtime(settings),
                                        hang_s=settings.runtime_hang_s)
        self.state = ServiceState(settings=settings, batcher=self.batcher)
        self.conns: set[Conn] = set()
        self._last_phase = ""

    def status(self) -> dict[str, Any]:
        st, b = self.state, self.batcher
        return {"t": "st", "phase": st.phase, "ready": st.not_ready_reason() is None, "error": st.startup_error,
                "info": None if st.info is None else dataclasses.asdict(st.info),
                "self_test": None if st.self_test is None else dataclasses.asdict(st.self_test),
                "details": st.details, "caps": b.batch_caps(), "lanes": b.runtime_lanes(),
                "problem": b.liveness_problem(), "pid": os.getpid()}

    def broadcast(self) -> None:
        msg = self.status()
        for c in list(self.conns):
            c.send(msg)

    async def ticker(self) -> None:
        """Status to every front end on a phase change and once a second; the queue gauges for the scrape."""
        n = 0
        while True:
            await asyncio.sleep(0.05)
            n += 1
            if self.state.phase != self._last_phase or n >= 20:
                self._last_phase, n = self.state.phase, 0
                self.broadcast()
                self.batcher.publish_gauges()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer)
        self.conns.add(conn)
        conn.send(self.status())
        try:
            while True:
                header, body = await protocol.read_frame(reader)
                kind = header.get("t")
                if kind == "s":
                    item = int(header["id"])
                    conn.tasks[item] = asyncio.ensure_future(self.run_item(conn, header, body))
                elif kind == "c":
                    task = conn.tasks.get(int(header["id"]))
                    if task is not None:
                        task.cancel()
                elif kind == "attach":
                    conn.shm, conn.slot_bytes = protocol.attach(str(header["shm"])), int(header["slot_bytes"])
                    _MAPPED.append(conn.shm)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("bad frame from a front end; closing its connection")
        finally:  # the front end went away: its callers are gone, so are its items
            self.conns.discard(conn)
            for task in list(conn.tasks.values()):
                task.cancel()
            writer.close()

    async def run_item(self, conn: Conn, h: dict[str, Any], body: bytes) -> None:
        item, slot = int(h["id"]), int(h["slot"])
        answer: dict[str, Any] = {"t": "a", "id": item, "code": "ok", "msg": "", "ra": None, "slot": -1}
        out: bytes | memoryview = b""
        try:
            op: Op = h["op"]
            if op not in OPS:
                raise ServiceError(f"unknown op {op!r}")
            if slot >= 0:
                payload = protocol.array_of(conn.shm.buf, h["dt"], h["sh"], slot * conn.slot_bytes)
            else:
                payload = protocol.array_of(body, h["dt"], h["sh"])
            result = np.ascontiguousarray(await self.batcher.submit(op, payload, protocol.monotonic_of(h["dl"])))
            answer.update(dt=result.dtype.str, sh=list(result.shape))
            if slot >= 0 and result.nbytes <= conn.slot_bytes:
                start = slot * conn.slot_bytes
                np.frombuffer(conn.shm.buf, np.uint8, result.nbytes, start)[:] = result.reshape(-1).view(np.uint8)
                answer["slot"] = slot
            else:
                out = result.data.cast("B")
        except asyncio.CancelledError:
            answer.update(code="client_closed_request", msg="client went away")
        except ServiceError as exc:
            answer.update(code=exc.code, msg=exc.message, ra=exc.retry_after_s)
        except Exception as exc:  # a bug: answered, logged
            log.exception("item %d failed", item)
            answer.update(code="internal", msg=f"{type(exc).__name__}")
        finally:
            conn.tasks.pop(item, None)
        conn.send(answer, out)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.socket_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self.handle, str(self.socket_path), limit=1 << 20)
        await self.batcher.start()
        loader = asyncio.create_task(self.batcher.prepare(self.state))
        ticker = asyncio.create_task(self.ticker())
        log.info("runtime process %d listening on %s", os.getpid(), self.socket_path)
        await stop.wait()
        log.info("runtime process draining")
        self.state.phase = "draining"
        metrics.READY.set(0)
        self.broadcast()
        if not loader.done():
            loader.cancel()
        await self.batcher.drain(timeout_s=self.settings.request_timeout_s)
        await asyncio.sleep(0.05)  # the last answers leave
        ticker.cancel()
        server.close()
        for c in list(self.conns):
            c.writer.close()
        metrics.mark_process_dead()


def main() -> int:
    settings = Settings()
    configure_logging(settings)
    path = os.environ.get("EVOTOK_LOCAL_SOCKET")
    if not path:
        sys.stderr.write("evotok runtime process: EVOTOK_LOCAL_SOCKET is not set (started by `evotok serve`)\n")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(RuntimeServer(settings, Path(path)).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
