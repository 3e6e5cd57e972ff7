"""Helpers shared by the inference routes: reading inputs, content negotiation, submitting with a deadline."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from evotok.export.types import ModelInfo
from evotok.service import metrics
from evotok.service.codes_io import (
    NPY_CONTENT_TYPE,
    codes_from_json,
    codes_from_npy,
    images_from_npy,
    max_codes_body_bytes,
    max_image_npy_bytes,
    parse_json,
)
from evotok.service.core import Op, op_bucket
from evotok.service.errors import (
    ClientGone,
    DeadlineExceeded,
    InvalidCodes,
    InvalidInput,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from evotok.service.imaging import (
    IMAGE_CONTENT_TYPES,
    ResizeMode,
    open_checked,
    parse_background,
    prepare_opened,
)
from evotok.service.middleware import ARRIVAL_KEY
from evotok.service.state import ServiceState

T = TypeVar("T")
U8 = npt.NDArray[np.uint8]

# OpenAPI pieces shared by the routes that take images
BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
RAW_IMAGE_BODIES: dict[str, Any] = {t: {"schema": BINARY_SCHEMA} for t in IMAGE_CONTENT_TYPES}


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
DEADLINE_KEY = "evotok.deadline"


def arrival_of(request: Request) -> float:
    """When the request arrived (stamped by ``MetricsMiddleware``, inside only the request-id middleware)."""
    arrived: float = request.scope.setdefault(ARRIVAL_KEY, time.monotonic())
    return arrived


def deadline_for(state: ServiceState, request: Request) -> float:
    """The request's one absolute deadline (``time.monotonic()``): ``request_timeout_s`` after its *arrival*,
    shortened by an ``X-Request-Timeout-Ms`` header. Fixed on first use and kept on the request, so body
    reading, image decoding, queueing and inference are all charged to it."""
    fixed: float | None = request.scope.get(DEADLINE_KEY)
    if fixed is not None:
        return fixed
    budget = state.settings.request_timeout_s
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            asked = float(raw) / 1000.0
        except ValueError:
            asked = -1.0
        if not asked > 0 or asked != asked:
            raise InvalidInput(f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}")
        budget = min(budget, asked)  # a client may shorten the server's deadline, never extend it
    deadline = arrival_of(request) + budget
    request.scope[DEADLINE_KEY] = deadline
    return deadline


def shorten_deadline(state: ServiceState, request: Request, seconds: float) -> float:
    """Bound the request's deadline to ``seconds`` after its arrival (a protocol's own timeout parameter, e.g.
    Triton's ``timeout``); a bound may shorten the deadline, never extend it."""
    deadline = min(deadline_for(state, request), arrival_of(request) + seconds)
    request.scope[DEADLINE_KEY] = deadline
    return deadline


