"""RetryPolicy and Retry-After parsing (pure functions)."""

from __future__ import annotations

import time
from email.utils import formatdate

from evotok.client.errors import EvoTokError
from evotok.client.retry import RetryPolicy, parse_retry_after


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 28 <= later <= 31
    assert parse_retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_backoff_doubles_and_is_capped() -> None:
    p = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, jitter=False)
    assert [p.delay_s(a) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert p.delay_s(0, retry_after_s=2.5) == 2.5
    assert p.delay_s(0, retry_after_s=100) == 3.0


def test_jitter_stays_in_the_upper_half() -> None:
    p = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0)
    delays = [p.delay_s(2) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 1


def test_error_body_parsing() -> None:
    err = EvoTokError.from_response(
        413, b'{"error": {"code": "payload_too_large", "message": "big", "status": 413}}'
    )
    assert (err.code, err.message, err.status) == ("payload_too_large", "big", 413)
    proxy = EvoTokError.from_response(502, b"<html>Bad Gateway</html>")
    assert (proxy.code, proxy.status) == ("http_502", 502) and "Bad Gateway" in proxy.message
