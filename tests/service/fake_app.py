"""uvicorn app factory for end-to-end tests: the real service over a FakeRuntime.

``uvicorn --factory tests.service.fake_app:build``; ``EVOTOK_*`` variables configure the service as usual,
``EVOTOK_TEST_FAKE_DELAY_S`` makes each runtime batch sleep (to see batching and drain under load).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from evotok.service.app import create_app
from evotok.service.settings import Settings
from tests.service.fakes import ServiceFakeRuntime


def build() -> FastAPI:
    delay = float(os.environ.get("EVOTOK_TEST_FAKE_DELAY_S", "0"))
    return create_app(Settings(), runtime_factory=lambda: ServiceFakeRuntime(delay_s=delay))
