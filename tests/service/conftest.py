"""Fixtures: an app over a FakeRuntime, driven by TestClient (lifespan included)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from evotok.service.app import create_app
from evotok.service.settings import Settings
from tests.service.fakes import ServiceFakeRuntime


def make_settings(**overrides: Any) -> Settings:
    # batch_cap fixed at max_batch_size: the auto cap timed on a zero-cost fake runtime would be noise
    base: dict[str, Any] = {"max_batch_size": 8, "batch_cap": "1024", "max_queue_delay_ms": 2.0, "warmup_batch_sizes": [1],
                            "request_timeout_s": 10.0, "max_body_bytes": 2_000_000, "max_image_pixels": 4_000_000}
    base.update(overrides)
    return Settings(**base)


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture
def app_client() -> Iterator[Callable[..., TestClient]]:
    """Factory: ``app_client(runtime=..., **settings)`` -> a started, ready TestClient."""
    clients: list[TestClient] = []

    def make(runtime: ServiceFakeRuntime | None = None, ready: bool = True, **overrides: Any) -> TestClient:
        rt = runtime or ServiceFakeRuntime()
        app = create_app(make_settings(**overrides), runtime_factory=lambda: rt)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if ready:
            wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    return app_client()


def png_bytes(size: tuple[int, int] = (64, 64), mode: str = "RGB", seed: int = 0, fmt: str = "PNG", **save: Any) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    if mode == "CMYK":
        img = Image.fromarray(arr[..., :3]).convert("CMYK")
    elif mode == "LA":
        img = Image.fromarray(arr[..., 0]).convert("LA")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()
