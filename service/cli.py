"""Service entry points: ``evotok serve`` (the HTTP API) and ``evotok worker`` (Redis Streams worker).

Usage::

    evotok serve --host 127.0.0.1 --port 8000 [--workers N] [--backend onnxruntime] [--weights DIR]

Options given here are written to the matching ``EVOTOK_*`` variables, so uvicorn worker processes (which
build their app from the environment) see the same settings. With the ONNX Runtime backend and the
in-process queue, missing engines are exported into the cache dir first
(``evotok.export.onnx_export.ensure_exported``). With ``--workers N > 1`` metrics run in prometheus-client
multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR``). With ``EVOTOK_FRONTENDS`` > 1 (0 = auto: the usable cores
when more than one) and the in-process queue, ``service/local/`` runs N front-end processes on the port and one
runtime process (supervised, metrics in multiprocess mode as well). ``EVOTOK_FAKE_COST_MS=A,b`` serves a
FakeRuntime of the real model's size (no model folder needed).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evotok.service.settings import Settings

log = logging.getLogger(__name__)

_ENV_OPTIONS = {  # argparse dest -> environment variable
    "host": "EVOTOK_HOST", "port": "EVOTOK_PORT", "workers": "EVOTOK_WORKERS", "backend": "EVOTOK_BACKEND",
    "weights": "EVOTOK_WEIGHTS", "queue": "EVOTOK_QUEUE", "max_batch_size": "EVOTOK_MAX_BATCH_SIZE",
    "max_queue_delay_ms": "EVOTOK_MAX_QUEUE_DELAY_MS", "log_level": "EVOTOK_LOG_LEVEL", "frontends": "EVOTOK_FRONTENDS",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evotok serve", description="Run the EvoTok HTTP API (uvicorn).")
    p.add_argument("--host", help="bind address (default EVOTOK_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default EVOTOK_PORT or 8000)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    p.add_argument("--frontends", type=int, help="HTTP front-end processes feeding one runtime process (default "
                                               "EVOTOK_FRONTENDS or 0 = auto: the usable cores when more than one; "
                                               "1 = one process)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--weights", help="model folder (default EVOTOK_WEIGHTS, else the checkout's weights/evotok-small, "
                                     "else the model inside the installed package)")
    p.add_argument("--queue", choices=["inprocess", "redis"])
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-queue-delay-ms", type=float)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-export", action="store_true", help="do not export missing ONNX engines first")
    return p


def ensure_engines(weights: Path, cache_dir: Path) -> None:
    """Export ONNX engines for ``weights`` into ``cache_dir`` if they are missing (idempotent). The cache's
    export, or the model folder's own ``onnx/`` export (the packaged model carries one), is used as it is.
    When an export is needed and torch is not installed: one line on stderr naming the extra, exit status 2."""
    try:
        from evotok.export.onnx_export import ExporterUnavailableError, ensure_exported
    except ImportError as exc:
        raise SystemExit(
            "evotok serve: the ONNX exporter (evotok.export.onnx_export.ensure_exported) is not available "
            f"({exc}); run `evotok export` or start with --backend torch"
        ) from exc
    try:
        ensure_exported(weights, cache_dir)
    except ExporterUnavailableError as exc:
        sys.stderr.write(f"evotok serve: {exc}\n")
        raise SystemExit(2) from None


def _setup_multiprocess_metrics() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)  # stale files from an earlier run would be summed in
        Path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="evotok-metrics-")


def serve_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for dest, env in _ENV_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            os.environ[env] = str(value)

    from evotok.service.settings import Settings
    from evotok.service.startup import configure_logging

    settings = Settings()
    configure_logging(settings)
    frontends = 1
    if settings.queue == "inprocess" and settings.workers == 1:
        from evotok.service.local.supervisor import frontends_for

        frontends = frontends_for(settings)  # EVOTOK_FRONTENDS (service/local/)
    if settings.queue == "inprocess" and not settings.fake_cost_ms:
        if not (settings.weights / "config.json").exists():
            sys.stderr.write(f"evotok serve: no model at {settings.weights} (config.json missing); "
                             "set EVOTOK_WEIGHTS or --weights\n")
            return 2
        if settings.backend == "onnxruntime" and not args.no_export:
            ensure_engines(settings.weights, settings.cache_dir)

    base = f"http://{settings.host}:{settings.port}"
    sys.stdout.write(
        f"EvoTok serving {settings.weights.name} ({settings.backend}, queue={settings.queue}, "
        f"workers={settings.workers}, frontends={frontends}) on {base}\n"
        f"  web page:  {base}/\n  API docs:  {base}/docs\n  metrics:   {base}/metrics\n"
        f"  ready:     {base}/readyz   (503 until warm-up and the golden self-test pass)\n"
    )
    sys.stdout.flush()
    if frontends > 1:  # front-end processes feeding one runtime process (service/local/)
        from evotok.service.local.supervisor import serve_local

        return serve_local(settings, frontends)
    if settings.workers > 1:
        _setup_multiprocess_metrics()
        run_uvicorn("evotok.service.app:create_app", settings, factory=True, workers=settings.workers)
    else:
        from evotok.service.app import create_app

        run_uvicorn(create_app(settings), settings)
    return 0


def uvicorn_options(settings: Settings, importable: bool = False) -> dict[str, Any]:
    """uvicorn keyword arguments from the settings: bind address, connection limit, keep-alive, and the
    protocol with the header timeout (``http_protocol.py``); ``docker-compose.yml`` and the Helm chart set the
    same ``EVOTOK_*`` variables."""
    from evotok.service.http_protocol import protocol_class
    from evotok.service.request_context import uvicorn_log_config

    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "log_config": uvicorn_log_config(),  # access lines end with request_id=<X-Request-ID>
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "h11_max_incomplete_event_size": 64 * 1024,  # header bytes (h11 fallback only; httptools caps at 80 kB)
    }
    protocol = protocol_class(settings, importable)
    if protocol is not None:
        options["http"] = protocol
    return options


def run_uvicorn(app: Any, settings: Settings, **extra: Any) -> None:
    """``uvicorn.run`` with ``uvicorn_options(settings)`` (``evotok serve`` and the end-to-end tests)."""
    import uvicorn

    uvicorn.run(app, **{**uvicorn_options(settings, importable=isinstance(app, str)), **extra})


def worker_main(argv: list[str]) -> int:
    """``evotok worker``: the Redis Streams inference worker (service/worker.py)."""
    from evotok.service.worker import main

    return main(argv)