def remaining_s(deadline: float, what: str) -> float:
    """Seconds left before ``deadline``; ``DeadlineExceeded`` (504) when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"request deadline passed {what}")
    return left


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


async def _read_capped(request: Request, cap: int, what: str) -> bytes:
    """The body, refused with 413 as soon as it (declared or received) exceeds ``cap`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"{what} body is {declared} bytes; no valid {what} for this model exceeds {cap}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"{what} body exceeds {cap} bytes; no valid {what} for this model is that large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_tensors(request: Request, state: ServiceState, info: ModelInfo) -> tuple[list[U8], bool]:
    """Model inputs from an ``application/x-npy`` body (``codes_io.images_from_npy``: header checks and one copy,
    done on the event loop, a thread hop would cost more); bodies larger than the largest valid batch get 413
    before they are read."""
    cap = state.settings.max_batch_images
    body = await _read_capped(request, max_image_npy_bytes(info, cap), "image .npy")
    start = time.perf_counter()
    out = images_from_npy(body, info, cap)
    metrics.STAGE_DURATION.labels("encode", "decode_input", op_bucket("encode", info)).observe(
        time.perf_counter() - start)
    return out


async def read_codes(request: Request, info: ModelInfo, op: Op) -> npt.NDArray[np.uint16]:
    """Codes from ``application/json`` ``{"codes": ...}`` or an ``application/x-npy`` body, for ``op``
    (``decode`` or ``embed_codes``: the label of the ``decode_input`` stage timing).

    The body is capped at the largest valid codes for the model (413 beyond it) and parsed in the thread
    pool, so neither a huge body nor a slow parse holds the event loop.
    """
    mtype = media_type(request)
    if mtype not in ("application/json", NPY_CONTENT_TYPE, "application/octet-stream"):
        raise UnsupportedMediaType(
            f"content type {mtype or '(none)'!r} is not accepted; send application/json or {NPY_CONTENT_TYPE}"
        )
    body = await _read_capped(request, max_codes_body_bytes(info), "codes")
    start = time.perf_counter()
    if mtype == "application/json":
        if not body:
            raise InvalidCodes("empty body: expected JSON {\"codes\": [h][w][depth]}")
        codes = await run_in_threadpool(lambda: codes_from_json(parse_json(body), info))
    else:
        codes = await run_in_threadpool(codes_from_npy, body, info)
    metrics.STAGE_DURATION.labels(op, "decode_input", op_bucket(op, info)).observe(time.perf_counter() - start)
    return codes


def background_of(state: ServiceState, value: str | None) -> tuple[int, int, int]:
    """The ``background`` query parameter, else ``EVOTOK_BACKGROUND``, as RGB (422 for an unknown colour)."""
    return parse_background(value if value is not None else state.settings.background)


def _decode_slots(state: ServiceState) -> asyncio.Semaphore:
    """This app's bound on images decoded at once (each may hold a full-size decoded image), for every route
    and transport (HTTP, gRPC)."""
    if state.decode_slots is None:
        state.decode_slots = asyncio.Semaphore(state.settings.max_concurrent_decodes)
    return state.decode_slots


async def _decode_within(fn: Callable[[], U8], slots: asyncio.Semaphore, deadline: float) -> U8:
    """Run ``fn`` in the thread pool holding one decode slot, answering 504 as soon as ``deadline`` passes: the
    decode already running finishes in its thread and only then frees its slot (memory stays bounded)."""
    try:
        await asyncio.wait_for(slots.acquire(), timeout=remaining_s(deadline, "before decoding"))
    except TimeoutError:
        raise DeadlineExceeded("no image decoder became free before the request deadline") from None
    job = asyncio.ensure_future(run_in_threadpool(fn))

    def finished(f: asyncio.Future[U8]) -> None:  # the slot frees when the thread is done, whoever still waits
        slots.release()
        if not f.cancelled():
            f.exception()  # retrieved: a caller gone at its deadline or disconnected leaves no stray warning

    job.add_done_callback(finished)
    try:
        return await asyncio.wait_for(asyncio.shield(job), timeout=remaining_s(deadline, "while decoding"))
    except TimeoutError:
        raise DeadlineExceeded("request deadline passed while decoding its images") from None


INLINE_DECODE_PIXELS = 640 * 480  # images this small are decoded on the event loop (about 1-2 ms on one core)


async def decode_images(blobs: list[bytes], state: ServiceState, info: ModelInfo, resize: ResizeMode, op: Op,
                        deadline: float, background: str | None = None) -> list[U8]:
    """Bytes -> model inputs ``(S, S, 3)`` uint8 for ``op`` (``encode`` or ``embed_image``) within ``deadline``
    (``time.monotonic()``; 504 the moment it passes); timed as the op's ``decode_input`` stage.

    Each image's header is read and checked on the event loop (``open_checked``: format, pixel count, aspect
    ratio; nothing decoded). An image of at most ``INLINE_DECODE_PIXELS`` is then decoded right there: a thread
    hop costs about as much CPU as decoding it (profiled), and the loop is held for a bounded millisecond or
    two. Larger ones go to the thread pool, at most ``max_concurrent_decodes`` at once per app."""
    start = time.perf_counter()
    s = state.settings
    colour = background_of(state, background)
    images = []
    for blob in blobs:
        remaining_s(deadline, "before decoding")
        img = open_checked(blob, s.max_image_pixels, s.max_aspect_ratio)
        width, height = img.size
        if width * height <= INLINE_DECODE_PIXELS:
            images.append(prepare_opened(img, info.image_size, resize, colour))
        else:
            images.append(await _decode_within(functools.partial(prepare_opened, img, info.image_size, resize, colour),
                                               _decode_slots(state), deadline))
    metrics.STAGE_DURATION.labels(op, "decode_input", op_bucket(op, info)).observe(time.perf_counter() - start)
    return images


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T], endpoint: str) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (queued items are then skipped)
    and raise ``ClientGone``. One watcher task, no second task for ``work`` (profiled: the pair cost more than
    the submit)."""
    me = asyncio.current_task()
    assert me is not None
    gone = finished = False  # finished: a disconnect noticed after `work` returned cancels nothing

    def on_watcher_done(watcher: asyncio.Future[None]) -> None:
        nonlocal gone
        if not (finished or watcher.cancelled() or watcher.exception() is not None):
            gone = True
            me.cancel()

    watcher = asyncio.ensure_future(_wait_disconnect(request))
    watcher.add_done_callback(on_watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()  # our own cancel, turned into the client-gone answer
        metrics.CLIENT_DISCONNECTS.labels(endpoint).inc()
        raise ClientGone("client disconnected") from None
    finally:
        finished = True
        watcher.cancel()


async def submit_items(state: ServiceState, op: Op, payloads: list[npt.NDArray[Any]],
                       deadline: float) -> list[npt.NDArray[Any]]:
    """Each item to the batcher under one ``deadline`` (they may share a batch); the first failure cancels the
    rest, and so does the caller's own cancellation (queued items are then skipped). Every transport uses it."""
    remaining_s(deadline, "before its items were queued")
    batcher = state.batcher
    if len(payloads) == 1:  # the common case: no task of its own
        return [await batcher.submit(op, payloads[0], deadline)]
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


async def submit_all(
    state: ServiceState, request: Request, op: Op, payloads: list[npt.NDArray[Any]], endpoint: str
) -> list[npt.NDArray[Any]]:
    """``submit_items`` under the request's deadline, watching the client (gone -> its items are skipped)."""
    return await until_disconnect(request, submit_items(state, op, payloads, deadline_for(state, request)),
                                  endpoint)


async def timed(op: Op, info: ModelInfo, fn: Callable[[], T], inline: bool = False) -> T:
    """Run an output step (PNG/JSON/npy) timed as ``op``'s ``encode_output`` stage (labels from the core's op
    table, the same as the worker's ``runtime`` stage of that op): in the thread pool, or on the event loop
    when ``inline`` (steps of a few microseconds, e.g. an ``.npy`` of codes, for which a thread hop costs more
    CPU than the step)."""
    start = time.perf_counter()
    out = fn() if inline else await run_in_threadpool(fn)
    metrics.STAGE_DURATION.labels(op, "encode_output", op_bucket(op, info)).observe(time.perf_counter() - start)
    return out
