"""Prometheus metrics: every ``evotok_*`` series, its labels and buckets, defined here and only here.

Names follow ``serving-reference.md`` section (d): base units, ``_total`` counters, histograms (not summaries),
bounded label values. Label vocabulary used by this module:

- ``endpoint``: ``encode`` | ``decode`` | ``embed`` | ``info`` | ``healthz`` | ``readyz`` | ``metrics`` | ``other``
  (batcher ops map ``embed_image``/``embed_codes`` -> ``embed``)
- ``stage``: ``decode_input`` (image/codes parsing + resize, API side) | ``encoder`` (runtime.encode: encoder +
  quantizer) | ``decoder`` | ``semantic_decoder`` | ``encode_output`` (PNG/JSON/npy serialisation)
- ``reason`` (rejections): ``queue_full`` | ``payload_too_large`` | ``invalid_input`` | ``deadline_exceeded`` |
  ``cancelled`` | ``not_ready`` | ``unauthorized`` | ``worker_error`` | ``internal``
- ``bucket``: the model input size as a string (one bucket per deployed model today)

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before* this module is imported,
prometheus-client keeps values in per-process files and ``render()`` aggregates them (gauges declare how:
``livesum`` for counts, ``livemax`` for ages, ``livemin`` for the self-test agreement). ``evotok serve
--workers N`` sets up and wipes that directory.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from evotok.service.batcher import Op

PRIORITY: Final = "interactive"  # the in-process batcher has one priority level

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS: Final = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
BYTES_BUCKETS: Final = tuple(float(2**k) for k in range(8, 27, 2))  # 256 B .. 64 MiB

# --- API replica ------------------------------------------------------------------------------------
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
DEADLINE_EXCEEDED = Counter(
    "evotok_request_deadline_exceeded", "Requests past their deadline", ["endpoint", "where"]
)
CLIENT_DISCONNECTS = Counter("evotok_client_disconnects", "Clients gone before their answer", ["endpoint"])

# --- queue ------------------------------------------------------------------------------------------
QUEUE_ENTRIES = Gauge(
    "evotok_queue_entries",
    "Admitted items: lag = waiting for a batch, pending = in a running batch",
    ["endpoint", "priority", "state"],
    multiprocess_mode="livesum",
)
QUEUE_OLDEST_AGE = Gauge(
    "evotok_queue_oldest_age_seconds", "Age of the oldest waiting item", ["endpoint", "priority"],
    multiprocess_mode="livemax",
)
QUEUE_WAIT = Histogram(
    "evotok_queue_wait_seconds", "Admission -> picked into a batch", ["endpoint", "priority"], buckets=LATENCY_BUCKETS
)

# --- batches (in-process batcher or worker) ---------------------------------------------------------
BATCHES = Counter("evotok_batches", "Batches run", ["endpoint", "bucket", "outcome"])
BATCH_ITEMS = Counter("evotok_batch_items", "Items run in batches", ["endpoint", "bucket"])
BATCH_SIZE = Histogram("evotok_batch_size", "Items per batch", ["endpoint", "bucket"], buckets=BATCH_BUCKETS)
BATCH_FILL = Histogram(
    "evotok_batch_fill_ratio", "Batch size / max_batch_size", ["endpoint", "bucket"], buckets=RATIO_BUCKETS
)
BATCH_FORMATION = Histogram(
    "evotok_batch_formation_seconds", "First item picked -> batch closed", ["endpoint"], buckets=LATENCY_BUCKETS
)
BATCH_CLOSE_REASON = Counter("evotok_batch_close_reason", "Why batches closed", ["endpoint", "reason"])
STAGE_DURATION = Histogram(
    "evotok_stage_duration_seconds", "Time per stage", ["endpoint", "stage", "bucket"], buckets=LATENCY_BUCKETS
)
ITEMS_SKIPPED = Counter("evotok_items_skipped", "Items dropped at batch formation", ["endpoint", "reason"])
LAST_BATCH_TS = Gauge(
    "evotok_worker_last_batch_timestamp_seconds", "Unix time of the last finished batch", multiprocess_mode="livemax"
)

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

_OP_ENDPOINT: Final[dict[str, str]] = {
    "encode": "encode", "decode": "decode", "embed_image": "embed", "embed_codes": "embed",
}
_STAGE_OF_OP: Final[dict[str, str]] = {
    "encode": "encoder", "decode": "decoder", "embed_image": "semantic_decoder", "embed_codes": "semantic_decoder",
}
_REASON_OF_CODE: Final[dict[str, str]] = {
    "queue_full": "queue_full",
    "payload_too_large": "payload_too_large",
    "deadline_exceeded": "deadline_exceeded",
    "not_ready": "not_ready",
    "unauthorized": "unauthorized",
    "forbidden": "unauthorized",
    "backend_error": "worker_error",
    "internal": "internal",
    "client_closed_request": "cancelled",
}


def endpoint_of_op(op: Op | str) -> str:
    return _OP_ENDPOINT.get(op, "other")


def stage_of_op(op: Op | str) -> str:
    return _STAGE_OF_OP.get(op, "other")


def reason_of_code(code: str) -> str:
    """Error code (errors.py) -> bounded ``reason`` label; every 4xx input problem is ``invalid_input``."""
    return _REASON_OF_CODE.get(code, "invalid_input")


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
