"""The one exception the client raises for a failed API call.

The service answers every error with ``{"error": {"code", "message", "status"}}``; ``EvoTokError`` carries
those three fields (and ``retry_after_s`` when the server sent ``Retry-After``). Transport failures (refused
connection, timeout) are raised as ``EvoTokError`` too, with ``status=0`` and code ``connection_error`` or
``timeout``, so callers catch one type.
"""

from __future__ import annotations

import json
from typing import Any


class EvoTokError(Exception):
    """An API error: machine-readable ``code``, human ``message``, HTTP ``status`` (0 = no response)."""

    def __init__(self, code: str, message: str, status: int, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        """The service's JSON error body."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}

    @classmethod
    def from_response(cls, status: int, body: bytes, retry_after_s: float | None = None) -> EvoTokError:
        """Parse the service's error body; fall back to ``http_<status>`` for anything else (a proxy's page)."""
        try:
            err = json.loads(body.decode("utf-8"))["error"]
            return cls(
                str(err["code"]),
                str(err["message"]),
                int(err.get("status", status)),
                retry_after_s=retry_after_s,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            text = body[:200].decode("utf-8", "replace").strip()
            return cls(f"http_{status}", text or f"HTTP {status}", status, retry_after_s=retry_after_s)
