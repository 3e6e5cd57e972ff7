"""Prometheus metrics: every ``evotok_*`` series of the API process *and* of the workers, defined here only.

Names follow the Prometheus naming practice: base units, ``_total`` counters, histograms (not summaries),
bounded label values. One label vocabulary, the same in the API process and in ``evotok worker``, so one
dashboard query joins both:

- ``op``: ``encode`` | ``decode`` | ``embed_image`` | ``embed_codes`` (the batching core's ops; every queue,
  batch, stage and skip series)
- ``stage``: ``decode_input`` (API: image/codes parsing + resize) | ``runtime`` (one batched runtime call) |
  ``encode_output`` (API: PNG/JSON/npy serialisation)
- ``outcome``: ``ok`` | ``error`` (batches, heartbeats)
- ``endpoint`` (HTTP series only): ``encode`` | ``decode`` | ``embed`` | ``info`` | ``healthz`` | ``readyz`` |
  ``metrics`` | ``v2_infer`` (``POST /v2/models/{m}/infer``) | ``v2`` (the other Open Inference Protocol routes) |
  ``other``
- ``reason``: rejections ``queue_full`` | ``server_busy`` (body budget / connections full) | ``payload_too_large`` |
  ``request_timeout`` (slow headers/body) | ``invalid_input`` | ``deadline_exceeded`` | ``cancelled`` |
  ``not_ready`` | ``unauthorized`` | ``not_found`` | ``worker_error`` | ``internal`` | ``other``; skipped items
  ``deadline_exceeded`` (its deadline passed or would pass, also when its caller gave up at that deadline) |
  ``cancelled`` (its client went away before); batch close ``full`` | ``delay`` | ``drain``; dead letters
  ``malformed`` | ``poison``
- ``state``: ``lag`` (waiting for a batch / not yet read) | ``pending`` (in a running batch / read, not acked)
- ``bucket``: the payload's leading spatial size (image side or code grid), a small fixed set

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before* this module is imported,
prometheus-client keeps values in per-process files and ``render()`` aggregates them (gauges declare how:
``livesum`` for counts, ``livemax`` for ages, ``livemin`` for the self-test agreement). ``evotok serve
--workers N`` sets up and wipes that directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from evotok.service.core import Batch, Dropped, Op

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS: Final = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
BYTES_BUCKETS: Final = tuple(float(2**k) for k in range(8, 27, 2))  # 256 B .. 64 MiB

# --- HTTP (API process) -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter("evotok_http_requests", "HTTP requests answered", ["endpoint", "code"])
HTTP_DURATION = Histogram(
    "evotok_http_request_duration_seconds", "Request time as seen by the server", ["endpoint"], buckets=LATENCY_BUCKETS
)
HTTP_IN_FLIGHT = Gauge(
    "evotok_http_requests_in_flight", "Requests being handled", ["endpoint"], multiprocess_mode="livesum"
)
PAYLOAD_BYTES = Histogram(
    "evotok_request_payload_bytes", "Request/response body sizes", ["endpoint", "direction"], buckets=BYTES_BUCKETS
)
REJECTIONS = Counter("evotok_admission_rejections", "Requests refused, by reason", ["endpoint", "reason"])
CLIENT_DISCONNECTS = Counter("evotok_client_disconnects", "Clients gone before their answer", ["endpoint"])
DEADLINE_EXCEEDED = Counter(
    "evotok_request_deadline_exceeded", "Items past their deadline, by where it was seen", ["op", "where"]
)

# --- queue: this process's own entries (in-process queue; a worker's held entries) -------------------
QUEUE_ENTRIES = Gauge(
    "evotok_queue_entries", "This process's items: lag = waiting for a batch, pending = in a running batch "
    "(sum over processes = the whole deployment's items in hand)", ["op", "state"], multiprocess_mode="livesum",
)
QUEUE_OLDEST_AGE = Gauge(
    "evotok_queue_oldest_age_seconds", "Age of this process's oldest waiting item", ["op"], multiprocess_mode="livemax"
)
# --- the Redis streams, cluster-wide: published by one worker only (the gauge publisher lease) ----------------
STREAM_ENTRIES = Gauge(
    "evotok_stream_entries", "Work stream entries, cluster-wide: lag = not yet read by any worker, pending = read, "
    "not acked (published by one worker)", ["op", "state"], multiprocess_mode="livemax",
)
STREAM_OLDEST_AGE = Gauge(
    "evotok_stream_oldest_age_seconds", "Age of the oldest work stream entry, cluster-wide (published by one worker)",
    ["op"], multiprocess_mode="livemax",
)
STREAM_BYTES = Gauge("evotok_stream_bytes", "Admission byte counter, cluster-wide (payload bytes admitted, "
                     "not acked; published by one worker)", ["op"], multiprocess_mode="livemax")
QUEUE_WAIT = Histogram("evotok_queue_wait_seconds", "Enqueued -> picked into a batch", ["op"], buckets=LATENCY_BUCKETS)
REDELIVERIES = Counter("evotok_redeliveries", "Entries reclaimed from another (or a dead) consumer", ["op"])
DEAD_LETTERS = Counter("evotok_dead_letters", "Entries moved to the dead-letter stream", ["op", "reason"])

# --- batches (the batching core, in process or in a worker) -----------------------------------------
BATCHES = Counter("evotok_batches", "Runtime batches run", ["op", "bucket", "outcome"])
BATCH_ITEMS = Counter("evotok_batch_items", "Items run in batches", ["op", "bucket"])
BATCH_SIZE = Histogram("evotok_batch_size", "Items per batch", ["op", "bucket"], buckets=BATCH_BUCKETS)
BATCH_FILL = Histogram("evotok_batch_fill_ratio", "Batch size / the op's batch cap", ["op", "bucket"],
                       buckets=RATIO_BUCKETS)
BATCH_FORMATION = Histogram(
    "evotok_batch_formation_seconds", "First item enqueued -> batch closed", ["op"], buckets=LATENCY_BUCKETS
)
BATCH_CLOSE_REASON = Counter("evotok_batch_close_reason", "Why batches closed", ["op", "reason"])
BATCH_CAP = Gauge("evotok_batch_cap", "Effective batch cap per op (measured at warm-up when auto)", ["op"],
                  multiprocess_mode="livemax")
RUNTIME_LANES = Gauge("evotok_runtime_lanes", "Runtime calls that may run at once in this process",
                      multiprocess_mode="livemax")
STAGE_DURATION = Histogram(
    "evotok_stage_duration_seconds", "Time per stage", ["op", "stage", "bucket"], buckets=LATENCY_BUCKETS
)
ITEMS_SKIPPED = Counter("evotok_items_skipped", "Items dropped at batch formation", ["op", "reason"])
LAST_BATCH_TS = Gauge(
    "evotok_worker_last_batch_timestamp_seconds", "Unix time of the last finished batch", multiprocess_mode="livemax"
)
RUNTIME_CALL_AGE = Gauge(
    "evotok_runtime_call_age_seconds", "How long the runtime call in progress has run (0 when idle)",
    multiprocess_mode="livemax",
)

# --- workers ----------------------------------------------------------------------------------------
_WORKER_READY: Gauge | None = None


def worker_ready() -> Gauge:
    """``evotok_worker_ready`` (1 when the runtime is loaded and Redis is reachable), created on first use: only
    ``evotok worker`` processes export it, so an API process (either topology) does not export a 0 that the
    ``EvotokWorkerNotReady`` alert would read as a worker not ready."""
    global _WORKER_READY
    if _WORKER_READY is None:
        _WORKER_READY = Gauge("evotok_worker_ready", "1 when the runtime is loaded and Redis is reachable",
                              multiprocess_mode="livesum")
    return _WORKER_READY


HEARTBEATS = Counter("evotok_worker_heartbeats", "Heartbeats written by this worker", ["outcome"])
LIVE_WORKERS = Gauge("evotok_workers_live", "Workers with a heartbeat inside the liveness window",
                     multiprocess_mode="livemax")
REDIS_RECONNECTS = Counter("evotok_redis_reconnects", "Redis connection losses survived")
CONSUMERS_REMOVED = Counter("evotok_dead_consumers_removed", "Dead consumers (idle, nothing pending) removed")

# --- startup / model --------------------------------------------------------------------------------
ENGINE_LOAD = Gauge("evotok_engine_load_seconds", "Runtime load time", ["stage"], multiprocess_mode="livemax")
WARMUP = Gauge("evotok_warmup_seconds", "Warm-up time", ["stage"], multiprocess_mode="livemax")
CODE_AGREEMENT = Gauge(
    "evotok_code_agreement_ratio",
    "Golden self-test: fraction of identical codes vs the fp32 reference",
    ["model_version", "bucket"],
    multiprocess_mode="livemin",
)
READY = Gauge("evotok_ready", "1 when this process serves requests", multiprocess_mode="livemin")
BUILD_INFO = Gauge(
    "evotok_build_info",
    "Build and model identity (value 1)",
    ["version", "model_version", "backend", "precision", "trt_version"],
    multiprocess_mode="max",
)

_REASON_OF_CODE: Final[dict[str, str]] = {
    # ERROR_TABLE (errors.py): every code listed, so a new code cannot silently land in ``invalid_input``
    "invalid_input": "invalid_input",
    "invalid_image": "invalid_input",
    "invalid_codes": "invalid_input",
    "unsupported_media_type": "invalid_input",
    "not_acceptable": "invalid_input",
    "payload_too_large": "payload_too_large",
    "request_timeout": "request_timeout",
    "server_busy": "server_busy",
    "unauthorized": "unauthorized",
    "forbidden": "unauthorized",
    "queue_full": "queue_full",
    "deadline_exceeded": "deadline_exceeded",
    "not_ready": "not_ready",
    "backend_error": "worker_error",
    # codes answered outside ERROR_TABLE (handlers.py, routes/common.py)
    "internal": "internal",
    "client_closed_request": "cancelled",
    "bad_request": "invalid_input",
    "not_found": "not_found",
    "method_not_allowed": "not_found",
    "http_error": "other",
}
REASONS: Final = frozenset(_REASON_OF_CODE.values())


def reason_of_code(code: str) -> str:
    """Error code -> bounded ``reason`` label (``other`` for a code missing from the table above)."""
    return _REASON_OF_CODE.get(code, "other")


# --- what the batching core records (both adapters call these, so both report the same way) ---------------
def observe_batch(op: Op, bucket: str, n: int, cap: int, seconds: float, *, ok: bool) -> None:
    """One runtime call of ``n`` items."""
    BATCHES.labels(op, bucket, "ok" if ok else "error").inc()
    if not ok:
        return
    BATCH_ITEMS.labels(op, bucket).inc(n)
    BATCH_SIZE.labels(op, bucket).observe(n)
    BATCH_FILL.labels(op, bucket).observe(min(1.0, n / max(1, cap)))
    STAGE_DURATION.labels(op, "runtime", bucket).observe(seconds)
    LAST_BATCH_TS.set(time.time())


def observe_formed(batch: Batch[Any], now: float) -> None:
    """A batch closed at ``now`` (the adapter's clock, the same as the entries' times)."""
    op = batch.op
    BATCH_CLOSE_REASON.labels(op, batch.reason).inc()
    BATCH_FORMATION.labels(op).observe(max(0.0, now - batch.opened))
    for e in batch.entries:
        QUEUE_WAIT.labels(op).observe(max(0.0, now - e.enqueued))


def observe_dropped(dropped: Iterable[Dropped[Any]], where: str) -> None:
    """Entries skipped at batch formation (``where``: ``queue`` in process, ``worker`` in a worker)."""
    for d in dropped:
        ITEMS_SKIPPED.labels(d.entry.op, d.reason).inc()
        if d.reason == "deadline_exceeded":
            DEADLINE_EXCEEDED.labels(d.entry.op, where).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text (aggregated over processes in multiprocess mode) and its content type."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Drop this process's live gauges from the shared files (multiprocess mode only)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
