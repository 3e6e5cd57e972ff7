"""Start a real uvicorn server in a subprocess for end-to-end tests (client, CLI, tokenizer, web page).

``app_factory`` (``uvicorn --factory tests.client.server:app_factory``) builds the real app with
``create_app``; the runtime comes from ``EVOTOK_TEST_RUNTIME``:

- ``fake`` (default): ``ServiceFakeRuntime`` shaped like the shipped model (256 px, 16x16 grid, 16 depths,
  K=4096, pixel depth 4), deterministic numpy, golden self-test computed; ``EVOTOK_TEST_DELAY_S`` slows
  each batch (for interruption tests).
- ``real``: the app's default runtime factory (the shipped weights, ``EVOTOK_BACKEND``).

Servers are stopped by PID (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from evotok.tools.procs import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
FAKE_SHAPE: dict[str, Any] = dict(
    image_size=256,
    grid=16,
    num_depths=16,
    codebook_size=4096,
    pixel_depth=4,
    semantic_depth=16,
    semantic_dim=16,
)


def fake_runtime(delay_s: float = 0.0) -> Any:
    from tests.service.fakes import ServiceFakeRuntime

    return ServiceFakeRuntime(delay_s=delay_s, **FAKE_SHAPE)


def real_weights_available() -> bool:
    from evotok.paths import default_weights_dir

    d = default_weights_dir()
    return (d / "model.safetensors").exists() and (d / "config.json").exists()


def app_factory() -> Any:
    from evotok.service.app import create_app
    from evotok.service.settings import Settings

    kind = os.environ.get("EVOTOK_TEST_RUNTIME", "fake")
    settings = Settings()
    if kind == "real":
        return create_app(settings)
    delay = float(os.environ.get("EVOTOK_TEST_DELAY_S", "0"))
    return create_app(settings, runtime_factory=lambda: fake_runtime(delay))


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 15)


def start_server(
    tmp: Path,
    *,
    runtime: str = "fake",
    env: dict[str, str] | None = None,
    app: str = "tests.client.server:app_factory",
    ready_path: str = "/readyz",
    timeout_s: float = 120.0,
) -> Server:
    port = free_port()
    full_env = {
        **os.environ,
        "EVOTOK_TEST_RUNTIME": runtime,
        "EVOTOK_WARMUP_BATCH_SIZES": "[1]",
        "EVOTOK_MAX_QUEUE_DELAY_MS": "2",
        "PYTHONPATH": str(REPO),
        **(env or {}),
    }
    log_path = tmp / f"uvicorn-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout_s}s:\n{server.log()}")


@contextlib.contextmanager
def running_server(tmp: Path, **kwargs: Any) -> Iterator[Server]:
    server = start_server(tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()
