"""uvicorn's httptools protocol with a header timeout and a connection limit that answer in the one error shape.

uvicorn has no timeout for a request's headers (a client may open a connection and send nothing, or one
header byte per second, forever), and its ``limit_concurrency`` answers a plain-text 503 without
``Retry-After``. ``LimitedHttpToolsProtocol`` adds, per connection:

- ``header_timeout_s`` (``EVOTOK_HEADER_TIMEOUT_S``): armed when the connection opens and again after each
  response; the next request's headers must be complete within it, else 408 ``request_timeout`` and the
  connection closes. When a request was answered before its body was read (413, 503 ``server_busy``) the
  parser discards the rest of the body, within ``body_timeout_s``.
- ``limit_concurrency`` (``EVOTOK_LIMIT_CONCURRENCY``, passed to uvicorn as usual): over it a request gets
  503 ``server_busy`` with ``Retry-After: 1`` (JSON); ``/healthz``, ``/readyz`` and ``/metrics`` are exempt so
  probes keep working when the server is full.

``protocol_class(settings)`` returns the class bound to the settings for ``uvicorn.Config(http=...)``; it
returns None when httptools is missing (uvicorn then uses h11 and its own limits).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from evotok.service.settings import Settings

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _json_response(status: int, reason: str, code: str, message: str, extra: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(), b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), *(k + b": " + v for k, v in extra)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _busy_app(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"error": {"code": "server_busy", "status": 503,
                                 "message": "too many connections to this server; retry shortly"}}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
    HAVE_HTTPTOOLS = False


class _HeaderTimeoutMixin:
    """The additions; mixed into uvicorn's ``HttpToolsProtocol`` below."""

    header_timeout_s: float | None = None  # None: EVOTOK_HEADER_TIMEOUT_S from the environment (worker processes)
    body_timeout_s: float | None = None  # bound on discarding the unread body of a request answered early
    app: Any
    cycle: Any
    connections: set[Any]
    tasks: set[Any]
    limit_concurrency: int | None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    url: bytes
    timeout_keep_alive: int
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def _setup_limits(self) -> None:
        if self.header_timeout_s is None:
            from evotok.service.settings import get_settings

            type(self).header_timeout_s = get_settings().header_timeout_s
            type(self).body_timeout_s = get_settings().body_timeout_s
        self._max_open = self.limit_concurrency
        self.limit_concurrency = None  # checked in on_headers_complete, with a JSON answer and probe exemption
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float | None = None) -> None:
        self._disarm()
        assert self.header_timeout_s is not None
        self._header_timer = self.loop.call_later(seconds or self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is running; the body timeout and the request deadline govern it
        self.transport.write(_json_response(
            408, "Request Timeout", "request_timeout",
            f"the request headers did not arrive within {self.header_timeout_s:g} s", [(b"connection", b"close")]))
        self.transport.close()

    def _over_limit(self) -> bool:
        if self._max_open is None:
            return False
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        full = len(self.connections) > self._max_open or len(self.tasks) >= self._max_open
        return full and path not in PROBE_PATHS


if HAVE_HTTPTOOLS:

    class LimitedHttpToolsProtocol(_HeaderTimeoutMixin, HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._setup_limits()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            if not self._over_limit():
                super().on_headers_complete()
                return
            app, self.app = self.app, _busy_app  # the cycle starts with the app set at this moment
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.more_body:
                # answered early (413/503): the parser discards the rest of the body, bounded by the body
                # timeout; uvicorn's keep-alive timer would cut a client still uploading (it gets no answer)
                self._unset_keepalive_if_required()
                self._arm(self.body_timeout_s)
            else:
                self._arm()

        def on_message_complete(self) -> None:
            discarding = self.cycle is not None and self.cycle.response_complete and self.cycle.more_body
            super().on_message_complete()
            if discarding and not self.transport.is_closing():
                self._arm()  # the discarded body ended: the next request's headers are due
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)


def protocol_class(settings: Settings, importable: bool = False) -> type[asyncio.Protocol] | str | None:
    """The protocol for ``uvicorn.run(http=...)`` bound to ``settings``; with ``importable`` the import
    string (uvicorn worker processes import it and read the timeout from the environment). None without
    httptools."""
    if not HAVE_HTTPTOOLS:
        return None
    if importable:
        return f"{__name__}:LimitedHttpToolsProtocol"
    bound: type[asyncio.Protocol] = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s})
    return bound
