"""Domain exceptions and their one HTTP mapping table.

Every error response has the same JSON shape::

    {"error": {"code": "queue_full", "message": "human readable", "status": 429}}

``code`` is machine-readable and stable; ``message`` may change.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``status`` and ``code`` come from the subclass (see ERROR_TABLE)."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class InvalidImage(InvalidInput):
    code = "invalid_image"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidCodes(InvalidInput):
    code = "invalid_codes"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class RequestTimeout(ServiceError):
    """The request's headers or body did not arrive within the header/body timeout (slow clients)."""

    status, code = 408, "request_timeout"


class ServerBusy(ServiceError):
    """This process's in-flight body-byte budget or connection limit is full (not the queue: see Overloaded)."""

    status, code = 503, "server_busy"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotAcceptable(ServiceError):
    status, code = 406, "not_acceptable"


class Overloaded(ServiceError):
    status, code = 429, "queue_full"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class BackendError(ServiceError):
    status, code = 500, "backend_error"


class ClientGone(ServiceError):
    """The client closed the connection before its answer (nginx's 499; nobody reads the body)."""

    status, code = 499, "client_closed_request"


# The one table: exception class -> (HTTP status, machine-readable code). Used by the handlers in app.py
# and rendered into the OpenAPI error responses.
ERROR_TABLE: dict[type[ServiceError], tuple[int, str]] = {
    cls: (cls.status, cls.code)
    for cls in (
        InvalidInput,
        InvalidImage,
        InvalidCodes,
        UnsupportedMediaType,
        PayloadTooLarge,
        RequestTimeout,
        ServerBusy,
        Unauthorized,
        Forbidden,
        NotAcceptable,
        Overloaded,
        DeadlineExceeded,
        NotReady,
        BackendError,
        ClientGone,
    )
}
_CLASS_OF_CODE: dict[str, type[ServiceError]] = {code: cls for cls, (_, code) in ERROR_TABLE.items()}


RETRY_AFTER_S: dict[str, float] = {"not_ready": 1.0}  # codes whose answers tell the client when to retry


def error_of_code(code: str, message: str) -> ServiceError:
    """The table's exception for a machine-readable ``code`` raised outside the HTTP layer: ``evotok.imaging``'s
    ``ImageError``, the batching core's answers (``step.Answer.code``) in process and through Redis. A code
    missing from the table is a bug, answered 500 ``internal``."""
    cls = _CLASS_OF_CODE.get(code)
    if cls is None:
        return ServiceError(f"{code}: {message}")
    return cls(message, retry_after_s=RETRY_AFTER_S.get(code))
