"""uvicorn app factory for the deadline tests: the service over a FakeRuntime for which a batch whose inputs are
all 7 (codes or pixels) takes ``EVOTOK_TEST_SLOW_S`` seconds in every op. Warm-up and the admission estimate
see only the fast path, so such a request is admitted and its deadline really expires while the runtime
works (each test uses another op: a slow batch raises that op's estimate)."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import FastAPI

from evotok.service.app import create_app
from evotok.service.settings import Settings
from tests.service.fakes import ServiceFakeRuntime

SLOW_CODE = 7


class SlowOnSeven(ServiceFakeRuntime):
    def __init__(self, slow_s: float) -> None:
        super().__init__()
        self.slow_s = slow_s

    def _maybe_slow(self, batch: Any) -> None:
        if batch.size and (batch == SLOW_CODE).all():
            time.sleep(self.slow_s)

    def encode(self, images: Any) -> Any:
        self._maybe_slow(images)
        return super().encode(images)

    def decode(self, codes: Any) -> Any:
        self._maybe_slow(codes)
        return super().decode(codes)

    def embed_codes(self, codes: Any) -> Any:
        self._maybe_slow(codes)
        return super().embed_codes(codes)

    def embed_images(self, images: Any) -> Any:
        self._maybe_slow(images)
        return super().embed_images(images)


def build() -> FastAPI:
    slow_s = float(os.environ.get("EVOTOK_TEST_SLOW_S", "1.0"))
    return create_app(Settings(), runtime_factory=lambda: SlowOnSeven(slow_s))
