"""``AsyncClient``: the asyncio twin of ``Client`` (same methods, awaitable), for many concurrent requests.

    async with AsyncClient(url, max_concurrency=32) as c:
        results = await asyncio.gather(*(c.encode(p) for p in paths))

``max_concurrency`` bounds requests in flight (a semaphore) so a large gather does not open thousands of
connections; the connection pool is sized to match.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx

from evotok.client import calls, wire
from evotok.client.errors import EvoTokError
from evotok.client.retry import RetryPolicy
from evotok.client.sync_client import auth_headers, error_for, transport_error
from evotok.client.types import DecodeResult, EmbedResult, EncodeResult, Health
from evotok.export.types import ModelInfo

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sem = asyncio.Semaphore(max_concurrency)
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=auth_headers(api_key),
            timeout=timeout_s,
            limits=limits,
            transport=transport,
        )

    async def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            async with self._sem:
                try:
                    t0 = time.perf_counter()
                    resp = await self._http.request(call.method, call.path, **call.request_kwargs())
                    latency = time.perf_counter() - t0
                except httpx.TransportError as exc:
                    err = transport_error(exc)
                    retriable = self.retry.retry_connect_errors and isinstance(exc, httpx.ConnectError)
                else:
                    if resp.status_code in call.ok_statuses:
                        return call.parse(resp, latency)
                    err = error_for(resp)
                    retriable = resp.status_code in self.retry.retry_statuses
            if not retriable or attempt >= self.retry.max_retries:
                raise err
            delay = self.retry.delay_s(attempt, err.retry_after_s)
            log.info("%s %s: %s; retry %d in %.2fs", call.method, call.path, err, attempt + 1, delay)
            await asyncio.sleep(delay)  # outside the semaphore: a backing-off request holds no slot
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def encode(
        self, image: wire.ImageInput, *, depth: int | None = None, fmt: str = "json"
    ) -> EncodeResult:
        return await self._send(calls.encode(image, depth, fmt))

    async def encode_many(
        self, images: Sequence[wire.ImageInput], *, depth: int | None = None, fmt: str = "json"
    ) -> EncodeResult:
        return await self._send(calls.encode_many(images, depth, fmt))

    async def decode(self, codes: Any, *, fmt: str = "npy") -> DecodeResult:
        return await self._send(calls.decode(codes, fmt))

    async def embed(
        self, image: wire.ImageInput | None = None, *, codes: Any = None, fmt: str = "json"
    ) -> EmbedResult:
        if (image is None) == (codes is None):
            raise ValueError("pass exactly one of image or codes")
        call = calls.embed_image(image, fmt) if codes is None else calls.embed_codes(codes, fmt)
        return await self._send(call)

    async def info(self) -> ModelInfo:
        return await self._send(calls.info())

    async def healthz(self) -> Health:
        return await self._send(calls.health("/healthz"))

    async def readyz(self) -> Health:
        return await self._send(calls.health("/readyz"))

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> Health:
        deadline = time.monotonic() + timeout_s
        last: Health | EvoTokError | None = None
        while time.monotonic() < deadline:
            try:
                last = await self.readyz()
                if last.ok:
                    return last
            except EvoTokError as exc:
                last = exc
            await asyncio.sleep(poll_s)
        raise EvoTokError("not_ready", f"server not ready after {timeout_s}s (last: {last})", 503)
