"""``evotok worker``: the process around a ``Consumer`` (design: docs/reference/serving-design.md section 3).

Start-up: ``startup.start_runtime`` (build, warm-up, golden self-test, batch caps, build_info, the seeded time
estimates: the API process's path too) after ``startup.configure_logging`` (``EVOTOK_LOG_JSON``), connect to Redis, start the heartbeat
thread and the side HTTP server (``/metrics``, ``/healthz``, ``/readyz`` on ``EVOTOK_WORKER_METRICS_PORT``),
then run the consumer loop until SIGTERM/SIGINT. Shutdown: finish what the consumer holds, remove the
heartbeat, leave the group if nothing is pending under this name, exit 0.

``/healthz`` is 503 when a runtime call has run longer than ``EVOTOK_RUNTIME_HANG_S`` or the loop stopped
turning (Kubernetes then restarts the pod); ``/readyz`` is 200 while Redis is reachable and not stopping.

Test-only switches: ``--fake-runtime`` (``EVOTOK_TEST_FAKE_RUNTIME=1``) serves ``FakeRuntime`` with a fixed
``--fake-delay-ms`` (``EVOTOK_TEST_FAKE_DELAY_MS``) or ``--fake-cost-ms A,B`` (A + B·b ms per batch of B) per
runtime call; ``EVOTOK_TEST_FAKE_HANG_FILE`` makes its calls block while that file exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from evotok.export.fake import FakeRuntime, parse_cost_ms
from evotok.service import metrics
from evotok.service.core import OPS
from evotok.service.redis_protocol import GROUP, Keys, connection_kwargs, liveness_window_ms, redis_url
from evotok.service.runtime_setup import build_runtime
from evotok.service.settings import Settings, get_settings
from evotok.service.startup import configure_logging, start_runtime
from evotok.service.step import CallWatch, Scheduler
from evotok.service.worker.consumer import Consumer, ConsumerOptions
from evotok.service.worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)


def worker_settings(settings: Settings) -> Settings:
    """A worker is one lane: one runtime call at a time over all of its cores (its replicas are the lanes of
    the Redis mode), so it builds its Runtime as an API process with ``EVOTOK_RUNTIME_LANES=1`` would."""
    return settings.model_copy(update={"runtime_lanes": 1})


def default_worker_name() -> str:
    """Stable across restarts when ``EVOTOK_WORKER_NAME`` is set (compose service / StatefulSet ordinal)."""
    return os.environ.get("EVOTOK_WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def liveness_problem(consumer: Consumer, watch: CallWatch, settings: Settings) -> str | None:
    problem = watch.problem()
    if problem is None and watch.age_s() == 0.0:
        idle = time.monotonic() - consumer.last_turn
        if idle > settings.runtime_hang_s + 30.0:
            problem = f"the batch loop has not turned for {idle:.0f} s"
    return problem


def serve_http(consumer: Consumer, watch: CallWatch, settings: Settings, port: int,
               host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (Redis reachable, not stopping)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                metrics.RUNTIME_CALL_AGE.set(watch.age_s())
                consumer.publish_gauges()
                body, ctype = metrics.render()
                self._send(200, body, ctype)
            elif self.path == "/healthz":
                problem = liveness_problem(consumer, watch, settings)
                self._send(503 if problem else 200, f"{problem or 'ok'}\n".encode(), "text/plain")
            elif self.path == "/readyz":
                ok = consumer.redis_ok and not consumer.stopping
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    """``evotok worker [--name N] [--metrics-port P]``; settings come from ``EVOTOK_*`` variables."""
    env_fake = os.environ.get("EVOTOK_TEST_FAKE_RUNTIME", "") in {"1", "true", "yes"}
    parser = argparse.ArgumentParser(prog="evotok worker", description="Redis Streams inference worker")
    parser.add_argument("--name", default=default_worker_name(), help="consumer name (stable per slot)")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: EVOTOK_WORKER_METRICS_PORT")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--fake-runtime", action="store_true", default=env_fake, help=argparse.SUPPRESS)
    parser.add_argument("--fake-delay-ms", type=float,
                        default=float(os.environ.get("EVOTOK_TEST_FAKE_DELAY_MS", "0")), help=argparse.SUPPRESS)
    parser.add_argument("--fake-cost-ms", default=os.environ.get("EVOTOK_TEST_FAKE_COST_MS", ""),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    if settings.runtime_lanes > 1:
        log.warning("EVOTOK_RUNTIME_LANES=%d: a worker runs one runtime call at a time; run more worker "
                    "processes for more lanes", settings.runtime_lanes)
    settings = worker_settings(settings)

    def factory() -> Any:
        runtime = build_runtime(settings, args.fake_runtime, args.fake_delay_ms, parse_cost_ms(args.fake_cost_ms))
        hang_file = os.environ.get("EVOTOK_TEST_FAKE_HANG_FILE")
        if hang_file and isinstance(runtime, FakeRuntime):
            runtime.hang_file = Path(hang_file)
        return runtime

    started = start_runtime(settings, factory)
    if started.error is not None:
        return 1
    runtime, prepared = started.runtime, started.prepared
    watch = CallWatch(settings.runtime_hang_s)
    sched: Scheduler[Any] = Scheduler(prepared.policy, "worker", started.times, watch)

    keys = Keys(settings.redis_prefix)
    block_ms = 50
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    client = redis.Redis.from_url(
        redis_url(settings.redis_url, settings.redis_tls), retry=Retry(NoBackoff(), 0),
        **connection_kwargs(password, socket_timeout_s=max(5.0, block_ms / 1000 + 3.0), connect_timeout_s=2.0))
    opts = ConsumerOptions(args.name, settings.worker_claim_idle_ms, settings.worker_max_deliveries, block_ms)
    consumer = Consumer(client, keys, runtime, opts, sched)
    window_ms = liveness_window_ms(settings.worker_heartbeat_s, settings.worker_liveness_heartbeats)
    heartbeat = Heartbeat(client, keys, args.name, settings.worker_heartbeat_s, window_ms,
                          settings.worker_claim_idle_ms, started.times, {op: prepared.policy.cap(op) for op in prepared.caps})
    heartbeat.batches = lambda: consumer.batches_done
    heartbeat.enabled = lambda: consumer.redis_ok and not consumer.stopping
    consumer.on_connect, consumer.on_batch = heartbeat.beat, heartbeat.publish_stats
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    server = serve_http(consumer, watch, settings, port, args.metrics_host)
    log.info("worker %s (%s) on %s, metrics on port %d", args.name, runtime.info.name,
             redis_url(settings.redis_url, settings.redis_tls).split("@")[-1], server.server_address[1])

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        consumer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    heartbeat.start()
    try:
        consumer.run()
    finally:
        heartbeat.stop()
        metrics.worker_ready().set(0)
        _leave(client, keys, args.name)
        log.info("worker %s stopped after %d batches", args.name, consumer.batches_done)
        server.shutdown()
        runtime.close()
        client.close()
    return 0


def _leave(client: redis.Redis, keys: Keys, name: str) -> None:
    """Remove the heartbeat; leave each group where nothing is pending under this name."""
    try:
        client.zrem(keys.workers, name)
        for op in OPS:
            stream = keys.work(op)
            if not client.xpending_range(stream, GROUP, "-", "+", 1, consumername=name):
                client.xgroup_delconsumer(stream, GROUP, name)
    except (redis.RedisError, OSError) as exc:
        log.warning("could not deregister on shutdown: %s", exc)
