"""Prometheus metrics of the Redis queue and of the inference workers (names from serving-reference (d)).

Exported by ``evotok worker`` on ``worker_metrics_port`` (``/metrics``). They live in their own
``CollectorRegistry`` so they never collide with the API process's metrics of the same family names
(the in-process batcher reports ``evotok_batch_size`` etc. from the API). The label ``endpoint`` is the
batcher op (``encode`` | ``decode`` | ``embed_image`` | ``embed_codes``), a closed set.

Queue gauges (``evotok_queue_*``) are refreshed from Redis by every worker's heartbeat thread
(XINFO GROUPS for lag/pending, the first entry id for the oldest age, the byte counter), so any one
worker's scrape shows the whole queue.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_RATIOS = (0.125, 0.25, 0.5, 0.75, 0.875, 1.0)

# --- queue ---------------------------------------------------------------------------------------
QUEUE_ENTRIES = Gauge(
    "evotok_queue_entries",
    "Work entries per stream: lag = not yet delivered to a worker, pending = delivered, not acked",
    ["endpoint", "state"],
    registry=REGISTRY,
)
QUEUE_BYTES = Gauge("evotok_queue_bytes", "Admission byte counter (payload bytes admitted, not acked)",
                    ["endpoint"], registry=REGISTRY)
QUEUE_OLDEST_AGE = Gauge("evotok_queue_oldest_age_seconds", "Age of the oldest unacked work entry",
                         ["endpoint"], registry=REGISTRY)
QUEUE_WAIT = Histogram("evotok_queue_wait_seconds", "XADD -> picked into a batch", ["endpoint"],
                       buckets=_SECONDS, registry=REGISTRY)
REDELIVERIES = Counter("evotok_redeliveries_total", "Entries reclaimed from another (or a dead) consumer",
                       ["endpoint"], registry=REGISTRY)
DEAD_LETTERS = Counter("evotok_dead_letters_total", "Entries moved to the dead-letter stream",
                       ["endpoint", "reason"], registry=REGISTRY)

# --- worker ----------------------------------------------------------------------------------------
BATCHES = Counter("evotok_batches_total", "Runtime batches run", ["endpoint", "bucket", "outcome"],
                  registry=REGISTRY)
BATCH_ITEMS = Counter("evotok_batch_items_total", "Items run in batches", ["endpoint", "bucket"],
                      registry=REGISTRY)
BATCH_SIZE = Histogram("evotok_batch_size", "Items per runtime batch", ["endpoint", "bucket"],
                       buckets=_SIZES, registry=REGISTRY)
BATCH_FILL = Histogram("evotok_batch_fill_ratio", "Batch size / max_batch_size", ["endpoint", "bucket"],
                       buckets=_RATIOS, registry=REGISTRY)
BATCH_FORMATION = Histogram("evotok_batch_formation_seconds", "First item read -> batch closed",
                            ["endpoint"], buckets=_SECONDS, registry=REGISTRY)
BATCH_CLOSE = Counter("evotok_batch_close_reason_total", "Why a batch closed",
                      ["endpoint", "reason"], registry=REGISTRY)
STAGE_DURATION = Histogram("evotok_stage_duration_seconds", "Runtime call duration per batch",
                           ["endpoint", "stage", "bucket"], buckets=_SECONDS, registry=REGISTRY)
ITEMS_SKIPPED = Counter("evotok_items_skipped_total", "Items dropped before inference",
                        ["endpoint", "reason"], registry=REGISTRY)
WORKER_READY = Gauge("evotok_worker_ready", "1 when the runtime is loaded and Redis is reachable",
                     registry=REGISTRY)
LAST_BATCH = Gauge("evotok_worker_last_batch_timestamp_seconds", "Unix time of the last finished batch",
                   registry=REGISTRY)
HEARTBEATS = Counter("evotok_worker_heartbeats_total", "Heartbeats written by this worker",
                     ["outcome"], registry=REGISTRY)
LIVE_WORKERS = Gauge("evotok_workers_live", "Workers with a heartbeat inside the liveness window",
                     registry=REGISTRY)
REDIS_RECONNECTS = Counter("evotok_redis_reconnects_total", "Redis connection losses survived",
                           registry=REGISTRY)
ENGINE_LOAD = Gauge("evotok_engine_load_seconds", "Runtime load time", registry=REGISTRY)
WARMUP = Gauge("evotok_warmup_seconds", "Runtime warmup time", registry=REGISTRY)


def bucket_of(shape: tuple[int, ...]) -> str:
    """Shape bucket label: the leading spatial size (image side or code grid), a small fixed set."""
    return str(shape[0]) if shape else "0"
