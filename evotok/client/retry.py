"""Retry policy: exponential backoff with full jitter on 429 / 503, honouring ``Retry-After``.

Every EvoTok call is a pure function of its inputs (encode/decode/embed are deterministic), so any request
may be retried safely. ``Retry-After`` (seconds or an HTTP date) overrides the computed backoff, capped by
``max_delay_s``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` extra attempts after the first; delay ``base_delay_s * 2**attempt`` (jittered)."""

    max_retries: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 30.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    retry_connect_errors: bool = True  # the server was not reachable (restarting pod); nothing was processed
    jitter: bool = True

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_delay_s)
        ceiling = min(self.base_delay_s * (2**attempt), self.max_delay_s)
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling


NO_RETRY = RetryPolicy(max_retries=0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` header -> seconds (delta-seconds or HTTP-date); ``None`` if absent or malformed."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
