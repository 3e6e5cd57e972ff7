"""What the request handlers share: settings, the batcher, the model card and the readiness story."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request

from evotok.export.types import ModelInfo, SelfTestResult
from evotok.service.batcher import Batcher
from evotok.service.errors import NotReady
from evotok.service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    batcher: Batcher
    info: ModelInfo | None = None  # known once the runtime is loaded (in-process) or from config.json (redis)
    self_test: SelfTestResult | None = None
    phase: str = "starting"  # starting | loading | warming | self-test | ready | failed | draining
    startup_error: str | None = None
    details: dict[str, float] = field(default_factory=dict)  # load/warm-up/self-test seconds
    decode_slots: asyncio.Semaphore | None = None  # images decoded at once (routes/common.py), made on first use

    def not_ready_reason(self) -> str | None:
        """None when requests can be served, else a sentence for 503 bodies and /readyz."""
        if self.phase == "draining":
            return "server is draining"
        if self.startup_error:
            return f"startup failed: {self.startup_error}"
        if self.info is None:
            return f"model not loaded yet (phase: {self.phase})"
        stats = self.batcher.stats()
        if stats.draining:
            return "server is draining"
        if not stats.ready:
            return f"batcher not ready (phase: {self.phase})"
        return None

    def model_info(self) -> ModelInfo:
        if self.info is None:
            raise NotReady(self.not_ready_reason() or "model not loaded yet")
        return self.info


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.evotok
    return state
