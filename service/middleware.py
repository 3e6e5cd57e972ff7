"""Pure-ASGI middleware: request body limit (413 before and while reading) and HTTP metrics.

The body limit checks ``Content-Length`` up front and counts bytes while the body streams in (chunked
uploads), so an oversize request is refused without being buffered. The metrics middleware records
``evotok_http_requests_total{endpoint,code}``, the duration histogram, in-flight gauge and payload sizes.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evotok.service import metrics
from evotok.service.errors import PayloadTooLarge
from evotok.service.handlers import endpoint_of_path, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    metrics.REJECTIONS.labels(endpoint_of_path(scope.get("path", "")), "payload_too_large").inc()
                    response = error_response(
                        413, "payload_too_large", f"request body is {declared} bytes; the limit is {limit}"
                    )
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of_path(scope.get("path", ""))
        status = {"code": 500}
        sizes = {"in": 0, "out": 0}
        start = time.perf_counter()
        in_flight = metrics.HTTP_IN_FLIGHT.labels(endpoint)
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
            metrics.HTTP_REQUESTS.labels(endpoint, str(status["code"])).inc()
            metrics.HTTP_DURATION.labels(endpoint).observe(time.perf_counter() - start)
            if endpoint in ("encode", "decode", "embed"):
                metrics.PAYLOAD_BYTES.labels(endpoint, "in").observe(sizes["in"])
                metrics.PAYLOAD_BYTES.labels(endpoint, "out").observe(sizes["out"])
