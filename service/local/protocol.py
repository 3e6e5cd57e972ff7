"""The hand-off between front-end processes and the runtime process: frames on a unix socket, slots in shared memory.

A frame is ``<II`` (header length, body length), a JSON header, then the body (raw array bytes, or nothing).
Each front end owns one ``Slots`` block (``multiprocessing.shared_memory``) of fixed-size slots, each big enough for
any one item's payload and result; it writes a payload into a free slot and sends only the descriptor, the runtime
process reads the payload from the slot when its batch runs and writes the result into the same slot, and the
front end copies the result out when the answer frame arrives and frees the slot. With no slot free (or no block)
the payload and result travel inline in the frames' bodies. A slot stays taken until its item's answer arrives
(every item is answered, cancelled ones too), so the runtime process never reads a slot that was reused; when
the connection to the runtime process is lost, every slot is free again.

Measured on a 2-core host (``bench/local_handoff_bench.py``): a 196 kB image through the socket costs the
front end about 150-500 us of CPU per item and the runtime process 200-340 us; through a slot about 20 us each.

Front end -> runtime:
- ``{"t": "attach", "shm": name, "slots": n, "slot_bytes": b}``: the front end's slot block (after a status).
- ``{"t": "s", "id", "op", "dt", "sh", "dl", "slot"}`` (+ body when ``slot`` is -1): one item; ``dl`` is the
  absolute deadline in wall-clock seconds (``time.time()``), converted from and to each process's monotonic clock.
- ``{"t": "c", "id"}``: the item's caller went away (it is skipped when its batch forms).

Runtime -> front end:
- ``{"t": "st", "phase", "ready", "error", "info", "self_test", "details", "caps", "lanes", "problem"}``: the
  runtime's state, sent on connect, on every change of phase and once a second (liveness).
- ``{"t": "a", "id", "code", "msg", "ra", "dt", "sh", "slot"}`` (+ body when inline): the answer; ``code`` is
  ``ok`` or a code of the one error table (``errors.error_of_code``), ``ra`` its Retry-After seconds, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import struct
import time
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from evotok.export.types import ModelInfo

FRAME = struct.Struct("<II")
MAX_HEADER = 1 << 20
MAX_BODY = 1 << 30


def pack(header: dict[str, Any], body: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """A frame as the buffers to write (the body is not copied)."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    out: list[bytes | memoryview] = [FRAME.pack(len(head), len(body)) + head]
    if len(body):
        out.append(body)
    return out


class FrameWriter:
    """Frames to one peer, written once per event-loop turn: the frames sent in one turn (the items a front end
    submits, the answers of one batch) go out in one write, one system call instead of one each (profiled under
    load: the per-item write was the front end's largest cost after image decoding). Order is kept."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer  # an asyncio.StreamWriter
        self._bufs: list[bytes | memoryview] = []
        self._scheduled = False

    def send(self, header: dict[str, Any], body: bytes | memoryview = b"") -> None:
        self._bufs += pack(header, body)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        bufs, self._bufs = self._bufs, []
        if bufs and not self.writer.is_closing():
            self.writer.writelines(bufs)

    def is_closing(self) -> bool:
        return bool(self.writer.is_closing())

    def close(self) -> None:
        self._flush()
        self.writer.close()


async def read_frame(reader: Any) -> tuple[dict[str, Any], bytes]:
    """One frame from an ``asyncio.StreamReader`` (``IncompleteReadError`` at the end of the stream)."""
    hlen, blen = FRAME.unpack(await reader.readexactly(FRAME.size))
    if hlen > MAX_HEADER or blen > MAX_BODY:
        raise ConnectionError(f"frame too large ({hlen}, {blen}); not an evotok peer")
    header: dict[str, Any] = orjson.loads(await reader.readexactly(hlen))
    body = await reader.readexactly(blen) if blen else b""
    return header, body


def wall_of(monotonic_t: float) -> float:
    """A ``time.monotonic()`` instant as wall-clock seconds (the clock both processes share)."""
    return time.time() + (monotonic_t - time.monotonic())


def monotonic_of(wall_t: float) -> float:
    return time.monotonic() + (wall_t - time.time())


def slot_bytes_for(info: ModelInfo) -> int:
    """The largest payload or result of one item of any op for this model (a slot holds either)."""
    s, g = info.image_size, info.grid
    return max(s * s * 3, g * g * info.num_depths * 2, g * g * info.semantic_dim * 4)


def array_of(buf: Any, dtype: str, shape: list[int], offset: int = 0) -> npt.NDArray[Any]:
    """A view of ``buf`` as an array (no copy)."""
    dt = np.dtype(dtype)
    count = math.prod(shape)
    return np.frombuffer(buf, dt, count, offset).reshape(shape)


class Slots:
    """A front end's shared-memory block of ``n`` slots of ``size`` bytes; the last freed slot is reused first
    (the pages in use stay few and warm)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size
        self.shm = shared_memory.SharedMemory(name=f"evotok-{os.getpid()}-{secrets.token_hex(4)}", create=True,
                                              size=n * size)
        self._free = list(range(n - 1, -1, -1))

    @property
    def name(self) -> str:
        return str(self.shm.name)

    @property
    def buf(self) -> memoryview:
        buf = self.shm.buf
        assert buf is not None, "slot block closed"
        return buf

    def take(self) -> int | None:
        return self._free.pop() if self._free else None

    def give(self, slot: int) -> None:
        self._free.append(slot)

    def reset(self) -> None:
        self._free = list(range(self.n - 1, -1, -1))

    def put(self, slot: int, arr: npt.NDArray[Any]) -> None:
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        np.frombuffer(self.buf, np.uint8, flat.size, slot * self.size)[:] = flat

    def get(self, slot: int, dtype: str, shape: list[int]) -> npt.NDArray[Any]:
        """A copy of what slot ``slot`` holds."""
        return array_of(self.buf, dtype, shape, slot * self.size).copy()

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view is still alive somewhere; the mapping goes with the process
            self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


def attach(name: str) -> shared_memory.SharedMemory:
    """Map a front end's block in the runtime process. The front end owns it (its resource tracker unlinks it
    when it dies), so it is unregistered here: this process must not unlink it on exit."""
    shm = shared_memory.SharedMemory(name=name)
    with contextlib.suppress(Exception):  # the tracker's bookkeeping only
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm
