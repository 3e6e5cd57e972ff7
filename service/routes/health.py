"""Probes and metrics: GET /healthz (liveness), GET /readyz (readiness), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from evotok.service import metrics
from evotok.service.errors import NotReady, ServiceError
from evotok.service.handlers import openapi_errors
from evotok.service.schemas import HealthResponse, ReadyResponse
from evotok.service.state import get_state

router = APIRouter(tags=["operations"])


class BatchLoopDead(ServiceError):
    status, code = 503, "batch_loop_dead"


@router.get(
    "/healthz",
    summary="Liveness",
    description="200 while the event loop answers, the batch loop runs and no runtime call has hung longer than "
    "`EVOTOK_RUNTIME_HANG_S` (never depends on the model load); 503 `batch_loop_dead` otherwise, so the "
    "orchestrator restarts the process.",
    response_model=HealthResponse,
    responses=openapi_errors(503),
)
async def healthz(request: Request) -> dict[str, str]:
    problem = get_state(request).batcher.liveness_problem()
    if problem is not None:
        raise BatchLoopDead(problem)
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    description="200 only after the model is loaded, warmed up and the golden code self-test passed; "
    "503 `not_ready` while loading, after a failed self-test, and while draining.",
    response_model=ReadyResponse,
    responses=openapi_errors(503),
)
async def readyz(request: Request) -> dict[str, object]:
    state = get_state(request)
    reason = state.not_ready_reason()
    if reason is not None:
        raise NotReady(reason)
    agreement = state.self_test.agreement if state.self_test is not None else None
    return {"ready": True, "phase": state.phase, "self_test_agreement": agreement, "details": state.details}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": "evotok_http_requests_total{code=\"200\",endpoint=\"encode\"} 3.0"}}}},
)
async def metrics_endpoint(request: Request) -> Response:
    state = get_state(request)
    metrics.READY.set(1 if state.not_ready_reason() is None else 0)
    state.batcher.publish_gauges()  # refresh queue ages at scrape time
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
