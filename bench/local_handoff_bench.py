"""How front-end processes hand items to the runtime process: the measurement behind ``service/local/``.

Usage::

    python bench/local_handoff_bench.py [--seconds 3] [--inflight 32]

Two hand-offs over one unix-domain socket, the runtime side an echo that answers each item with a result of
the op's size (no model), the front-end side an asyncio client keeping ``--inflight`` items outstanding:

- ``socket``: a length-prefixed frame carries the header and the raw payload bytes; the answer carries the
  result bytes the same way (what ``service/local/protocol.py`` does);
- ``shm``: a ``multiprocessing.shared_memory`` block of slots holds payloads and results; the socket carries
  only the slot descriptors (the client copies the payload in and the result out, the echo reads the slot and
  writes the result into it).

Payloads are the ones the service moves: ``encode`` = a (256, 256, 3) uint8 image in, (16, 16, 16) uint16 codes
out; ``decode`` the other way round. Printed per hand-off and op: items/s, and the CPU microseconds per item
spent by each side (``/proc``), which is what a front end has to spare on a busy host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import struct
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

HEAD = struct.Struct("<III")  # item id, slot (or payload length), result length
IMAGE = 256 * 256 * 3
CODES = 16 * 16 * 16 * 2
SIZES = {"encode": (IMAGE, CODES), "decode": (CODES, IMAGE)}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _echo(path: str, mode: str, op: str, slots: int) -> None:
    n_in, n_out = SIZES[op]
    result = bytes(n_out)
    shm = shared_memory.SharedMemory(name=f"evotok-hb-{os.getppid()}") if mode == "shm" else None
    slot_bytes = max(n_in, n_out)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                item, arg, _ = HEAD.unpack(await reader.readexactly(HEAD.size))
                if mode == "socket":
                    payload = np.frombuffer(await reader.readexactly(arg), np.uint8)
                    _ = payload[0]
                    writer.write(HEAD.pack(item, n_out, 0) + result)
                else:
                    assert shm is not None
                    view = np.frombuffer(shm.buf, np.uint8, slot_bytes, arg * slot_bytes)
                    _ = view[0]
                    view[:n_out] = 0  # the result written into the slot
                    del view
                    writer.write(HEAD.pack(item, arg, n_out))
        except asyncio.IncompleteReadError:
            writer.close()
            loop.stop()

    loop = asyncio.get_running_loop()
    await asyncio.start_unix_server(handle, path)
    await asyncio.Event().wait()


def _serve(argv: list[str]) -> None:
    path, mode, op, slots = argv[0], argv[1], argv[2], int(argv[3])
    loop = asyncio.new_event_loop()
    task = loop.create_task(_echo(path, mode, op, slots))
    loop.run_forever()
    task.cancel()


async def _client(path: str, mode: str, op: str, seconds: float, inflight: int,
                  shm: shared_memory.SharedMemory | None) -> int:
    n_in, n_out = SIZES[op]
    slot_bytes = max(n_in, n_out)
    payload = np.random.default_rng(0).integers(0, 256, n_in, dtype=np.uint8)
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            break
        except OSError:
            await asyncio.sleep(0.05)
    waiters: dict[int, asyncio.Future[bytes]] = {}
    free = list(range(inflight))

    async def read_loop() -> None:
        while True:
            item, arg, n = HEAD.unpack(await reader.readexactly(HEAD.size))
            if mode == "socket":
                out = await reader.readexactly(arg)
            else:
                assert shm is not None
                out = bytes(shm.buf[arg * slot_bytes: arg * slot_bytes + n])  # the result copied out of the slot
                free.append(arg)
            waiters.pop(item).set_result(out)

    reader_task = asyncio.create_task(read_loop())
    done = 0
    stop = time.perf_counter() + seconds
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        nonlocal done
        item = i
        while time.perf_counter() < stop:
            fut: asyncio.Future[bytes] = loop.create_future()
            waiters[item] = fut
            if mode == "socket":
                writer.write(HEAD.pack(item, n_in, 0) + payload.tobytes())
            else:
                assert shm is not None
                slot = free.pop()
                shm.buf[slot * slot_bytes: slot * slot_bytes + n_in] = payload.data  # the payload copied in
                writer.write(HEAD.pack(item, slot, 0))
            await fut
            done += 1
            item += inflight

    await asyncio.gather(*(one(i) for i in range(inflight)))
    reader_task.cancel()
    writer.close()
    return done


def run(mode: str, op: str, seconds: float, inflight: int) -> dict[str, float]:
    import subprocess

    path = tempfile.mktemp(prefix="evotok-hb-", suffix=".sock")
    shm = None
    if mode == "shm":
        shm = shared_memory.SharedMemory(name=f"evotok-hb-{os.getpid()}", create=True,
                                         size=inflight * max(SIZES[op]))
    proc = subprocess.Popen([sys.executable, __file__, "_serve", path, mode, op, str(inflight)])
    try:
        time.sleep(0.3)
        s0, c0 = _cpu_s(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        n = asyncio.run(_client(path, mode, op, seconds, inflight, shm))
        elapsed = time.perf_counter() - t0
        s1, c1 = _cpu_s(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        proc.kill()
        proc.wait()
        Path(path).unlink(missing_ok=True)
        if shm is not None:
            shm.close()
            shm.unlink()
    client_s = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"items_per_s": n / elapsed, "front_us": 1e6 * client_s / n, "runtime_us": 1e6 * (s1 - s0) / n}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_serve":
        _serve(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--inflight", type=int, default=32)
    args = p.parse_args(argv)
    print("| hand-off | op | items/s | front-end CPU us/item | runtime CPU us/item |\n|---|---|---|---|---|")
    for op in ("encode", "decode"):
        for mode in ("socket", "shm"):
            r = run(mode, op, args.seconds, args.inflight)
            print(f"| {mode} | {op} | {r['items_per_s']:.0f} | {r['front_us']:.0f} | {r['runtime_us']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
