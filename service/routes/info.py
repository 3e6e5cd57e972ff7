"""GET /info: the model card and the batching configuration (with the batch caps measured at warm-up)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from evotok.service.auth import require_api_key
from evotok.service.handlers import openapi_errors
from evotok.service.schemas import InfoResponse
from evotok.service.state import get_state

router = APIRouter(tags=["model"], dependencies=[Depends(require_api_key)])


@router.get(
    "/info",
    summary="Model card",
    response_model=InfoResponse,
    responses={
        200: {"content": {"application/json": {"example": {
            "name": "evotok-small", "weights_hash": "77bec4f4cc50...", "image_size": 256, "grid": 16, "num_depths": 16,
            "codebook_size": 1024, "pixel_depth": 4, "semantic_depth": 16, "semantic_dim": 112,
            "backend": "onnxruntime", "precision": "fp32", "providers": ["CPUExecutionProvider"],
            "semantic_by_depth": [], "queue": "inprocess", "max_batch_size": 8, "max_queue_delay_ms": 5.0,
            "batch_cap": "auto", "batch_caps": {"encode": {"cap": 1, "item_ms": {"1": 15.2, "2": 15.0}}}, "runtime_lanes": 2}}}},
        **openapi_errors(401, 403, 503),
    },
)
async def info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    card = state.model_info().to_dict()
    s = state.settings
    card.update(queue=s.queue, max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
                batch_cap=s.batch_cap, batch_caps=state.batcher.batch_caps(),
                runtime_lanes=state.batcher.runtime_lanes())
    return card
