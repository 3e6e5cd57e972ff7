"""``evotok worker``: the Redis Streams adapter of the batching core, in three parts.

- ``consumer.py``: the loop: read work entries, form batches with ``core.next_batch``, run them with
  ``core.execute``, deliver replies and ack (``streams.py``: the Redis I/O of that loop);
- ``heartbeat.py``: liveness heartbeat + time estimates for admission, queue gauges, dead-consumer removal;
- ``main.py``: the process: runtime build and preparation (``runtime_setup``, shared with the API process),
  the side HTTP server (``/metrics``, ``/healthz``, ``/readyz``), signals and shutdown.
"""

from __future__ import annotations

from evotok.service.runtime_setup import build_runtime
from evotok.service.worker.main import main

__all__ = ["build_runtime", "main"]
