"""``evotok worker``: the Redis Streams adapter of the batching core, in three parts.

- ``consumer.py``: the loop: read work entries, run the core's batch step (``step.Scheduler``: form, run,
  answer), deliver replies and ack (``streams.py``: the Redis I/O of that loop);
- ``heartbeat.py``: liveness heartbeat + time estimates for admission, queue gauges, dead-consumer removal;
- ``main.py``: the process: start-up (``startup.start_runtime`` and ``configure_logging``, shared with the API),
  the side HTTP server (``/metrics``, ``/healthz``, ``/readyz``), signals and shutdown.
"""

from __future__ import annotations

from evotok.service.runtime_setup import build_runtime
from evotok.service.worker.main import main

__all__ = ["build_runtime", "main"]
