"""``evotok bench queue``: in-process batching vs Redis Streams batching with 1 and 2 workers.

One run measures, at the same client concurrency (default 32) and the same BatchPolicy:

- ``inprocess``: ``InProcessBatcher`` with the runtime in this process;
- ``redis-1w`` / ``redis-2w``: ``RedisBatcher`` in this process, a private ``redis-server`` (free port, no
  persistence, stopped by PID) and 1 or 2 ``evotok worker`` processes.

The client calls ``Batcher.submit("encode", ...)`` directly (no HTTP), so the numbers isolate the batching
path. Default runtime: FakeRuntime with a fixed ``--delay-ms`` per batch (the cost of one runtime call
independent of the machine: capacity per worker = max_batch_size / delay). ``--runtime real`` serves the
model in ``EVOTOK_WEIGHTS`` with ``EVOTOK_BACKEND`` (on a shared CPU two workers compete for the cores).

Prints a Markdown table (throughput items/s, p50/p95 ms, errors); ``--json`` writes the raw results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evotok.tools.procs import RedisServer


@dataclass
class Result:
    mode: str
    workers: int
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    throughput: float  # items/s
    p50_ms: float
    p95_ms: float


@contextlib.contextmanager
def _redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop(signal.SIGTERM)


async def _drive(batcher: Any, payloads: list[np.ndarray], concurrency: int, warmup_s: float,
                 duration_s: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    measure_from = start + warmup_s
    end = measure_from + duration_s

    async def client(k: int) -> None:
        nonlocal errors
        i = k
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                await batcher.submit("encode", payloads[i % len(payloads)], t0 + 30.0)
                ok = True
            except Exception:
                ok = False
            t1 = time.monotonic()
            if t0 >= measure_from:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1
            i += concurrency

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies, errors, duration_s


def _result(mode: str, workers: int, concurrency: int, lat: list[float], errors: int, dur: float) -> Result:
    arr = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return Result(mode, workers, concurrency, dur, len(lat), errors, len(lat) / dur,
                  float(np.percentile(arr, 50)), float(np.percentile(arr, 95)))


def _runtime(kind: str, delay_ms: float) -> Any:
    if kind == "fake":
        from evotok.export.fake import FakeRuntime

        return FakeRuntime(delay_s=delay_ms / 1000)
    from evotok.service.settings import Settings
    from evotok.service.worker import build_runtime

    return build_runtime(Settings(), fake=False, fake_delay_ms=0)


async def _inprocess(args: argparse.Namespace, payloads: list[np.ndarray]) -> Result:
    from evotok.service.batcher import BatchPolicy
    from evotok.service.inprocess import InProcessBatcher

    batcher = InProcessBatcher(BatchPolicy(args.max_batch_size, args.max_queue_delay_ms / 1000), 4096)
    await batcher.start()
    runtime = await batcher.run_in_worker(lambda: _runtime(args.runtime, args.delay_ms))
    batcher.attach(runtime)
    try:
        lat, errors, dur = await _drive(batcher, payloads, args.concurrency, args.warmup_s, args.duration_s)
    finally:
        await batcher.drain(5)
    return _result("inprocess", 1, args.concurrency, lat, errors, dur)


async def _redis(args: argparse.Namespace, payloads: list[np.ndarray], n_workers: int, info: Any) -> Result:
    import redis

    from evotok.service.redis_queue import RedisBatcher
    from evotok.service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="evotok-qbench-") as tmp, _redis(Path(tmp)) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        env = {**os.environ, "EVOTOK_REDIS_URL": url, "EVOTOK_MAX_BATCH_SIZE": str(args.max_batch_size),
               "EVOTOK_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms), "EVOTOK_LOG_LEVEL": "warning",
               "EVOTOK_WORKER_HEARTBEAT_S": "1.0"}
        fake = ["--fake-runtime", "--fake-delay-ms", str(args.delay_ms)] if args.runtime == "fake" else []
        procs = [subprocess.Popen([sys.executable, "-m", "evotok.cli", "worker", "--name", f"bench-w{i}",
                                   "--metrics-port", "0", "--metrics-host", "127.0.0.1", *fake], env=env)
                 for i in range(n_workers)]
        try:
            client = redis.Redis(port=server.port)
            end = time.monotonic() + 300
            while client.zcard("evotok:workers") < n_workers:
                if time.monotonic() > end or any(p.poll() is not None for p in procs):
                    raise RuntimeError("workers did not start")
                time.sleep(0.1)
            client.close()
            settings = Settings(queue="redis", redis_url=url, max_batch_size=args.max_batch_size,
                                max_queue_delay_ms=args.max_queue_delay_ms, redis_max_entries=100_000,
                                worker_heartbeat_s=1.0)
            batcher = RedisBatcher(settings, info)
            await batcher.start()
            try:
                lat, errors, dur = await _drive(batcher, payloads, args.concurrency, args.warmup_s, args.duration_s)
            finally:
                await batcher.drain(5)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    return _result("redis", n_workers, args.concurrency, lat, errors, dur)


def markdown(results: list[Result]) -> str:
    base = next((r.throughput for r in results if r.mode == "inprocess"), None)
    lines = ["| path | workers | concurrency | items/s | vs in-process | p50 ms | p95 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rel = f"{r.throughput / base:.0%}" if base else "-"
        lines.append(f"| {r.mode} | {r.workers} | {r.concurrency} | {r.throughput:.1f} | {rel} | {r.p50_ms:.1f} | "
                     f"{r.p95_ms:.1f} | {r.errors} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok bench queue", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", choices=["fake", "real"], default="fake")
    p.add_argument("--delay-ms", type=float, default=20.0, help="fake runtime: seconds per batch, in ms")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--workers", default="1,2", help="Redis worker counts to run")
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args(argv)

    runtime = _runtime(args.runtime, 0.0)
    info = runtime.info
    rng = np.random.default_rng(0)
    payloads = [rng.integers(0, 256, (info.image_size, info.image_size, 3), dtype=np.uint8) for _ in range(64)]
    results = [asyncio.run(_inprocess(args, payloads))]
    for n in (int(x) for x in args.workers.split(",") if x):
        results.append(asyncio.run(_redis(args, payloads, n, info)))
    sys.stdout.write(markdown(results) + "\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
