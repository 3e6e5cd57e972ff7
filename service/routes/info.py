"""GET /info: the model card and the batching configuration."""

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
    responses=openapi_errors(401, 403, 503),
)
async def info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    card = state.model_info().to_dict()
    s = state.settings
    card.update(queue=s.queue, max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms)
    return card
