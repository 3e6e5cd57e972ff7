"""Service benchmark over HTTP: batching off vs on vs auto, on the in-process path and the Redis path, side by side.

Usage::

    evotok bench service                                     # shipped model, ONNX Runtime CPU, in process
    evotok bench service --configs off,auto --concurrency 1,2,4,8,16,32 --json bench.json
    evotok bench service --fake --fake-cost-ms 20,1 --paths inprocess,redis --configs off,on
    evotok bench service --fake --fake-cost-ms 2,0.1 --frontends 1,2,auto --configs on --input jpeg

Configurations: ``off`` (``EVOTOK_MAX_BATCH_SIZE=1``), ``on`` (the cap fixed at ``--max-batch-size``), ``auto``
(``--max-batch-size`` as the upper bound, ``EVOTOK_BATCH_CAP=auto``: measured at warm-up). Paths: ``inprocess``
(one uvicorn server holding the runtime) and ``redis`` (a private ``redis-server`` without persistence, one
``evotok worker`` process and a uvicorn API with ``EVOTOK_QUEUE=redis``), all started as subprocesses on free
ports and stopped by PID. ``--fake`` serves ``FakeRuntime`` (64 px model card); ``--fake-cost-ms A,B`` makes a
runtime call of ``B`` items cost ``A + B*b`` ms (GPU-like). ``--frontends 1,2,auto`` replaces the paths by
``evotok serve`` itself with ``EVOTOK_FRONTENDS`` = each value (1: today's single process; more: front-end
processes and one runtime process, ``service/local/``); with ``--fake`` it serves ``EVOTOK_FAKE_COST_MS``, a
FakeRuntime of the real model's size (256 px, 16x16x16 codes). Server CPU counts every process of the server.

The load generator is this process (a minimal asyncio HTTP/1.1 client, closed loop, one keep-alive
connection per client); every request posts the
same photo (scikit-image ``chelsea``, centre-cropped to the model size) as PNG, JPEG or the ``.npy`` model
input (``--input``). Reported per path, configuration
and concurrency: throughput, p50/p95/p99 latency, errors, the server's mean batch size (``/metrics``), and the
CPU seconds spent by the client (this process, ``getrusage``) and by the servers (``/proc/<pid>/stat``) during
the level. The runtime limit (``_runtime_limit``) is the best images/s of ``encode`` without HTTP, over batch
sizes and call arrangements (the servers' lanes and one call at a time), measured in this process after the
servers stopped. Prints markdown tables; the last line gives the on/off ratios at the highest concurrency per path.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evotok.export.fake import parse_cost_ms, write_fake_model_card
from evotok.tools.procs import (
    RedisServer,
    cpu_seconds,
    descendant_pids,
    free_port,
    stop_process,
    tree_cpu_seconds,
)

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


@dataclass
class Level:
    path: str  # "inprocess" | "redis"
    config: str  # "off" | "on" | "auto"
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
    client_cpu_s: float  # CPU seconds of the load generator (this process) during the level
    server_cpu_s: float  # CPU seconds of the server processes (API + worker) during the level
    protocol: str = "rest"
    runtime_cpu_s: float = 0.0  # of server_cpu_s, the runtime process's (front-end topology; 0 elsewhere)  # "rest" (POST /encode) | "v2-http" | "v2-grpc" (Open Inference Protocol, tritonclient)


# --- the server subprocesses ------------------------------------------------------------------------------------
def _floor(argv: list[str]) -> int:
    """The bare floor (``--paths floor``): one uvicorn process with a plain Starlette app that does what our
    front end must do for ``POST /encode`` (read the body, decode and fit the image with the same
    ``prepare_image``, or check an ``.npy`` body) and answers a fixed ``.npy`` of codes: no batching core,
    no model, no middleware. What is left between it and our server is the serving stack's own cost."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--sleep-ms", type=float, default=0.0,
                   help="floor-thread: also sleep this long per request on one worker thread (a runtime's own "
                        "time, handed to another thread as every server that runs a model off the loop does)")
    args = p.parse_args(argv)
    import asyncio as aio
    from concurrent.futures import ThreadPoolExecutor

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from evotok.service.codes_io import to_npy
    from evotok.service.imaging import prepare_image

    answer = to_npy(np.zeros((16, 16, 16), np.uint16))
    runtime_thread = ThreadPoolExecutor(1)

    async def encode(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-type") == "application/x-npy":
            np.load(io.BytesIO(body), allow_pickle=False)
        else:
            prepare_image(body, args.size, "center-crop", 40_000_000)  # on the loop: no thread hop either
        if args.sleep_ms:
            await aio.get_running_loop().run_in_executor(runtime_thread, time.sleep, args.sleep_ms / 1000)
        return Response(answer, media_type="application/x-npy")

    async def ready(_request: Request) -> Response:
        return PlainTextResponse("ready")

    app = Starlette(routes=[Route("/encode", encode, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def _serve(argv: list[str]) -> int:
    """The in-process server: ``create_app`` over the configured runtime or a FakeRuntime, run by
    ``run_uvicorn`` with the settings' options, as ``evotok serve`` runs it (same HTTP protocol class,
    connection limit and keep-alive), so the benchmark measures the served stack."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fake", action="store_true")
    p.add_argument("--fake-cost-ms", default="")
    p.add_argument("--real-size", action="store_true", help="a fake model card of the shipped model's size")
    args = p.parse_args(argv)
    from evotok.service.app import create_app
    from evotok.service.cli import run_uvicorn
    from evotok.service.settings import Settings

    factory = None
    if args.fake:
        from evotok.export.fake import REAL_SIZE, FakeRuntime

        cost, sizes = parse_cost_ms(args.fake_cost_ms), (REAL_SIZE if args.real_size else {})
        factory = lambda: FakeRuntime(cost_ms=cost, **sizes)  # type: ignore[arg-type]  # noqa: E731
    settings = Settings(host="127.0.0.1", port=args.port)
    run_uvicorn(create_app(settings, runtime_factory=factory), settings)
    return 0


class Servers:
    """The processes of one path/configuration (stopped by PID in ``stop``)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis: RedisServer | None = None
        self.url = ""
        self.worker_metrics: list[str] = []  # the workers' metrics ports (Redis path: batches run there)
        self.grpc_port = 0  # the API's Open Inference Protocol gRPC port (0: off)

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds of every server process, and of those the runtime process's (``evotok serve`` with
        front ends: the one that runs the model, not HTTP)."""
        total = sum(tree_cpu_seconds(proc.pid) for proc in self.procs)
        runtime = sum(cpu_seconds(pid) for proc in self.procs for pid in descendant_pids(proc.pid)
                      if _is_runtime_process(pid))
        return total, runtime

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, signal.SIGTERM, 30)
        if self.redis is not None:
            self.redis.stop(signal.SIGTERM)


def _is_runtime_process(pid: int) -> bool:
    try:
        return b"evotok.service.local.runtime_proc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _settings_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Settings`` fields the benchmark's options set (for the lane count and the runtime limit)."""
    return {k: v for k, v in {"weights": args.weights, "backend": args.backend, "threads": args.threads}.items() if v}


def _redis_workers(args: argparse.Namespace) -> int:
    """Worker processes on the Redis path: ``--redis-workers``, else one per lane the in-process server runs
    (a worker is one lane: ``worker_settings``), so both paths get the same runtime parallelism; 1 for the
    fake runtime, which the in-process server also runs as one lane."""
    if args.redis_workers:
        return int(args.redis_workers)
    if args.fake:
        return 1
    from evotok.service.runtime_setup import planned_lanes
    from evotok.service.settings import Settings

    return int(planned_lanes(Settings(**_settings_fields(args), runtime_lanes=args.lanes)))


def _env(args: argparse.Namespace, config: str) -> dict[str, str]:
    max_batch = 1 if config == "off" else args.max_batch_size
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOTOK_")}
    env.update({"PYTHONPATH": str(REPO), "EVOTOK_MAX_BATCH_SIZE": str(max_batch),
                "EVOTOK_BATCH_CAP": "auto" if config == "auto" else str(max_batch),
                "EVOTOK_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms), "EVOTOK_BACKEND": args.backend,
                "EVOTOK_WARMUP_BATCH_SIZES": json.dumps(sorted({1, max_batch})), "EVOTOK_MAX_QUEUE_SIZE": "1024",
                "EVOTOK_LOG_LEVEL": "warning", "EVOTOK_GRPC_PORT": "0"})  # several servers: no shared gRPC port
    if args.weights:
        env["EVOTOK_WEIGHTS"] = args.weights
    if args.threads:
        env["EVOTOK_THREADS"] = str(args.threads)
    env["EVOTOK_RUNTIME_LANES"] = str(args.lanes)
    return env


def _wait_ready(servers: Servers, url: str, timeout_s: float) -> None:
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for proc in servers.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a server process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def _start(args: argparse.Namespace, path: str, config: str, workdir: Path) -> Servers:
    servers = Servers()
    env = _env(args, config)
    port = free_port()
    servers.url = f"http://127.0.0.1:{port}"
    if "v2-grpc" in args.protocols:
        servers.grpc_port = free_port()
        env["EVOTOK_GRPC_PORT"] = str(servers.grpc_port)
    try:
        if path.startswith("frontends="):  # `evotok serve` as deployed, with EVOTOK_FRONTENDS
            value = path.split("=", 1)[1]
            env["EVOTOK_FRONTENDS"] = "0" if value == "auto" else value
            if args.fake:
                env["EVOTOK_FAKE_COST_MS"] = args.fake_cost_ms
            servers.procs.append(subprocess.Popen(
                [sys.executable, "-m", "evotok.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"], cwd=REPO, env=env))
        elif path in ("floor", "floor-thread"):
            size = 256 if args.fake else _model_size(args)
            sleep_ms = _one_item_ms(args) if path == "floor-thread" else 0.0
            servers.procs.append(subprocess.Popen([sys.executable, str(HERE), "_floor", "--port", str(port),
                                                   "--size", str(size), "--sleep-ms", str(sleep_ms)],
                                                  cwd=REPO, env=env))
        elif path == "inprocess":
            cmd = [sys.executable, str(HERE), "_serve", "--port", str(port)]
            if args.fake:
                cmd += ["--fake", "--fake-cost-ms", args.fake_cost_ms] + (["--real-size"] if _real_size(args) else [])
            servers.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env))
        else:
            rdir = Path(tempfile.mkdtemp(dir=workdir))
            servers.redis = RedisServer(rdir).start()
            rport = servers.redis.port
            env.update({"EVOTOK_QUEUE": "redis", "EVOTOK_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                        "EVOTOK_REDIS_MAX_ENTRIES": "4096"})
            if args.fake:
                env["EVOTOK_WEIGHTS"] = str(write_fake_model_card(rdir / "model"))
            workers = _redis_workers(args)
            if workers > 1 and not args.threads:  # share the cores out, as lanes do in one process
                from evotok.service.runtime_setup import threads_per_lane

                env["EVOTOK_THREADS"] = str(threads_per_lane(workers))
            for i in range(workers):
                metrics_port = str(free_port())
                wcmd = [sys.executable, "-m", "evotok.cli", "worker", "--name", f"bench-w{i}", "--metrics-port",
                        metrics_port, "--metrics-host", "127.0.0.1"]
                if args.fake:
                    wcmd += ["--fake-runtime", "--fake-cost-ms", args.fake_cost_ms]
                servers.procs.append(subprocess.Popen(wcmd, cwd=REPO, env=env))
                servers.worker_metrics.append(metrics_port)
            servers.procs.append(subprocess.Popen(
                [sys.executable, "-m", "evotok.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--queue", "redis", "--log-level", "warning"], cwd=REPO, env=env))
        _wait_ready(servers, servers.url, args.startup_timeout)
    except BaseException:
        servers.stop()
        raise
    return servers


# --- load generation -------------------------------------------------------------------------------------------
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/x-npy"}


def _photo_body(size: int, kind: str) -> tuple[bytes, np.ndarray]:
    """The request body every client posts: the photo fitted to the model size, as PNG, JPEG (quality 95) or
    the ``.npy`` model input (``uint8 (S, S, 3)``: no decoding on the server)."""
    from PIL import Image

    try:
        from skimage import data

        arr = data.chelsea()
    except ImportError:  # pragma: no cover - scikit-image is in the train extra
        arr = (np.random.default_rng(0).random((300, 450, 3)) * 255).astype(np.uint8)
    from evotok.service.imaging import fit_to_model

    crop = fit_to_model(Image.fromarray(arr), size, "center-crop")
    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, crop, allow_pickle=False)
    else:
        Image.fromarray(crop).save(buf, format=kind.upper(), **({"quality": 95} if kind == "jpeg" else {}))
    return buf.getvalue(), crop


def _batch_stats(servers: Servers) -> tuple[float, float]:
    """Sum and count of ``evotok_batch_size`` for encode, where batches run (the API, or the workers)."""
    import httpx

    urls = [f"http://127.0.0.1:{port}" for port in servers.worker_metrics] or [servers.url]
    lines = [line for url in urls for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()]
    total = count = 0.0
    for line in lines:
        if line.startswith("evotok_batch_size_sum{") and 'op="encode"' in line:
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("evotok_batch_size_count{") and 'op="encode"' in line:
            count += float(line.rsplit(" ", 1)[1])
    return total, count


async def _closed_loop(url: str, body: bytes, concurrency: int, duration: float,
                       content_type: str = "image/png") -> tuple[list[float], int, float]:
    """``concurrency`` clients, each on its own keep-alive connection, POST /encode back to back.

    A minimal HTTP/1.1 client on asyncio streams (request bytes prepared once, response read by Content-Length):
    on a 2-core machine httpx spent more CPU per request than the server, so the client was the bottleneck.
    """
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /encode HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nAccept: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                headers = await reader.readuntil(b"\r\n\r\n")
                status = int(headers.split(b" ", 2)[1])
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


@dataclass
class _Pool:
    """Measurements of one (path, config, concurrency), pooled over ``--repeat`` interleaved rounds."""

    latencies: list[float]
    errors: int = 0
    elapsed: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    runtime_cpu_s: float = 0.0
    batch_sum: float = 0.0
    batch_count: float = 0.0


def _load(args: argparse.Namespace, servers: Servers, c: int, body: bytes,
          protocol: str) -> tuple[list[float], int, float]:
    """One closed-loop load of ``c`` clients over ``protocol``: latencies (s), errors, elapsed seconds."""
    if protocol == "rest":
        return asyncio.run(_closed_loop(servers.url, body, c, args.duration, CONTENT_TYPES[args.input]))
    from evotok.service.oip.load import v2_load

    transport = "http" if protocol == "v2-http" else "grpc"
    target = servers.url.removeprefix("http://") if transport == "http" else f"127.0.0.1:{servers.grpc_port}"
    r = v2_load(target, transport, body, clients=c, duration_s=args.duration, warmup=1)
    return list(r.latencies_s), r.errors, r.seconds


def _round(args: argparse.Namespace, servers: Servers, c: int, body: bytes, pool: _Pool,
           protocol: str = "rest") -> None:
    s0, n0 = _batch_stats(servers)
    cpu0, (scpu0, rcpu0) = resource.getrusage(resource.RUSAGE_SELF), servers.cpu_s()
    lat, errors, elapsed = _load(args, servers, c, body, protocol)
    cpu1, (scpu1, rcpu1) = resource.getrusage(resource.RUSAGE_SELF), servers.cpu_s()
    s1, n1 = _batch_stats(servers)
    pool.latencies += lat
    pool.errors += errors
    pool.elapsed += elapsed
    pool.client_cpu_s += (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    pool.server_cpu_s += scpu1 - scpu0
    pool.runtime_cpu_s += rcpu1 - rcpu0
    pool.batch_sum += s1 - s0
    pool.batch_count += n1 - n0


def _level(args: argparse.Namespace, path: str, config: str, c: int, pool: _Pool, protocol: str = "rest") -> Level:
    ms = np.array(pool.latencies) * 1000 if pool.latencies else np.array([float("nan")])
    level = Level(path, config, 1 if config == "off" else args.max_batch_size, c, len(pool.latencies), pool.errors,
                  pool.elapsed, len(pool.latencies) / pool.elapsed, float(np.percentile(ms, 50)),
                  float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
                  pool.batch_sum / max(pool.batch_count, 1), pool.client_cpu_s, pool.server_cpu_s, protocol,
                  pool.runtime_cpu_s)
    sys.stderr.write(f"[{path} {config} {protocol}] c={c}: {level.throughput:.1f} img/s p95 {level.p95_ms:.1f} ms "
                     f"mean batch {level.mean_batch:.2f} client cpu {level.client_cpu_s:.1f} s\n")
    return level


def _run_path(args: argparse.Namespace, path: str | list[str], body: bytes, workdir: Path) -> list[Level]:
    """All configurations of one path (or of several: ``--frontends``) started together (idle servers cost no
    CPU), then measured interleaved: for each concurrency, ``--repeat`` rounds of every path and configuration in
    turn (latencies pooled), so a change in the machine's background load hits all of them alike instead of
    whichever ran last."""
    paths = [path] if isinstance(path, str) else path
    servers: dict[tuple[str, str], Servers] = {}
    out: list[Level] = []
    try:
        for p in paths:
            for config in args.configs:
                srv = servers[(p, config)] = _start(args, p, config, workdir)
                asyncio.run(_closed_loop(srv.url, body, 2, 1.0, CONTENT_TYPES[args.input]))  # warm connections and caches
        runs = [(p, config, protocol) for p in paths for config in args.configs for protocol in args.protocols]
        for c in args.concurrency:
            pools = {run: _Pool([]) for run in runs}
            for _ in range(args.repeat):
                for p, config, protocol in runs:
                    _round(args, servers[(p, config)], c, body, pools[(p, config, protocol)], protocol)
            out += [_level(args, p, config, c, pools[(p, config, protocol)], protocol) for p, config, protocol in runs]
    finally:
        for srv in servers.values():
            srv.stop()
    return out


def _encode_rate(runtime: Any, batch: np.ndarray, callers: int, seconds: float) -> float:
    """Images/s of ``runtime.encode(batch)`` called back to back by ``callers`` threads for ``seconds`` (each
    thread at least twice), after one warm-up call for this shape."""
    import threading

    runtime.encode(batch)
    stop = time.perf_counter() + seconds
    calls = [0] * callers

    def loop(i: int) -> None:
        while time.perf_counter() < stop or calls[i] < 2:
            runtime.encode(batch)
            calls[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(batch) * sum(calls) / (time.perf_counter() - t0)


def _runtime_limit(args: argparse.Namespace, crop: np.ndarray) -> dict[str, Any]:
    """``max`` images/s of ``runtime.encode`` without HTTP, over batch sizes and arrangements: the servers'
    own (their threads per lane, called by 1 and by ``lanes`` threads at once) and, where that is several
    lanes, one call at a time over all cores (the one-lane arrangement). The best of all is the limit."""
    if args.fake:
        a, c = parse_cost_ms(args.fake_cost_ms) or (20.0, 0.0)
        per = {b: 1000 * b / (a + b * c) for b in sorted({1, 2, 4, 8, 16, 32, args.max_batch_size}) if a + b * c > 0}
        best = max(per, key=lambda b: per[b]) if per else 1
        return {"items_per_s_by_batch": per, "best_batch": best, "best_items_per_s": per.get(best, float("inf")),
                "best_arrangement": "fake", "note": "fake cost model"}
    from evotok.service.runtime_setup import build_runtime, planned_lanes, runtime_options
    from evotok.service.settings import Settings

    base = _settings_fields(args)
    lanes = planned_lanes(Settings(**base, runtime_lanes=args.lanes))
    arrangements = [(lanes, c) for c in sorted({1, lanes})] + ([(1, 1)] if lanes > 1 else [])
    per: dict[str, dict[int, float]] = {}
    for server_lanes, callers in arrangements:
        settings = Settings(**base, runtime_lanes=server_lanes)
        threads = runtime_options(settings).get("threads", "all")
        name = f"threads={threads} x {callers} caller(s)"
        runtime = build_runtime(settings)
        per[name] = {}
        for b in sorted({1, 2, 4, 8, 16, args.max_batch_size}):
            per[name][b] = _encode_rate(runtime, np.repeat(crop[None], b, axis=0), callers, args.limit_seconds)
            sys.stderr.write(f"[runtime] {name} B={b}: {per[name][b]:.1f} img/s\n")
        runtime.close()
    best_name, best_b = max(((n, b) for n in per for b in per[n]), key=lambda nb: per[nb[0]][nb[1]])
    return {"items_per_s": per, "best_arrangement": best_name, "best_batch": best_b,
            "best_items_per_s": per[best_name][best_b], "lanes": lanes}


def _markdown(levels: list[Level], limit: dict[str, Any], args: argparse.Namespace) -> str:
    rows = ["| path | protocol | batching | max batch | clients | img/s | p50 ms | p95 ms | p99 ms | mean batch | "
            "errors | client CPU s | server CPU s | runtime process CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lv in sorted(levels, key=lambda lv: (args.paths.index(lv.path), args.protocols.index(lv.protocol),
                                             args.configs.index(lv.config))):
        rows.append(f"| {lv.path} | {lv.protocol} | {lv.config} | {lv.max_batch_size} | {lv.concurrency} | "
                    f"{lv.throughput:.1f} | "
                    f"{lv.p50_ms:.1f} | {lv.p95_ms:.1f} | {lv.p99_ms:.1f} | {lv.mean_batch:.2f} | {lv.errors} | "
                    f"{lv.client_cpu_s:.1f} | {lv.server_cpu_s:.1f} | "
                    f"{f'{lv.runtime_cpu_s:.1f}' if lv.runtime_cpu_s else '-'} |")
    rows.append("")
    rows += _floor_lines(levels, args)
    for name, by_b in limit.get("items_per_s", {}).items():
        rows.append(f"Runtime without HTTP, {name}: " + ", ".join(f"B={b} {v:.1f}" for b, v in by_b.items())
                    + " img/s")
    rows.append(f"Runtime limit without HTTP: {limit['best_items_per_s']:.1f} img/s at B={limit['best_batch']} "
                f"({limit['best_arrangement']}); servers ran {limit.get('lanes', 1)} lane(s)"
                + (f", the Redis path {_redis_workers(args)} worker(s) of one lane each." if "redis" in args.paths
                   else "."))
    top = max(args.concurrency)
    ratios = []
    for protocol in args.protocols[1:]:
        for c in args.concurrency:
            at = {lv.protocol: lv for lv in levels if lv.concurrency == c and lv.config == args.configs[0]
                  and lv.path == args.paths[0]}
            if protocol in at and args.protocols[0] in at:
                a, b = at[protocol], at[args.protocols[0]]
                rows.append(f"c={c}: {protocol}/{b.protocol} throughput {a.throughput / max(b.throughput, 1e-9):.2f}x, "
                            f"p50 {a.p50_ms:.1f} vs {b.p50_ms:.1f} ms, p95 {a.p95_ms:.1f} vs {b.p95_ms:.1f} ms")
    levels = [lv for lv in levels if lv.protocol == args.protocols[0]]  # batching comparisons: one protocol
    for path in (p for p in args.paths if not p.startswith("floor")):
        by = {lv.config: lv for lv in levels if lv.path == path and lv.concurrency == top}
        for cfg in args.configs:
            best = max((lv.throughput for lv in levels if lv.path == path and lv.config == cfg), default=0.0)
            rows.append(f"{path} {cfg}: best served {best:.1f} img/s = "
                        f"{100 * best / limit['best_items_per_s']:.0f} % of the runtime limit.")
        for cfg in ("on", "auto"):
            if cfg in by and "off" in by:
                ratio = by[cfg].throughput / max(by["off"].throughput, 1e-9)
                ratios.append(f"{path} {cfg}/off {ratio:.2f}x (p95 {by[cfg].p95_ms:.0f} vs {by['off'].p95_ms:.0f} ms)")
        for c in args.concurrency:
            at = {lv.config: lv for lv in levels if lv.path == path and lv.concurrency == c}
            if "auto" in at and "off" in at:
                rows.append(f"{path} c={c}: auto/off throughput {at['auto'].throughput / max(at['off'].throughput, 1e-9):.2f}x, "
                            f"p95 {at['auto'].p95_ms / max(at['off'].p95_ms, 1e-9):.2f}x")
            if {"auto", "off", "on"} <= set(at):
                best = max(at["off"], at["on"], key=lambda lv: lv.throughput)
                rows.append(f"{path} c={c}: auto/best of off and on ({best.config}) throughput "
                            f"{at['auto'].throughput / max(best.throughput, 1e-9):.2f}x")
    one = [lv for lv in levels if lv.path == "frontends=1"]
    for lv in levels:
        if lv.path.startswith("frontends=") and lv.path != "frontends=1":
            base = next((b for b in one if b.concurrency == lv.concurrency and b.config == lv.config), None)
            if base is not None:
                rows.append(f"c={lv.concurrency} {lv.config}: {lv.path} / frontends=1 throughput "
                            f"{lv.throughput / max(base.throughput, 1e-9):.2f}x")
    rows.append(f"At {top} clients: " + "; ".join(ratios))
    return "\n".join(rows)


def _one_item_ms(args: argparse.Namespace) -> float:
    """The fake runtime's own time for a batch of one (``A + b`` ms), 0 for a real model."""
    cost = parse_cost_ms(args.fake_cost_ms) if args.fake else None
    return cost[0] + cost[1] if cost else 0.0


def _floor_lines(levels: list[Level], args: argparse.Namespace) -> list[str]:
    """Against the bare floor: front-end CPU per image (ours / floor) at each concurrency, and at one client our
    p50 minus the fake runtime's own time for one item against the floor's p50. Front-end CPU is the server's
    CPU less the runtime process's where there is one (``--frontends`` > 1); a single process (``inprocess``,
    ``frontends=1``) cannot be split, so there it includes the runtime's work (the fake's numpy and batching)."""
    floor = {lv.concurrency: lv for lv in levels if lv.path == "floor" and lv.protocol == args.protocols[0]}
    threaded = {lv.concurrency: lv for lv in levels if lv.path == "floor-thread" and lv.protocol == args.protocols[0]}
    if not floor:
        return []
    own_ms = _one_item_ms(args)
    out = []
    for lv in levels:
        f = floor.get(lv.concurrency)
        if lv.path.startswith("floor") or f is None or not lv.requests or not f.requests:
            continue
        ours, bare = 1000 * (lv.server_cpu_s - lv.runtime_cpu_s) / lv.requests, 1000 * f.server_cpu_s / f.requests
        what = "front-end CPU" if lv.runtime_cpu_s else "server CPU (one process, runtime included)"
        out.append(f"{lv.path} {lv.config} c={lv.concurrency}: {what} {ours:.2f} ms/image vs floor "
                   f"{bare:.2f} ({ours / bare:.2f}x); img/s {lv.throughput / max(f.throughput, 1e-9):.2f}x the floor")
        if lv.concurrency == 1 and lv.path != "floor-thread":
            out.append(f"{lv.path} {lv.config} c=1: p50 {lv.p50_ms:.2f} ms - runtime {own_ms:.2f} ms = "
                       f"{lv.p50_ms - own_ms:.2f} ms vs floor p50 {f.p50_ms:.2f} ms "
                       f"({(lv.p50_ms - own_ms) / max(f.p50_ms, 1e-9):.2f}x)")
            t = threaded.get(1)
            if t is not None and t.requests:
                out.append(f"{lv.path} {lv.config} c=1: p50 {lv.p50_ms:.2f} ms vs floor-thread p50 {t.p50_ms:.2f} ms "
                           f"(the floor sleeping the runtime's {own_ms:.2f} ms on one thread): "
                           f"{(lv.p50_ms - own_ms) / max(t.p50_ms - own_ms, 1e-9):.2f}x beside the runtime's time")
    return out


def _real_size(args: argparse.Namespace) -> bool:
    """The fake runtime at the shipped model's size (256 px, 16x16x16 codes): with front ends and the floor."""
    return bool(args.frontends) or any(p.startswith("floor") for p in args.paths)


def _model_size(args: argparse.Namespace) -> int:
    from evotok.service.model_info import load_model_info
    from evotok.service.settings import Settings

    weights = Settings(**({"weights": args.weights} if args.weights else {})).weights
    return int(load_model_info(weights, backend=args.backend, precision="fp32").image_size)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_serve":
        return _serve(argv[1:])
    if argv and argv[0] == "_floor":
        return _floor(argv[1:])
    p = argparse.ArgumentParser(prog="evotok bench service", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--threads", type=int, default=0, help="runtime intra-op threads (0 = library default)")
    p.add_argument("--input", choices=sorted(CONTENT_TYPES), default="png",
                   help="request body: the photo as PNG, JPEG, or the .npy model input (no server-side decoding)")
    p.add_argument("--lanes", type=int, default=0, help="EVOTOK_RUNTIME_LANES of the servers (0 = auto)")
    p.add_argument("--redis-workers", type=int, default=0,
                   help="evotok worker processes on the Redis path (0 = one per lane the in-process server runs; "
                        "several share the cores out through EVOTOK_THREADS unless --threads)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level and round")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds per level (pooled)")
    p.add_argument("--max-batch-size", type=int, default=16, help="max_batch_size of the 'on' configuration")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                   help="0 (Triton's default): run what is queued as soon as the runtime is free")
    p.add_argument("--limit-seconds", type=float, default=4.0, help="seconds per batch size for the runtime limit")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--fake", action="store_true", help="FakeRuntime with a sleep cost model (64 px model card)")
    p.add_argument("--fake-cost-ms", default="20,1", help="A,B: a batch of B items costs A + B*b ms")
    p.add_argument("--paths", type=lambda s: s.split(","), default=["inprocess"],
                   help="inprocess,redis,floor,floor-thread (floor: a bare Starlette process, the same image decoding, "
                        "a fixed answer and no model: the serving stack's cost is the difference; floor-thread: the "
                        "same, also sleeping the fake runtime's time for one item on one worker thread)")
    p.add_argument("--frontends", type=lambda s: s.split(","), default=None,
                   help="1,2,auto: instead of --paths, `evotok serve` with each EVOTOK_FRONTENDS (front-end processes "
                        "feeding one runtime process; 1 = the single process) and the bare floor, interleaved; "
                        "--fake serves EVOTOK_FAKE_COST_MS")
    p.add_argument("--configs", type=lambda s: s.split(","), default=["off", "auto"], help="off,on,auto")
    p.add_argument("--protocols", type=lambda s: s.split(","), default=["rest"],
                   help="rest,v2-http,v2-grpc: POST /encode, and the Open Inference Protocol over HTTP (binary "
                        "tensors) and gRPC through tritonclient (the `oip` extra); image bodies only")
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = p.parse_args(argv)
    if set(args.protocols) - {"rest"} and args.input == "npy":
        p.error("the v2 protocols send image files: use --input png or jpeg")

    if args.frontends:  # the bare floor too, interleaved with them: the front end's cost is the difference
        args.paths = [*(f"frontends={v}" for v in args.frontends), "floor",
                      *(["floor-thread"] if args.fake else [])]
    size = (256 if _real_size(args) else 64) if args.fake else _model_size(args)
    body, crop = _photo_body(size, args.input)
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="evotok-bench-") as tmp:
        if args.frontends:  # the front-end counts interleaved, round by round
            levels += _run_path(args, args.paths, body, Path(tmp))
        else:
            for path in args.paths:
                levels += _run_path(args, path, body, Path(tmp))
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
