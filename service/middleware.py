"""Pure-ASGI middleware: request body limits (size, global byte budget, time) and HTTP metrics.

``BodyLimitMiddleware`` bounds what one process holds in request bodies:

- size: ``Content-Length`` over ``EVOTOK_MAX_BODY_BYTES`` is refused up front (413), and bytes are counted
  while the body streams in (chunked uploads), so an oversize body is never buffered;
- budget: every body reserves its bytes from ``EVOTOK_MAX_INFLIGHT_BODY_BYTES`` (the declared length before
  any byte is read, or chunk by chunk without one) until its response is sent; a body that does not fit gets
  503 ``server_busy`` with ``Retry-After`` before it is read (uvicorn discards the unread rest) or as soon as
  a chunked body overflows. One request alone is always admitted, so a budget below the body limit cannot
  starve;
- time: the whole body must arrive within ``EVOTOK_BODY_TIMEOUT_S`` of the request start, else 408
  ``request_timeout`` and the connection is closed (slow-body clients; slow headers are handled in
  ``http_protocol.py``).

The metrics middleware records ``evotok_http_requests_total{endpoint,code}``, the duration histogram,
in-flight gauge and payload sizes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evotok.service import metrics
from evotok.service.errors import PayloadTooLarge, RequestTimeout, ServerBusy
from evotok.service.handlers import endpoint_of_path, error_response, service_error_response
from evotok.service.settings import Settings

ARRIVAL_KEY = "evotok.arrival"  # ASGI scope key: time.monotonic() when the request reached the app


class ByteBudget:
    """Bytes reserved by the bodies this process is receiving or holding (one per app, event-loop only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def try_reserve(self, n: int) -> bool:
        if self.used and self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """Body size, in-flight byte budget and body timeout (see the module docstring).

    ``settings`` may be omitted: it is then read from ``app.state.evotok`` (``create_app``) on first use.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None, settings: Settings | None = None) -> None:
        self.app = app
        self._max_body_bytes = max_body_bytes
        self._settings = settings
        self._budget: ByteBudget | None = None

    def _limits(self, scope: Scope) -> tuple[int, ByteBudget, float]:
        if self._settings is None:
            self._settings = scope["app"].state.evotok.settings
        s: Any = self._settings
        if self._budget is None:
            self._budget = ByteBudget(int(s.max_inflight_body_bytes))
        return int(self._max_body_bytes or s.max_body_bytes), self._budget, float(s.body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, budget, body_timeout_s = self._limits(scope)
        endpoint = endpoint_of_path(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            metrics.REJECTIONS.labels(endpoint, "payload_too_large").inc()
            response = error_response(413, "payload_too_large", f"request body is {declared} bytes; the limit is {limit}")
            await response(scope, receive, send)
            return
        reserved = 0
        if declared:
            if not budget.try_reserve(declared):
                metrics.REJECTIONS.labels(endpoint, metrics.reason_of_code("server_busy")).inc()
                busy = ServerBusy(f"this server is receiving {budget.used} body bytes (budget {budget.capacity}); "
                                  "retry shortly", retry_after_s=1.0)
                await service_error_response(busy)(scope, receive, send)
                return
            reserved = declared
        loop_deadline = asyncio.get_running_loop().time() + body_timeout_s
        seen = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal seen, reserved, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(loop_deadline):  # no task per message, as wait_for makes
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {body_timeout_s:g} s "
                                     f"({seen} bytes received)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                if seen > reserved:
                    if not budget.try_reserve(seen - reserved):
                        raise ServerBusy("the server's body-byte budget is full; retry shortly", retry_after_s=1.0)
                    reserved = seen
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 408:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        finally:
            budget.release(reserved)


class _EndpointMetrics:
    """One endpoint's metric children, looked up once (``labels()`` per request cost more than the updates)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.in_flight = metrics.HTTP_IN_FLIGHT.labels(endpoint)
        self.duration = metrics.HTTP_DURATION.labels(endpoint)
        self.by_code: dict[int, Any] = {}
        self.payload = ((metrics.PAYLOAD_BYTES.labels(endpoint, "in"), metrics.PAYLOAD_BYTES.labels(endpoint, "out"))
                        if endpoint in ("encode", "decode", "embed", "v2_infer") else None)

    def requests(self, code: int) -> Any:
        child = self.by_code.get(code)
        if child is None:
            child = self.by_code[code] = metrics.HTTP_REQUESTS.labels(self.endpoint, str(code))
        return child


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[str, _EndpointMetrics] = {}  # endpoint_of_path gives a bounded set of names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of_path(scope.get("path", ""))
        m = self._children.get(endpoint)
        if m is None:
            m = self._children[endpoint] = _EndpointMetrics(endpoint)
        status = {"code": 500}
        sizes = {"in": 0, "out": 0}
        start = time.perf_counter()
        scope.setdefault(ARRIVAL_KEY, time.monotonic())  # the request's deadline counts from here
        in_flight = m.in_flight
        in_flight.inc()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                sizes["in"] += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            in_flight.dec()
            m.requests(status["code"]).inc()
            m.duration.observe(time.perf_counter() - start)
            if m.payload is not None:
                m.payload[0].observe(sizes["in"])
                m.payload[1].observe(sizes["out"])
