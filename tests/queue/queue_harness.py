"""Real processes for the Redis queue tests: a redis-server on a free port, workers, API servers.

Everything started here is stopped by its PID (redis-server through its pidfile); nothing is matched by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evotok.tools.procs import RedisServer, free_port, pid_alive, rss_bytes

__all__ = ["RedisServer", "free_port", "pid_alive", "rss_bytes"]

REPO = Path(__file__).resolve().parents[2]


def queue_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a worker / API process in these tests (fast heartbeats, quick reclaim)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOTOK_")}
    env.update({
        "EVOTOK_QUEUE": "redis",
        "EVOTOK_REDIS_URL": redis_url,
        "EVOTOK_REDIS_PREFIX": prefix,
        "EVOTOK_WORKER_HEARTBEAT_S": "1.0",
        "EVOTOK_WORKER_CLAIM_IDLE_MS": "1000",
        "EVOTOK_MAX_BATCH_SIZE": "8",
        "EVOTOK_BATCH_CAP": "1024",  # fixed at EVOTOK_MAX_BATCH_SIZE: no per-size timing of slow fake runtimes
        "EVOTOK_MAX_QUEUE_DELAY_MS": "5",
        "EVOTOK_LOG_LEVEL": "warning",
        "EVOTOK_GRPC_PORT": "0",  # several API processes on one host: no gRPC port to share
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class WorkerProc:
    """``evotok worker --fake-runtime`` as a child process."""

    env: dict[str, str]
    name: str
    logdir: Path
    fake_delay_ms: float = 0.0
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.logdir / f"worker-{self.name}-{self.starts}.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "evotok.cli", "worker", "--name", self.name, "--metrics-port",
               str(self.metrics_port), "--metrics-host", "127.0.0.1", "--fake-runtime",
               "--fake-delay-ms", str(self.fake_delay_ms)]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            assert self.proc is not None and self.proc.poll() is None, f"worker {self.name} exited"
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return str(r.read().decode())


def wait_live_workers(server: RedisServer, prefix: str, n: int, timeout_s: float = 30.0) -> None:
    c = server.client()
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            sec, usec = c.time()
            now_ms = sec * 1000 + usec // 1000
            if c.zcount(f"{prefix}:workers", now_ms - 1500, "+inf") >= n:
                return
            time.sleep(0.05)
    finally:
        c.close()
    raise TimeoutError(f"fewer than {n} live workers")


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels`` in a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@dataclass
class ApiProc:
    """A real uvicorn API process: ``evotok serve --queue redis`` or the in-process fake app."""

    env: dict[str, str]
    logdir: Path
    name: str
    inprocess_fake: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.logdir / f"api-{self.name}.log", "wb")  # noqa: SIM115
        if self.inprocess_fake:
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "tests.service.fake_app:build",
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        else:
            cmd = [sys.executable, "-m", "evotok.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--queue", "redis", "--log-level", "warning"]
        env = {**self.env, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_up(self, timeout_s: float = 60.0, path: str = "/healthz") -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            assert self.proc is not None and self.proc.poll() is None, f"api {self.name} exited"
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + path, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"api {self.name} not up")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def png_bytes(arr: Any) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def fake_worker_and_api(redis_server: RedisServer, prefix: str, tmp_path: Path, fake_delay_ms: float,
                        **env: str) -> Iterator[tuple[ApiProc, WorkerProc]]:
    """One ``evotok worker`` (FakeRuntime) and one Redis-mode API over ``redis_server``, started, ready and
    seen live by the API side; stopped on exit. ``env`` adds ``EVOTOK_*`` variables to both."""
    from evotok.export.fake import write_fake_model_card

    card = write_fake_model_card(tmp_path / "model")
    full = queue_env(redis_server.url, prefix, EVOTOK_WEIGHTS=str(card), **env)
    worker = WorkerProc(full, "w0", tmp_path, fake_delay_ms=fake_delay_ms)
    api = ApiProc(full, tmp_path, "api0")
    worker.start()
    api.start()
    try:
        worker.wait_ready()
        api.wait_up()
        wait_live_workers(redis_server, prefix, 1)
        yield api, worker
    finally:
        api.stop()
        worker.stop()


def fake_photos(seed: int, n: int) -> tuple[list[bytes], list[Any]]:
    """``n`` random 64x64 PNGs and the codes ``FakeRuntime`` gives each."""
    import numpy as np

    from evotok.export.fake import FakeRuntime

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
    return [png_bytes(a) for a in arrays], [FakeRuntime().encode(a[None])[0] for a in arrays]


@dataclass
class Outcome:
    """One HTTP request of a load run."""

    started: float  # time.monotonic()
    finished: float
    status: int  # 0 = no HTTP answer (lost: transport error / client timeout)
    correct: bool | None  # for 200: codes equal the expectation
    code: str = ""  # error code from the JSON error body
    retry_after: str | None = None
    message: str = ""

    @property
    def latency(self) -> float:
        return self.finished - self.started


async def encode_load(urls: list[str], images: list[bytes], expected: list[Any], *, n: int | None = None,
                      duration_s: float | None = None, concurrency: int = 32,
                      rate_per_s: float | None = None, client_timeout_s: float = 45.0,
                      until: Callable[[], bool] | None = None, at_least: int = 0) -> list[Outcome]:
    """POST /encode (raw PNG body) round-robin over ``urls``; ``n`` requests, for ``duration_s`` or ``until()``
    (``until`` only stops the load once ``at_least`` requests have been started).

    With ``rate_per_s`` requests are started open-loop at that rate (capped by ``concurrency`` in flight).
    """
    import asyncio

    import httpx
    import numpy as np

    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    counter = 0
    sem = asyncio.Semaphore(concurrency)
    # keep-alive expiry below uvicorn's 5 s, so an idle connection is never reused just as the server closes it
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2,
                          keepalive_expiry=2.0)

    def more() -> bool:
        if n is not None and counter >= n:
            return False
        if until is not None and counter >= at_least and until():
            return False
        return not (duration_s is not None and time.monotonic() - t0 >= duration_s)

    async with httpx.AsyncClient(timeout=client_timeout_s, limits=limits) as client:

        async def one(i: int) -> None:
            k = i % len(images)
            started = time.monotonic()
            try:
                r = await client.post(urls[i % len(urls)] + "/encode", content=images[k],
                                      headers={"content-type": "image/png", "accept": "application/json"})
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(started, time.monotonic(), 0, None, message=f"{type(exc).__name__}: {exc}"))
                return
            finally:
                sem.release()
            done = time.monotonic()
            if r.status_code == 200:
                got = np.asarray(r.json()["codes"], dtype=np.uint16)
                outcomes.append(Outcome(started, done, 200, bool(np.array_equal(got, expected[k]))))
            else:
                try:
                    code, message = str(r.json()["error"]["code"]), str(r.json()["error"]["message"])
                except (ValueError, KeyError, TypeError):
                    code, message = "?", r.text[:200]
                outcomes.append(Outcome(started, done, r.status_code, None, code, r.headers.get("retry-after"),
                                        message))

        tasks: list[asyncio.Task[None]] = []
        while more():
            await sem.acquire()
            if rate_per_s is not None:
                due = t0 + counter / rate_per_s
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(counter)))
            counter += 1
        await asyncio.gather(*tasks)
    return outcomes
