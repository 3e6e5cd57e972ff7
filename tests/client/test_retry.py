"""Retries against a real uvicorn server that answers 429/503 with Retry-After (tests/client/flaky_app.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from evotok.client import AsyncClient, Client, EvoTokError, RetryPolicy
from tests.client.server import free_port, running_server

pytestmark = pytest.mark.e2e
APP = "tests.client.flaky_app:app_factory"
FAST = RetryPolicy(max_retries=5, base_delay_s=0.01, max_delay_s=5.0)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the flaky app never decodes it


def calls(url: str) -> list[float]:
    times: list[float] = httpx.get(url + "/count").json()["times"]
    return times


@pytest.mark.parametrize("status", [429, 503])
def test_retries_honour_retry_after(tmp_path: Path, status: int) -> None:
    env = {"FLAKY_FAILURES": "2", "FLAKY_STATUS": str(status), "FLAKY_RETRY_AFTER": "1"}
    with running_server(tmp_path, app=APP, env=env) as s, Client(s.url, retry=FAST) as c:
        t0 = time.monotonic()
        res = c.encode(PNG)
        elapsed = time.monotonic() - t0
        times = calls(s.url)
    assert res.codes.shape == (2, 2, 2) and res.codes.dtype == np.uint16
    assert len(times) == 3
    gaps = np.diff(times)
    # base delay is 10 ms: waiting ~1 s per retry can only come from Retry-After
    assert (gaps >= 0.95).all(), gaps
    assert elapsed < 5


def test_retry_after_http_date(tmp_path: Path) -> None:
    env = {"FLAKY_FAILURES": "1", "FLAKY_STATUS": "503", "FLAKY_RETRY_AFTER": "date"}
    with running_server(tmp_path, app=APP, env=env) as s, Client(s.url, retry=FAST) as c:
        c.encode(PNG)
        times = calls(s.url)
    assert len(times) == 2 and times[1] - times[0] >= 0.9  # the date is 2 s ahead with 1 s resolution


def test_exponential_backoff_without_retry_after(tmp_path: Path) -> None:
    env = {"FLAKY_FAILURES": "3", "FLAKY_STATUS": "429", "FLAKY_RETRY_AFTER": "none"}
    policy = RetryPolicy(max_retries=5, base_delay_s=0.2, max_delay_s=5.0, jitter=False)
    with running_server(tmp_path, app=APP, env=env) as s, Client(s.url, retry=policy) as c:
        c.encode(PNG)
        gaps = np.diff(calls(s.url))
    assert len(gaps) == 3
    for gap, expect in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert expect - 0.02 <= gap < expect + 0.5, gaps


def test_gives_up_with_typed_error(tmp_path: Path) -> None:
    env = {"FLAKY_FAILURES": "100", "FLAKY_STATUS": "429", "FLAKY_RETRY_AFTER": "0"}
    with (
        running_server(tmp_path, app=APP, env=env) as s,
        Client(s.url, retry=RetryPolicy(max_retries=3, base_delay_s=0.01)) as c,
    ):
        with pytest.raises(EvoTokError) as info:
            c.encode(PNG)
        assert len(calls(s.url)) == 4  # first try + 3 retries
    err = info.value
    assert (err.code, err.status, err.message) == ("queue_full", 429, "try again later")
    assert err.retry_after_s == 0.0
    assert err.to_dict() == {"error": {"code": "queue_full", "message": "try again later", "status": 429}}


def test_client_errors_are_not_retried(tmp_path: Path) -> None:
    env = {"FLAKY_FAILURES": "0"}
    with running_server(tmp_path, app=APP, env=env) as s, Client(s.url, retry=FAST) as c:
        with pytest.raises(EvoTokError) as info:
            c.decode(np.zeros((2, 2, 1), np.uint16))
        assert len(calls(s.url)) == 1
    assert (info.value.code, info.value.status) == ("invalid_codes", 422)


def test_async_client_retries(tmp_path: Path) -> None:
    env = {"FLAKY_FAILURES": "3", "FLAKY_STATUS": "503", "FLAKY_RETRY_AFTER": "1"}

    async def main(url: str) -> list[np.ndarray]:
        async with AsyncClient(url, retry=FAST, max_concurrency=4) as c:
            results = await asyncio.gather(*(c.encode(PNG) for _ in range(4)))
        return [r.codes for r in results]

    with running_server(tmp_path, app=APP, env=env) as s:
        t0 = time.monotonic()
        codes = asyncio.run(main(s.url))
        elapsed = time.monotonic() - t0
        assert len(calls(s.url)) == 7  # 3 refused + 4 answered
    assert all((c == np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])).all() for c in codes)
    assert 0.95 <= elapsed < 5


def test_connection_refused_is_typed() -> None:
    port = free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=2, base_delay_s=0.01)) as c:
        t0 = time.monotonic()
        with pytest.raises(EvoTokError) as info:
            c.info()
    assert (info.value.code, info.value.status) == ("connection_error", 0)
    assert time.monotonic() - t0 < 2
