"""``Client``: the blocking Python client over httpx, one method per endpoint.

from evotok.client import Client
with Client("http://127.0.0.1:8000", api_key="...") as c:
    res = c.encode("photo.jpg")          # res.codes: (16, 16, 16) uint16
    png = c.decode(res.codes[..., :4])   # DecodeResult; .image() -> PIL
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx

from evotok.client import calls, wire
from evotok.client.errors import EvoTokError
from evotok.client.retry import RetryPolicy, parse_retry_after
from evotok.client.types import DecodeResult, EmbedResult, EncodeResult, Health
from evotok.export.types import ModelInfo

T = TypeVar("T")
log = logging.getLogger(__name__)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def error_for(resp: httpx.Response) -> EvoTokError:
    return EvoTokError.from_response(
        resp.status_code, resp.content, parse_retry_after(resp.headers.get("retry-after"))
    )


def transport_error(exc: httpx.TransportError) -> EvoTokError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return EvoTokError(code, f"{type(exc).__name__}: {exc}", 0)


class Client:
    """Blocking client. ``timeout_s`` bounds each attempt; ``retry`` decides how often and how long to wait."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
        )

    # --- plumbing ------------------------------------------------------------------------------------
    def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                t0 = time.perf_counter()
                resp = self._http.request(call.method, call.path, **call.request_kwargs())
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
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- endpoints -----------------------------------------------------------------------------------
    def encode(self, image: wire.ImageInput, *, depth: int | None = None, fmt: str = "json") -> EncodeResult:
        """One image -> codes ``(h, w, d)`` uint16 (``d`` = ``depth`` or all D). ``fmt``: json | npy on the wire."""
        return self._send(calls.encode(image, depth, fmt))

    def encode_many(
        self, images: Sequence[wire.ImageInput], *, depth: int | None = None, fmt: str = "json"
    ) -> EncodeResult:
        """Several images in one batch-form request -> codes ``(B, h, w, d)`` uint16."""
        return self._send(calls.encode_many(images, depth, fmt))

    def decode(self, codes: Any, *, fmt: str = "npy") -> DecodeResult:
        """Codes ``(h, w, d)`` -> PNG of the reconstruction (the first ``min(d, pixel_depth)`` depths)."""
        return self._send(calls.decode(codes, fmt))

    def embed(
        self, image: wire.ImageInput | None = None, *, codes: Any = None, fmt: str = "json"
    ) -> EmbedResult:
        """Semantic features ``(h*w, C)`` float32 of an image, or of codes (pass ``codes=``)."""
        if (image is None) == (codes is None):
            raise ValueError("pass exactly one of image or codes")
        call = calls.embed_image(image, fmt) if codes is None else calls.embed_codes(codes, fmt)
        return self._send(call)

    def info(self) -> ModelInfo:
        return self._send(calls.info())

    def healthz(self) -> Health:
        return self._send(calls.health("/healthz"))

    def readyz(self) -> Health:
        return self._send(calls.health("/readyz"))

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> Health:
        """Poll ``/readyz`` until 200; raise ``EvoTokError('not_ready', ...)`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Health | EvoTokError | None = None
        while time.monotonic() < deadline:
            try:
                last = self.readyz()
                if last.ok:
                    return last
            except EvoTokError as exc:
                last = exc
            time.sleep(poll_s)
        raise EvoTokError("not_ready", f"server not ready after {timeout_s}s (last: {last})", 503)
