"""The Batcher interface: HTTP handlers submit single items; a batcher runs them through a Runtime in batches.

Two adapters implement it over one batching core (``service/core.py``: entries, ``next_batch``, the op table,
execution with timing and metrics):

- ``InProcessBatcher`` (``service/inprocess.py``, the embedded default): an asyncio list of entries in the API
  process and a runtime thread.
- ``RedisBatcher`` (``service/redis_queue.py``): the API side of Redis Streams; ``evotok worker`` processes
  (``service/worker/``) form the batches with the same core.

The ops, their payloads and results are tabled in ``service/core.py``. Failures are raised from ``submit``
as the domain exceptions of ``service/errors.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evotok.service.core import OPS, BatchPolicy, Op

if TYPE_CHECKING:
    from evotok.service.state import ServiceState

__all__ = ["OPS", "BatchPolicy", "Batcher", "BatcherStats", "Op", "as_uint16_codes"]


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot for metrics and /readyz."""

    queued: int  # admitted, not yet in a batch
    in_flight: int  # admitted, not yet answered (queued + running)
    oldest_age_s: float  # age of the oldest queued item, 0 if none
    ready: bool  # can take work now (runtime loaded / a live worker exists)
    draining: bool


class Batcher(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Start background tasks (called in the app lifespan)."""

    async def prepare(self, state: ServiceState) -> None:
        """Make the service ready (a background task of the lifespan). Default, for batchers whose Runtime lives
        elsewhere (Redis workers): the model card comes from ``<weights>/config.json``."""
        from evotok import __version__
        from evotok.service import metrics
        from evotok.service.model_info import load_model_info

        s = state.settings
        state.info = load_model_info(s.weights, backend=s.backend, precision=s.precision)
        state.phase = "ready"
        metrics.BUILD_INFO.labels(__version__, state.info.weights_hash[:12], s.backend, s.precision, "").set(1)

    def liveness_problem(self) -> str | None:
        """None while this process can make progress; else why not (``/healthz`` answers 503 with it)."""
        return None

    def publish_gauges(self) -> None:  # noqa: B027 - optional hook
        """Refresh queue gauges (called at scrape time)."""

    def batch_caps(self) -> dict[str, Any] | None:
        """Per-op batch caps and the per-item times they were chosen from, when this process knows them."""
        return None

    def runtime_lanes(self) -> int | None:
        """Runtime calls that may run at once in this process, when it runs the Runtime itself."""
        return None

    @abstractmethod
    async def submit(self, op: Op, payload: npt.NDArray[Any], deadline: float) -> npt.NDArray[Any]:
        """Queue one item and wait for its result. ``deadline`` is ``time.monotonic()`` based.

        Raises ``Overloaded`` (queue full), ``DeadlineExceeded``, ``NotReady`` (not started, draining,
        no worker), ``BackendError`` (inference failed). If the awaiting task is cancelled (client gone),
        the item is skipped when its batch forms.
        """

    @abstractmethod
    def stats(self) -> BatcherStats:
        """Current queue figures."""

    @abstractmethod
    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new work (``NotReady``), finish what was admitted, stop background tasks."""


def as_uint16_codes(codes: npt.NDArray[Any]) -> npt.NDArray[np.uint16]:
    """Codes cross the batcher as uint16 (values already validated by the caller)."""
    return np.ascontiguousarray(codes, dtype=np.uint16)
