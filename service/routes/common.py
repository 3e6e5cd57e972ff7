"""Helpers shared by the inference routes: reading inputs, content negotiation, submitting with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from fastapi import Header, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from evotok.export.types import ModelInfo
from evotok.service import metrics
from evotok.service.batcher import Op
from evotok.service.codes_io import NPY_CONTENT_TYPE, codes_from_json, codes_from_npy
from evotok.service.errors import (
    InvalidCodes,
    InvalidInput,
    NotAcceptable,
    ServiceError,
    UnsupportedMediaType,
)
from evotok.service.imaging import IMAGE_CONTENT_TYPES, ResizeMode, prepare_image
from evotok.service.state import ServiceState

T = TypeVar("T")
U8 = npt.NDArray[np.uint8]



# OpenAPI pieces shared by the routes that take images
BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
RAW_IMAGE_BODIES: dict[str, Any] = {t: {"schema": BINARY_SCHEMA} for t in IMAGE_CONTENT_TYPES}

class ClientGone(ServiceError):
    """The client closed the connection before its answer (nginx's 499; nobody reads the body)."""

    status, code = 499, "client_closed_request"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def wants_npy(request: Request, allow_png: bool = False) -> bool:
    """Content negotiation: True for ``.npy``, False for JSON; 406 when the client accepts neither."""
    accept = request.headers.get("accept", "").lower()
    if not accept.strip():
        return False
    types = [part.split(";")[0].strip() for part in accept.split(",")]
    if NPY_CONTENT_TYPE in types and "application/json" not in types:
        return True
    if any(t in ("application/json", "*/*", "application/*") for t in types):
        return False
    if NPY_CONTENT_TYPE in types:
        return True
    raise NotAcceptable(f"cannot answer with {accept!r}; accept application/json or {NPY_CONTENT_TYPE}")


def model_card(info: ModelInfo) -> dict[str, str]:
    return {"name": info.name, "weights_hash": info.weights_hash}


TIMEOUT_HEADER = "x-request-timeout-ms"


def timeout_header(
    x_request_timeout_ms: float | None = Header(
        None, description="optional client deadline in ms; shortens (never extends) EVOTOK_REQUEST_TIMEOUT_S"
    ),
) -> None:
    """Declares the header in the OpenAPI schema; ``deadline_for`` reads and validates it."""


def deadline_for(state: ServiceState, request: Request) -> float:
    """Absolute deadline: ``request_timeout_s`` from now, shortened by an ``X-Request-Timeout-Ms`` header."""
    budget = state.settings.request_timeout_s
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            asked = float(raw) / 1000.0
        except ValueError:
            asked = -1.0
        if not asked > 0:
            raise InvalidInput(f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}")
        budget = min(budget, asked)  # a client may shorten the server's deadline, never extend it
    return time.monotonic() + budget


async def read_images(request: Request, state: ServiceState) -> tuple[list[bytes], bool]:
    """Image bytes from a multipart ``image`` field, several ``images`` fields (batch form), or a raw body.

    Returns the byte strings and whether the batch form was used.
    """
    mtype = media_type(request)
    if mtype == "multipart/form-data":
        limit = state.settings.max_batch_images
        try:
            form = await request.form(max_files=limit + 1, max_fields=limit + 8)
        except StarletteHTTPException as exc:  # multipart parse errors (too many parts, bad boundary)
            raise InvalidInput(f"malformed multipart body: {exc.detail}") from exc
        singles = form.getlist("image")
        batch = form.getlist("images")
        if singles and batch:
            raise InvalidInput("send either one 'image' field or several 'images' fields, not both")
        if not singles and not batch:
            names = sorted(set(form.keys()))
            raise InvalidInput(f"multipart body needs a file field 'image' (or 'images' for a batch); got {names}")
        if len(singles) > 1:
            raise InvalidInput("several 'image' fields: use the field name 'images' for the batch form")
        parts = singles or batch
        if len(parts) > limit:
            raise InvalidInput(f"{len(parts)} images in one request; the limit is {limit}")
        out = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise InvalidInput("the image field must be a file upload, not a text field")
            out.append(await part.read())
        return out, bool(batch)
    if mtype in IMAGE_CONTENT_TYPES:
        return [await request.body()], False
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'!r} is not accepted; send multipart/form-data or one of "
        f"{', '.join(IMAGE_CONTENT_TYPES)}"
    )


async def read_codes(request: Request, info: ModelInfo) -> npt.NDArray[np.uint16]:
    """Codes from ``application/json`` ``{"codes": ...}`` or an ``application/x-npy`` body."""
    mtype = media_type(request)
    body = await request.body()
    if mtype == "application/json":
        if not body:
            raise InvalidCodes("empty body: expected JSON {\"codes\": [h][w][depth]}")
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from exc
        return await run_in_threadpool(codes_from_json, obj, info)
    if mtype in (NPY_CONTENT_TYPE, "application/octet-stream"):
        return await run_in_threadpool(codes_from_npy, body, info)
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'!r} is not accepted; send application/json or {NPY_CONTENT_TYPE}"
    )


async def decode_images(blobs: list[bytes], state: ServiceState, info: ModelInfo, resize: ResizeMode) -> list[U8]:
    """Bytes -> model inputs ``(S, S, 3)`` uint8, off the event loop."""
    start = time.perf_counter()
    limit = state.settings.max_image_pixels
    images = [await run_in_threadpool(prepare_image, b, info.image_size, resize, limit) for b in blobs]
    metrics.STAGE_DURATION.labels("encode", "decode_input", str(info.image_size)).observe(time.perf_counter() - start)
    return images


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T], endpoint: str) -> T:
    """Await ``work``; if the client disconnects first, cancel it (queued items are then skipped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    metrics.CLIENT_DISCONNECTS.labels(endpoint).inc()
    raise ClientGone("client disconnected")


async def submit_all(
    state: ServiceState, request: Request, op: Op, payloads: list[npt.NDArray[Any]], endpoint: str
) -> list[npt.NDArray[Any]]:
    """Submit each item to the batcher (they may share a batch) and wait for all, watching the client."""
    deadline = deadline_for(state, request)
    batcher = state.batcher

    async def run() -> list[npt.NDArray[Any]]:
        tasks = [asyncio.ensure_future(batcher.submit(op, p, deadline)) for p in payloads]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # our own cancellation (client gone) or one item failed: the others are not needed
            for t in tasks:
                if not t.done():
                    t.cancel()
        for t in tasks:
            exc = t.exception() if t.done() and not t.cancelled() else None
            if exc is not None:
                raise exc
        return [t.result() for t in tasks]

    return await until_disconnect(request, run(), endpoint)


async def timed(endpoint: str, bucket: str, fn: Callable[[], T]) -> T:
    """Run a CPU-bound output step (PNG/JSON/npy) in the thread pool, timed as ``encode_output``."""
    start = time.perf_counter()
    out = await run_in_threadpool(fn)
    metrics.STAGE_DURATION.labels(endpoint, "encode_output", bucket).observe(time.perf_counter() - start)
    return out
