"""Servers for the v2 tests: a real uvicorn process (``tests/service/server.py``) with its gRPC port on a free
port, over the FakeRuntime (``tests.service.fake_app``) or the shipped model (``evotok serve``)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.server import Server, free_port, start_server

try:
    import tritonclient.grpc  # noqa: F401  (the dev extra; missing, the suite fails loudly rather than skips)
except ImportError as exc:
    raise ImportError(f"tests/oip needs tritonclient[http,grpc] (the dev extra): {exc}") from exc


@dataclass
class OipServer:
    server: Server
    grpc_port: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_target(self) -> str:
        return self.server.url.removeprefix("http://")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_oip(args: list[str], env: dict[str, str], log: Path, timeout: float = 60.0) -> OipServer:
    port = free_port()
    srv = start_server(args, {**env, "EVOTOK_GRPC_PORT": str(port)}, log)
    try:
        srv.wait_ready(timeout)
        _wait_grpc(port, srv)
    except BaseException:
        srv.stop()
        raise
    return OipServer(srv, port)


def _wait_grpc(port: int, srv: Server, timeout: float = 20.0) -> None:
    import tritonclient.grpc as tg

    end = time.monotonic() + timeout
    with tg.InferenceServerClient(f"127.0.0.1:{port}") as client:
        while time.monotonic() < end:
            try:
                if client.is_server_ready(client_timeout=1.0):
                    return
            except Exception:
                time.sleep(0.1)
    raise TimeoutError(f"gRPC not ready on {port}:\n{srv.log()}")


FAKE_ENV = {"EVOTOK_WARMUP_BATCH_SIZES": "[1]", "EVOTOK_BATCH_CAP": "8", "EVOTOK_MAX_QUEUE_DELAY_MS": "5",
            "EVOTOK_MAX_BODY_BYTES": "2000000", "EVOTOK_MAX_BATCH_IMAGES": "8"}


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    """The service over the FakeRuntime (64 px images, 4x4 grid, 4 depths, K = 256), gRPC on a free port."""
    srv = start_oip(["uvicorn", "--factory", "tests.service.fake_app:build"], FAKE_ENV,
                    tmp_path_factory.mktemp("oip-fake") / "server.log")
    yield srv
    srv.server.stop()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def random_png(seed: int, size: tuple[int, int] = (90, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
