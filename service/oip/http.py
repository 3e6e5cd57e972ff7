"""The v2 HTTP/REST endpoints on the service's app (same batcher, auth, deadlines, limits and metrics).

=============================================================  ========================================
``GET /v2/health/live``, ``GET /v2/health/ready``               probes (open, like /healthz and /readyz)
``GET /v2``                                                     server metadata
``GET /v2/models/{m}[/versions/{v}]``                          model metadata
``GET /v2/models/{m}[/versions/{v}]/ready``                    model readiness
``POST /v2/models/{m}[/versions/{v}]/infer``                   inference (JSON or binary tensor data)
=============================================================  ========================================

Errors answer ``{"error": "<message>"}`` with the status of our own routes (``status.py``). The request body
passes the app's body middleware first (size limit, in-flight byte budget, body timeout); the deadline is
``routes.common.deadline_for`` (``X-Request-Timeout-Ms``), shortened by Triton's ``timeout`` parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from evotok import __version__
from evotok.service.auth import require_api_key
from evotok.service.core import Op
from evotok.service.errors import NotReady, ServiceError, UnsupportedMediaType
from evotok.service.handlers import count_rejection, endpoint_of_path
from evotok.service.imaging import ResizeMode
from evotok.service.oip import models
from evotok.service.oip.status import http_error
from evotok.service.oip.tensors import HEADER_LENGTH, http_response, parse_http
from evotok.service.routes.common import deadline_for, decode_images, shorten_deadline, submit_all, timed
from evotok.service.state import ServiceState, get_state

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
EXTENSIONS = ["binary_tensor_data"]
_INLINE_PARSE_BYTES = 64 * 1024  # bodies up to this are parsed on the event loop (a thread hop costs more)


def server_metadata() -> dict[str, Any]:
    return {"name": "evotok", "version": __version__, "extensions": EXTENSIONS}


def _error(request: Request, exc: ServiceError) -> JSONResponse:
    status, body, headers = http_error(exc)
    count_rejection(request, status, exc.code)  # labelled v2 / v2_infer, as the app's own handlers label
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _answer(request: Request, work: Callable[[], Awaitable[Response | dict[str, Any]]],
                  auth: bool = True) -> Response:
    """Run ``work`` and answer in the v2 shape: a dict as JSON, a ServiceError as ``{"error": ...}``."""
    try:
        if auth:
            await require_api_key(request)
        out = await work()
    except ServiceError as exc:
        return _error(request, exc)
    except ClientDisconnect:
        raise  # the app's handler counts it and answers 499 (nobody reads it)
    except Exception:  # a bug: logged, answered 500 in the v2 shape (never a stack trace)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        count_rejection(request, 500, "internal")
        return JSONResponse({"error": "internal server error; the event was logged"}, status_code=500)
    return out if isinstance(out, Response) else JSONResponse(out)


@router.get("/health/live", summary="v2 liveness")
async def live(request: Request) -> Response:
    async def work() -> dict[str, Any]:
        problem = get_state(request).batcher.liveness_problem()
        if problem is not None:
            raise NotReady(problem)
        return {"live": True}

    return await _answer(request, work, auth=False)


@router.get("/health/ready", summary="v2 readiness")
async def ready(request: Request) -> Response:
    async def work() -> dict[str, Any]:
        reason = get_state(request).not_ready_reason()
        if reason is not None:
            raise NotReady(reason)
        return {"ready": True}

    return await _answer(request, work, auth=False)


@router.get("", summary="v2 server metadata")
async def metadata(request: Request) -> Response:
    async def work() -> dict[str, Any]:
        return server_metadata()

    return await _answer(request, work)


async def _model_metadata(request: Request, model: str, version: str | None) -> Response:
    async def work() -> dict[str, Any]:
        state = get_state(request)
        models.check_model(model, version, state.info)
        info = state.model_info()
        return {**models.model_metadata(model, info),
                "parameters": {"weights": info.name, "weights_hash": info.weights_hash}}

    return await _answer(request, work)


@router.get("/models/{model}", summary="v2 model metadata")
async def model_metadata(request: Request, model: str) -> Response:
    return await _model_metadata(request, model, None)


@router.get("/models/{model}/versions/{version}", summary="v2 model metadata (one version)")
async def model_version_metadata(request: Request, model: str, version: str) -> Response:
    return await _model_metadata(request, model, version)


async def _model_ready(request: Request, model: str, version: str | None) -> Response:
    async def work() -> dict[str, Any]:
        state = get_state(request)
        models.check_model(model, version, state.info)
        reason = state.not_ready_reason()
        if reason is not None:
            raise NotReady(reason)
        return {"name": model, "ready": True}

    return await _answer(request, work, auth=False)


@router.get("/models/{model}/ready", summary="v2 model readiness")
async def model_ready(request: Request, model: str) -> Response:
    return await _model_ready(request, model, None)


@router.get("/models/{model}/versions/{version}/ready", summary="v2 model readiness (one version)")
async def model_version_ready(request: Request, model: str, version: str) -> Response:
    return await _model_ready(request, model, version)


def http_transport(state: ServiceState, request: Request, endpoint: str) -> models.Transport:
    """Submitting through ``submit_all`` (the request's one deadline, the client watch)."""
    info = state.model_info()

    async def submit(op: Op, payloads: list[Any]) -> list[Any]:
        return await submit_all(state, request, op, payloads, endpoint)

    async def images(blobs: list[bytes], op: Op, resize: ResizeMode, background: str | None) -> list[Any]:
        return await decode_images(blobs, state, info, resize, op, deadline_for(state, request), background)

    async def output(op: Op, fn: Callable[[], Any]) -> Any:
        return await timed(op, info, fn)

    return models.Transport(submit, images, output)


async def _infer(request: Request, model: str, version: str | None) -> Response:
    async def work() -> Response:
        state = get_state(request)
        models.check_model(model, version, state.info)
        info = state.model_info()
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        if len(body) <= _INLINE_PARSE_BYTES:
            req = parse_http(body, header)
        else:
            req = await run_in_threadpool(parse_http, body, header)
        limit_s = models.timeout_s(req.parameters)
        if limit_s is not None:  # Triton's timeout shortens the one deadline, decoding included (as on gRPC)
            shorten_deadline(state, request, limit_s)
        transport = http_transport(state, request, endpoint_of_path(request.url.path))
        outs = await models.infer(state, info, model, req, transport)
        payload, json_size = http_response(model, info.weights_hash, req, outs)
        if json_size is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_size)})

    return await _answer(request, work)


@router.post("/models/{model}/infer", summary="v2 inference",
             description="Open Inference Protocol inference: JSON tensors or the binary tensor data extension "
             "(`Inference-Header-Content-Length`); models `encode`, `decode`, `embed` (see docs/service.md).")
async def infer(request: Request, model: str) -> Response:
    return await _infer(request, model, None)


@router.post("/models/{model}/versions/{version}/infer", summary="v2 inference (one version)")
async def infer_version(request: Request, model: str, version: str) -> Response:
    return await _infer(request, model, version)
