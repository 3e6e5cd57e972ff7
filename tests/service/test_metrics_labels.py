"""One label vocabulary: every error code has an explicit ``reason``, API stage series use the core's ops."""

from __future__ import annotations

from evotok.service import metrics
from evotok.service.errors import ERROR_TABLE
from evotok.service.handlers import _HTTP_CODES
from evotok.service.routes.common import ClientGone


def test_every_error_code_has_an_explicit_reason() -> None:
    codes = {code for _, code in ERROR_TABLE.values()} | set(_HTTP_CODES.values())
    codes |= {"internal", "http_error", ClientGone.code}
    missing = sorted(c for c in codes if c not in metrics._REASON_OF_CODE)
    assert not missing, f"error codes without a metrics reason (they would count as 'other'): {missing}"
    assert metrics.reason_of_code("server_busy") == "server_busy"
    assert metrics.reason_of_code("request_timeout") == "request_timeout"
    assert metrics.reason_of_code("invalid_image") == "invalid_input"
    assert metrics.reason_of_code("a_code_nobody_added") == "other"  # never mislabelled as the client's fault


def test_reasons_are_documented() -> None:
    doc = metrics.__doc__ or ""
    for reason in metrics.REASONS:
        assert f"``{reason}``" in doc, reason
