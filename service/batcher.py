"""The Batcher interface: HTTP handlers submit single items, a batcher runs them through a Runtime in batches.

Two implementations share this interface and one batch-forming policy (``BatchPolicy``):

- ``InProcessBatcher`` (``service/inprocess.py``, the embedded default): an asyncio queue in the API process
  and a worker thread that owns the Runtime.
- ``RedisBatcher`` (``service/redis_queue.py``): the API side of Redis Streams; ``evotok worker`` processes
  (``service/worker.py``) form the batches with the same ``BatchPolicy``.

Ops and payloads (one item each; the batcher stacks them into ``(B, ...)`` runtime calls):

============== ========================================== ==========================================
op             payload                                    result
============== ========================================== ==========================================
``encode``     ``(H, W, 3)`` uint8 image (model size)      ``(h, w, D)`` uint16 codes
``decode``     ``(h, w, d)`` uint16 codes, 1 <= d <= D      ``(H, W, 3)`` uint8 image
``embed_image``  ``(H, W, 3)`` uint8 image                  ``(h*w, C)`` float32 features
``embed_codes``  ``(h, w, d)`` uint16 codes                 ``(h*w, C)`` float32 features
============== ========================================== ==========================================

Items are only batched with items of the same op and the same payload shape.
Failures are raised from ``submit`` as the domain exceptions of ``service/errors.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Op = Literal["encode", "decode", "embed_image", "embed_codes"]
OPS: tuple[Op, ...] = ("encode", "decode", "embed_image", "embed_codes")


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch closes: at ``max_batch_size`` items or ``max_queue_delay_s`` after its first item."""

    max_batch_size: int = 8
    max_queue_delay_s: float = 0.005


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
