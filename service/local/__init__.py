"""The local adapter of the batching core: front-end processes and one runtime process on one host.

``evotok serve`` with ``EVOTOK_FRONTENDS`` > 1 (or 0 = auto on a host with several cores) runs, under one
supervisor (``supervisor.py``):

- one **runtime process** (``runtime_proc.py``): ``startup.start_runtime`` and an ``InProcessBatcher`` (the
  core's ``step.Scheduler``, the admission rule with ``parallel`` = its lanes, the answers of ``step``) over the
  items of every front end, received on a unix-domain socket;
- N **front-end processes** (``frontend_proc.py``): the FastAPI app (``create_app`` with a ``LocalBatcher``,
  ``batcher.py``) under uvicorn, each on its own ``SO_REUSEPORT`` socket of the one HTTP port, doing HTTP, image
  decoding, validation and answer encoding.

The hand-off (``protocol.py``): payloads in a shared-memory slot of the front end, the socket carrying only
descriptors (an item travels inline in the frame when no slot is free); chosen by measurement
(``bench/local_handoff_bench.py``, docs/architecture.md).
"""
