"""Optional bearer-token auth: ``Authorization: Bearer <key>`` checked against ``settings.api_keys``.

Off when the list is empty (the default, e.g. on loopback). Missing/malformed header -> 401 ``unauthorized``
(with ``WWW-Authenticate: Bearer``); a key that matches none -> 403 ``forbidden``. Keys are compared in
constant time. Liveness, readiness and /metrics stay open so probes and scrapers need no secret.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from evotok.service.errors import Forbidden, Unauthorized
from evotok.service.state import get_state


def check_bearer(header: str, keys: list[SecretStr], where: str = "'Authorization: Bearer <api key>'") -> None:
    """The one rule: no keys -> open; a missing or malformed bearer token -> ``Unauthorized``; a token matching
    none of ``keys`` (compared in constant time) -> ``Forbidden``. ``where`` tells the client how to send it."""
    if not keys:
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"missing bearer token: send {where}")
    given = token.strip().encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not ok:
        raise Forbidden("the API key is not valid")


async def require_api_key(request: Request) -> None:
    check_bearer(request.headers.get("authorization", ""), get_state(request).settings.api_keys)
