"""The one mapping from the service's error table (``errors.ERROR_TABLE``) to the Open Inference Protocol.

HTTP: the v2 error shape ``{"error": "<message>"}`` with the same status code our own routes answer (and the
same ``Retry-After`` / ``WWW-Authenticate`` headers). gRPC: a status code by the HTTP status of the same
table entry, the message as the details.

========  ===================================  =========================
HTTP      codes (errors.py)                    gRPC
========  ===================================  =========================
401       unauthorized                         UNAUTHENTICATED
403       forbidden                            PERMISSION_DENIED
404       not_found (unknown model/version)    NOT_FOUND
406/415   not_acceptable, unsupported_media    INVALID_ARGUMENT
408       request_timeout                      DEADLINE_EXCEEDED
413       payload_too_large                    RESOURCE_EXHAUSTED
422       invalid_input/_image/_codes          INVALID_ARGUMENT
429       queue_full                           RESOURCE_EXHAUSTED
499       client_closed_request                CANCELLED
503       not_ready, server_busy               UNAVAILABLE
504       deadline_exceeded                    DEADLINE_EXCEEDED
500       backend_error, internal, other       INTERNAL
========  ===================================  =========================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evotok.service.errors import ServiceError
from evotok.service.handlers import error_headers

if TYPE_CHECKING:
    import grpc


class ModelNotFound(ServiceError):
    """An unknown v2 model name or version."""

    status, code = 404, "not_found"


def http_error(exc: ServiceError) -> tuple[int, dict[str, str], dict[str, str]]:
    """(status, ``{"error": message}``, headers) for a v2 HTTP error answer."""
    status = exc.status
    return status, {"error": exc.message}, error_headers(exc, status)


_GRPC_NAME_OF_HTTP: dict[int, str] = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    406: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code_name(exc: ServiceError) -> str:
    """The ``grpc.StatusCode`` member name for ``exc`` (``INTERNAL`` for 500 and anything unmapped)."""
    return _GRPC_NAME_OF_HTTP.get(exc.status, "INTERNAL")


def grpc_code(exc: ServiceError) -> grpc.StatusCode:
    import grpc

    code: grpc.StatusCode = getattr(grpc.StatusCode, grpc_code_name(exc))
    return code
