"""Exception handlers: every error leaves the app in the one JSON shape of ``errors.py``.

``{"error": {"code": "...", "message": "...", "status": N, "request_id": "..."}}`` for domain exceptions (status/code from
ERROR_TABLE), FastAPI's request validation errors (422 ``invalid_input``), Starlette HTTP errors (404
``not_found``, 405 ``method_not_allowed``, ...) and anything unexpected (500 ``internal``, logged, never a
stack trace in the body). A client that hangs up while its request body is still being read (Starlette's
``ClientDisconnect``) is counted in ``evotok_client_disconnects_total`` like one that hangs up while its
request is queued, and answered 499 ``client_closed_request`` (nobody reads it) instead of a logged 500. 429/503 carry ``Retry-After`` when the error knows it; 401 carries
``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from evotok.service import metrics
from evotok.service.errors import ERROR_TABLE, ServiceError
from evotok.service.request_context import HEADER, current_request_id

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "queue_full",
    503: "not_ready",
}
ENDPOINTS = {"/encode": "encode", "/decode": "decode", "/embed": "embed", "/info": "info",
             "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


def endpoint_of_path(path: str) -> str:
    if path.startswith("/v2"):  # the Open Inference Protocol: inference apart from its metadata and health
        return "v2_infer" if path.endswith("/infer") else "v2"
    return ENDPOINTS.get(path, "other")


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The one error shape; inside a request ``error.request_id`` is the request's ``X-Request-ID``."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    rid = current_request_id()
    if rid is not None:
        error["request_id"] = rid
    return {"error": error}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    rid = current_request_id()
    if rid is not None:  # also on answers sent outside RequestIdMiddleware (the 500 handler)
        headers = {**(headers or {}), HEADER: rid}
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def count_rejection(request: Request, status: int, code: str) -> None:
    """``evotok_admission_rejections_total`` for an error answer, labelled by the request's endpoint."""
    if status >= 400:
        metrics.REJECTIONS.labels(endpoint_of_path(request.url.path), metrics.reason_of_code(code)).inc()


def error_headers(exc: ServiceError, status: int) -> dict[str, str]:
    """The headers of an error answer, for every HTTP surface (our routes and the v2 protocol): ``Retry-After``
    on 429/503 (the error's own estimate, else 1 s), ``WWW-Authenticate`` on 401."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif status in (429, 503):
        headers["Retry-After"] = "1"
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def service_error_response(exc: ServiceError) -> JSONResponse:
    status, code = ERROR_TABLE.get(type(exc), (exc.status, exc.code))
    return error_response(status, code, exc.message, error_headers(exc, status))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = service_error_response(exc)
    count_rejection(request, response.status_code, ERROR_TABLE.get(type(exc), (exc.status, exc.code))[1])
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    count_rejection(request, 422, "invalid_input")
    return error_response(422, "invalid_input", "; ".join(parts) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    count_rejection(request, exc.status_code, code)
    headers = dict(exc.headers or {})
    return error_response(exc.status_code, code, str(exc.detail), headers or None)


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientDisconnect)
    metrics.CLIENT_DISCONNECTS.labels(endpoint_of_path(request.url.path)).inc()
    count_rejection(request, 499, "client_closed_request")
    return error_response(499, "client_closed_request", "client disconnected while sending the request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    count_rejection(request, 500, "internal")
    return error_response(500, "internal", "internal server error; the event was logged")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given statuses, with the machine codes from ERROR_TABLE."""
    by_status: dict[int, list[str]] = {}
    for status, code in ERROR_TABLE.values():
        by_status.setdefault(status, []).append(code)
    extra = {401: ["unauthorized"], 403: ["forbidden"], 404: ["not_found"], 500: ["backend_error", "internal"]}
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = sorted(set(by_status.get(status, []) + extra.get(status, [])))
        first = codes[0] if codes else "error"
        out[status] = {
            "description": f"error; code one of: {', '.join(codes)}",
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "example": error_body(status, first, "human-readable explanation"),
            }},
        }
    return out
