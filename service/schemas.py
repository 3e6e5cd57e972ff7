"""Response bodies as pydantic models: they document the OpenAPI schema (the routes build plain dicts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, stable (see service/errors.py ERROR_TABLE)", examples=["queue_full"])
    message: str = Field(description="human-readable; may change", examples=["queue is full (256 items); retry later"])
    status: int = Field(description="the HTTP status again", examples=[429])
    request_id: str | None = Field(None, description="the request's X-Request-ID (the client's, or one the "
                                   "server made); also in the response header and the server's logs",
                                   examples=["3f2b9c0e5d7a4e1f8a6b2c4d9e0f1a2b"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelRef(BaseModel):
    name: str = Field(examples=["evotok-small"])
    weights_hash: str = Field(description="sha256 of the weights (hex)")


class EncodeResponse(BaseModel):
    codes: list[list[list[int]]] = Field(description="[h][w][depth] code indices (depth last, row-major positions)")
    shape: list[int] = Field(description="[h, w, depth]", examples=[[16, 16, 16]])
    depth: int = Field(description="codes per position returned (the first `depth` of the residual stack)")
    model: ModelRef


class EmbedResponse(BaseModel):
    features: list[list[float]] = Field(description="[h*w][C] semantic features, positions row-major")
    shape: list[int] = Field(examples=[[256, 768]])
    dtype: str = Field(examples=["float32"])
    source: str = Field(description="'image' or 'codes'")
    depth: int = Field(description="code depths the semantic decoder read")
    model: ModelRef


class InfoResponse(BaseModel):
    name: str
    weights_hash: str
    image_size: int = Field(description="H = W of the model input, pixels")
    grid: int = Field(description="h = w of the code grid")
    num_depths: int = Field(description="D, codes per position")
    codebook_size: int = Field(description="K, entries per depth; code K is the null code (input only)")
    pixel_depth: int
    semantic_depth: int
    semantic_dim: int
    backend: str
    precision: str
    providers: list[str]
    semantic_by_depth: list[float]
    queue: str = Field(description="inprocess | redis")
    max_batch_size: int = Field(description="upper bound of a batch (EVOTOK_MAX_BATCH_SIZE)")
    max_queue_delay_ms: float
    batch_cap: str | int = Field("auto", description="EVOTOK_BATCH_CAP: auto (measured at warm-up) or fixed")
    batch_caps: dict[str, Any] | None = Field(
        None, description="per op: the effective cap and the per-item ms by batch size it was chosen from; with "
        "EVOTOK_QUEUE=redis, the smallest cap among the live workers and each live worker's cap "
        "({op: {cap, workers: {name: cap}}}), null until a worker has published its caps")
    runtime_lanes: int | None = Field(
        None, description="runtime calls that run at once in the API process (EVOTOK_RUNTIME_LANES, resolved); "
        "null with EVOTOK_QUEUE=redis, where each worker process runs one call at a time")


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    ready: bool
    phase: str
    self_test_agreement: float | None = None
    details: dict[str, float] = Field(default_factory=dict)
