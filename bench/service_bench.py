"""Service benchmark: the same model and backend served with batching off (max_batch_size=1) vs on, a
closed-loop concurrency sweep (1..32 clients), and the runtime's own best batched throughput without HTTP.

Usage::

    evotok bench service                               # shipped model, ONNX Runtime CPU, POST /encode
    evotok bench service --concurrency 1,8,32 --duration 10 --max-batch-size 16 --json bench.json
    evotok bench service --fake                        # FakeRuntime (checks the harness, not a model)

Each configuration runs in its own uvicorn server subprocess (``python bench/service_bench.py _serve``) on a
free port; the load generator is this process (httpx, one connection per client). Every request posts the same
256x256 PNG photo (scikit-image ``chelsea``, centre-cropped), so image decoding is part of the served cost.
Reported per configuration and concurrency: throughput (images/s), p50/p95/p99 latency (ms), error count and
the server's mean batch size (from ``/metrics``). The runtime limit is ``max over B of B / t(encode(B))``
measured in this process after the servers have stopped. Prints a markdown table; ``--json`` writes all numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


@dataclass
class Level:
    config: str  # "off" | "on"
    max_batch_size: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # successful images / s
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float  # server-side mean batch size during this level


# --- the server subprocess ------------------------------------------------------------------------------------
def _serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fake", action="store_true")
    p.add_argument("--fake-delay-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    import uvicorn

    from evotok.service.app import create_app
    from evotok.service.settings import Settings

    factory = None
    if args.fake:
        from evotok.export.fake import FakeRuntime
        from evotok.export.types import SelfTestResult

        class BenchFake(FakeRuntime):
            """FakeRuntime whose per-batch cost is ``delay + 10 % of delay per extra item`` (harness check only)."""

            def _sleep(self, n: int) -> None:
                time.sleep(args.fake_delay_ms / 1000 * (1 + 0.1 * (n - 1)))

            def self_test(self, golden_path: Path | None = None, threshold: float = 1.0) -> SelfTestResult:
                return SelfTestResult(1.0, (1.0,), None, 0, True, threshold, {"reason": "fake runtime"})

        factory = lambda: BenchFake(image_size=256, grid=16, num_depths=16)  # noqa: E731
    uvicorn.run(create_app(Settings(), runtime_factory=factory), host="127.0.0.1", port=args.port,
                log_level="warning")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "EVOTOK_MAX_BATCH_SIZE": str(max_batch),
           "EVOTOK_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms), "EVOTOK_BACKEND": args.backend,
           "EVOTOK_WARMUP_BATCH_SIZES": json.dumps(sorted({1, max_batch})), "EVOTOK_MAX_QUEUE_SIZE": "1024"}
    if args.weights:
        env["EVOTOK_WEIGHTS"] = args.weights
    if args.threads:
        env["EVOTOK_THREADS"] = str(args.threads)
    cmd = [sys.executable, str(HERE), "_serve", "--port", str(port)]
    if args.fake:
        cmd += ["--fake", "--fake-delay-ms", str(args.fake_delay_ms)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    import httpx

    end = time.monotonic() + args.startup_timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- load generation -------------------------------------------------------------------------------------------
def _photo_png(size: int) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    try:
        from skimage import data

        arr = data.chelsea()
    except ImportError:  # pragma: no cover - scikit-image is in the train extra
        arr = (np.random.default_rng(0).random((300, 450, 3)) * 255).astype(np.uint8)
    from evotok.service.imaging import fit_to_model

    crop = fit_to_model(Image.fromarray(arr), size, "center-crop")
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return buf.getvalue(), crop


def _batch_stats(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("evotok_batch_size_sum{") and 'endpoint="encode"' in line:
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("evotok_batch_size_count{") and 'endpoint="encode"' in line:
            count += float(line.rsplit(" ", 1)[1])
    return total, count


async def _closed_loop(url: str, body: bytes, concurrency: int, duration: float) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post("/encode", content=body, headers={"content-type": "image/png",
                                                                         "accept": "application/x-npy"})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def _run_config(args: argparse.Namespace, name: str, max_batch: int, body: bytes) -> list[Level]:
    proc, url = _start_server(args, max_batch)
    out = []
    try:
        asyncio.run(_closed_loop(url, body, 2, 1.0))  # warm connections and caches
        for c in args.concurrency:
            s0, n0 = _batch_stats(url)
            lat, errors, elapsed = asyncio.run(_closed_loop(url, body, c, args.duration))
            s1, n1 = _batch_stats(url)
            ms = np.array(lat) * 1000 if lat else np.array([float("nan")])
            level = Level(name, max_batch, c, len(lat), errors, elapsed, len(lat) / elapsed,
                          float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
                          (s1 - s0) / max(n1 - n0, 1))
            out.append(level)
            sys.stderr.write(f"[{name} b={max_batch}] c={c}: {level.throughput:.1f} img/s p95 {level.p95_ms:.1f} ms "
                             f"mean batch {level.mean_batch:.2f}\n")
    finally:
        _stop(proc)
    return out


def _runtime_limit(args: argparse.Namespace, crop: np.ndarray) -> dict[str, Any]:
    if args.fake:
        # the fake's cost model: (delay * (1 + 0.1 (B-1))) per batch of B
        per = {b: b / (args.fake_delay_ms / 1000 * (1 + 0.1 * (b - 1))) for b in (1, 2, 4, 8, 16, 32)}
        best = max(per, key=lambda b: per[b])
        return {"items_per_s_by_batch": per, "best_batch": best, "best_items_per_s": per[best], "note": "fake cost model"}
    from evotok.export.runtime import load_runtime

    options: dict[str, Any] = {}
    if args.threads:
        options["threads"] = args.threads
    runtime = load_runtime(args.weights, args.backend, **options)
    per = {}
    for b in (1, 2, 4, 8, 16, 32):
        batch = np.repeat(crop[None], b, axis=0)
        runtime.encode(batch)  # warm this shape
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.limit_seconds or n < 2:
            runtime.encode(batch)
            n += 1
        per[b] = b * n / (time.perf_counter() - t0)
        sys.stderr.write(f"[runtime] B={b}: {per[b]:.1f} img/s\n")
    runtime.close()
    best = max(per, key=lambda k: per[k])
    return {"items_per_s_by_batch": per, "best_batch": best, "best_items_per_s": per[best]}


def _markdown(levels: list[Level], limit: dict[str, Any], args: argparse.Namespace) -> str:
    rows = ["| batching | max batch | clients | img/s | p50 ms | p95 ms | p99 ms | mean batch | errors |",
            "|---|---|---|---|---|---|---|---|---|"]
    for lv in levels:
        rows.append(f"| {lv.config} | {lv.max_batch_size} | {lv.concurrency} | {lv.throughput:.1f} | {lv.p50_ms:.1f} | "
                    f"{lv.p95_ms:.1f} | {lv.p99_ms:.1f} | {lv.mean_batch:.2f} | {lv.errors} |")
    best_served = max((lv.throughput for lv in levels if lv.config == "on"), default=0.0)
    top = max(args.concurrency)
    off = next((lv for lv in levels if lv.config == "off" and lv.concurrency == top), None)
    on = next((lv for lv in levels if lv.config == "on" and lv.concurrency == top), None)
    rows.append("")
    rows.append(f"Runtime limit without HTTP: {limit['best_items_per_s']:.1f} img/s at B={limit['best_batch']}; "
                f"best served (batching on): {best_served:.1f} img/s = "
                f"{100 * best_served / limit['best_items_per_s']:.0f} % of the limit.")
    if off and on:
        rows.append(f"At {top} clients: batching on / off throughput = {on.throughput / max(off.throughput, 1e-9):.2f}x, "
                    f"p95 {on.p95_ms:.0f} ms vs {off.p95_ms:.0f} ms.")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_serve":
        return _serve(argv[1:])
    p = argparse.ArgumentParser(prog="evotok bench service", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--threads", type=int, default=0, help="runtime intra-op threads (0 = library default)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level")
    p.add_argument("--max-batch-size", type=int, default=16, help="max_batch_size of the 'on' configuration")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--limit-seconds", type=float, default=4.0, help="seconds per batch size for the runtime limit")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--fake", action="store_true", help="FakeRuntime with a sleep cost model (harness check)")
    p.add_argument("--fake-delay-ms", type=float, default=20.0)
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = p.parse_args(argv)

    size = 256
    body, crop = _photo_png(size)
    levels = _run_config(args, "off", 1, body) + _run_config(args, "on", args.max_batch_size, body)
    limit = _runtime_limit(args, crop)
    table = _markdown(levels, limit, args)
    sys.stdout.write(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"levels": [asdict(lv) for lv in levels], "runtime_limit": limit,
                                         "args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
