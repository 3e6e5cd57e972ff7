"""Service settings: one pydantic-settings class, every field an ``EVOTOK_*`` environment variable.

The same names are used in ``docker-compose.yml`` and the Helm chart's values (1:1 mapping).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from evotok.paths import default_cache_dir, default_weights_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVOTOK_", extra="ignore", frozen=True)

    # --- model and runtime -------------------------------------------------------------------
    weights: Path = Field(default_factory=default_weights_dir, description="model folder")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="engine cache (ONNX/TRT)")
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = Field(0, ge=0, description="intra-op threads for the runtime (0 = library default)")
    runtime_lanes: int = Field(0, ge=0, le=64, description="runtime calls that may run at once in one process "
                               "(0 = auto: the usable CPU cores when the runtime runs on the CPU and allows "
                               "concurrent calls, else 1)")
    warmup_batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    self_test_threshold: float = Field(1.0, ge=0.0, le=1.0, description="golden code agreement needed for /readyz")

    # --- batching ----------------------------------------------------------------------------
    queue: Literal["inprocess", "redis"] = "inprocess"
    max_batch_size: int = Field(8, ge=1, le=1024, description="upper bound of a batch (1 = batching off)")
    batch_cap: str = Field(
        "auto", pattern=r"^(auto|[1-9][0-9]*)$", description="auto: measure at warm-up the batch size "
        "(<= max_batch_size) of the highest throughput, stopping at the first size that gains no more than "
        "batch_cap_min_gain; an integer fixes the cap")
    batch_cap_min_gain: float = Field(0.03, ge=0.0, lt=1.0, description="auto cap: throughput gain a larger "
                                      "batch must bring to count (0.03 = 3%, the timing noise)")
    runtime_hang_s: float = Field(60.0, gt=0.0, description="a runtime call running longer than this fails "
                                  "liveness (/healthz 503) so the orchestrator restarts the process")
    max_queue_delay_ms: float = Field(0.0, ge=0.0, description="how long a batch waits for partners after its "
                                      "first item (0: a batch forms only from requests already waiting; a lone "
                                      "request never waits, as Triton's default)")
    max_queue_size: int = Field(256, ge=1, description="admitted but unfinished requests per process/endpoint")
    request_timeout_s: float = Field(30.0, gt=0.0, description="deadline for one request, queue + inference")

    # --- redis (EVOTOK_QUEUE=redis) ------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_prefix: str = "evotok"
    redis_max_entries: int = Field(1024, ge=1, description="admission cap: queued entries per endpoint")
    redis_max_bytes: int = Field(256 * 1024 * 1024, ge=1, description="admission cap: queued payload bytes per endpoint")
    worker_heartbeat_s: float = Field(2.0, gt=0.0)
    worker_liveness_heartbeats: float = Field(
        5.0, ge=2.0, description="a worker counts as live this many heartbeat periods after its last heartbeat")
    worker_claim_idle_ms: int = Field(15000, ge=100, description="reclaim entries pending longer than this")
    worker_max_deliveries: int = Field(3, ge=1, description="deliveries before an entry is dead-lettered")
    worker_metrics_port: int = Field(9100, ge=0, le=65535)

    # --- limits ------------------------------------------------------------------------------
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded pixel cap (decompression bombs)")
    max_batch_images: int = Field(32, ge=1, description="images in one batch-form request")
    max_aspect_ratio: float = Field(20.0, ge=1.0, description="longer side / shorter side of an input image")
    max_inflight_body_bytes: int = Field(
        128 * 1024 * 1024, ge=1, description="request body bytes being received or held by this process at once; "
        "over it new bodies get 503 server_busy + Retry-After")
    max_concurrent_decodes: int = Field(4, ge=1, description="images decoded and fitted at once per process")
    background: str = Field("white", description="colour transparent pixels are flattened onto (name or #rrggbb)")

    # --- connections (uvicorn) ---------------------------------------------------------------
    limit_concurrency: int = Field(
        512, ge=1, description="open connections + running requests per process; more get 503 server_busy "
        "(/healthz, /readyz and /metrics are exempt)")
    timeout_keep_alive_s: int = Field(5, ge=1, description="close idle keep-alive connections after this")
    header_timeout_s: float = Field(10.0, gt=0.0, description="a request's headers must arrive within this (408)")
    body_timeout_s: float = Field(60.0, gt=0.0, description="a request's body must arrive within this (408)")

    # --- security ----------------------------------------------------------------------------
    api_keys: list[SecretStr] = Field(default_factory=list, description="bearer tokens; empty = auth off")

    # --- http ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="Open Inference Protocol (KServe v2) gRPC port, served by `evotok serve` beside the HTTP API (0 = off)")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    frontends: int = Field(0, ge=0, le=256, description="`evotok serve` (in-process queue): HTTP front-end "
                           "processes sharing the port and feeding one runtime process (service/local/); 0 (the "
                           "default) = auto = the usable cores when more than one, else one process; 1 = one "
                           "process holding HTTP and the runtime")
    fake_cost_ms: str = Field("", pattern=r"^$|^[0-9.]+,[0-9.]+$", description="`A,b`: serve a FakeRuntime of the "
                              "real model's size (256 px, 16x16x16 codes) whose batch of B costs A + b*B ms, to "
                              "measure the front end as deployed; empty = the configured model")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the API from a "
                                    "browser (CORS; JSON list, e.g. [\"https://app.example\"]); empty = CORS off")
    otlp_endpoint: str = Field("", description="OpenTelemetry OTLP/HTTP collector base URL (e.g. "
                               "http://otel-collector:4318); empty = OTEL_EXPORTER_OTLP_ENDPOINT, and when both "
                               "are empty tracing is off (needs the otel extra)")

    @field_validator("background")
    @classmethod
    def _colour(cls, v: str) -> str:
        from PIL import ImageColor

        ImageColor.getrgb(v)  # ValueError names the bad colour
        return v

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("warmup batch sizes must be >= 1")
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
