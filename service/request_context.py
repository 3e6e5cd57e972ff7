"""Request IDs: accept the client's ``X-Request-ID`` or make one, echo it, and make it visible to logs and errors.

``RequestIdMiddleware`` (pure ASGI, the outermost middleware of ``create_app``) takes ``X-Request-ID`` from the
request when it is valid (1..``MAX_LEN`` visible ASCII characters, ``0x21``-``0x7e``: no spaces, no control
characters, so it can be logged and echoed as it is) and otherwise makes one (32 random hex digits). It then

- sets the context variable ``request_id`` for the request's task (read it with ``current_request_id()``; the
  Redis admission path reads it to carry the id to the worker, and the worker sets it while it runs an entry);
- keeps it in ``scope["evotok.request_id"]`` (the 500 handler runs outside this middleware and reads it there);
- adds ``X-Request-ID`` to the response headers (unless the response already carries it).

``RequestIdLogFilter`` gives every log record a ``request_id`` attribute (``-`` outside a request): uvicorn's
access log (``ACCESS_LOG_FORMAT``, set by ``evotok serve``) and the JSON log lines print it. The error bodies
carry it as ``error.request_id`` (``handlers.error_body``).
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evotok.service import tracing

HEADER = "X-Request-ID"
_HEADER_LOWER = HEADER.lower().encode("latin-1")
SCOPE_KEY = "evotok.request_id"
MAX_LEN = 128
NONE = "-"  # what logs print outside a request

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("evotok_request_id", default=None)

ACCESS_LOG_FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s request_id=%(request_id)s'


def current_request_id() -> str | None:
    """The id of the request this code runs for, or None outside a request."""
    return request_id.get()


def valid_request_id(value: str | bytes | None) -> bool:
    if value is None:
        return False
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    return 0 < len(raw) <= MAX_LEN and all(0x21 <= b <= 0x7E for b in raw)


def new_request_id() -> str:
    """32 random hex digits (as ``uuid4().hex`` but without building a UUID: this runs for every request)."""
    return os.urandom(16).hex()


def request_id_of(headers: list[tuple[bytes, bytes]] | Any) -> str:
    """The valid ``X-Request-ID`` among raw ASGI headers, or a new id."""
    for name, value in headers or ():
        if name.lower() == _HEADER_LOWER:
            if valid_request_id(value):
                return str(value.decode("ascii"))
            break
    return new_request_id()


def bind(rid: str | None) -> contextvars.Token[str | None]:
    """Set the current request id (the worker does this around each entry it runs); undo with ``unbind``."""
    return request_id.set(rid if rid is None or valid_request_id(rid) else None)


def unbind(token: contextvars.Token[str | None]) -> None:
    request_id.reset(token)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope.get("headers"))
        scope[SCOPE_KEY] = rid
        header = (_HEADER_LOWER, rid.encode("ascii"))

        async def echoing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == _HEADER_LOWER for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        token = request_id.set(rid)
        tracing.set_request_id(rid)
        await self.app(scope, receive, echoing_send)
        # Reset only after a normal return: after an exception the id stays set in this request's task, so the
        # 500 answer that Starlette's outer ServerErrorMiddleware sends (and its access line) still carry it.
        request_id.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds ``record.request_id``: the current request's id, or ``default`` outside a request (``None``: the
    attribute is left unset there). Never drops a record."""

    def __init__(self, default: str | None = NONE) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = current_request_id() or self.default
            if rid is not None:
                record.request_id = rid
        return True


class PlainFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s: %(message)s``, plus `` request_id=<id>`` on a request's lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid and rid != NONE:
            head, sep, tail = line.partition("\n")  # after the message, before a traceback
            line = f"{head} request_id={rid}{sep}{tail}"
        return line


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with the request id in every access line (``ACCESS_LOG_FORMAT``)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdLogFilter}}
    config["formatters"]["access"]["fmt"] = ACCESS_LOG_FORMAT
    config["handlers"]["access"]["filters"] = ["request_id"]
    return config
