"""POST /embed: semantic features from an image or from codes (JSON or ``.npy`` float32/float16)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from evotok.service.codes_io import NPY_CONTENT_TYPE, to_npy
from evotok.service.core import Op
from evotok.service.errors import InvalidInput
from evotok.service.fast_lane import direct, route_checks
from evotok.service.handlers import openapi_errors
from evotok.service.imaging import IMAGE_CONTENT_TYPES
from evotok.service.routes.common import (
    BINARY_SCHEMA,
    RAW_IMAGE_BODIES,
    deadline_for,
    decode_images,
    media_type,
    model_card,
    read_codes,
    read_images,
    submit_all,
    timed,
    wants_npy,
)
from evotok.service.routes.query import EmbedQuery, openapi_parameters, query_of
from evotok.service.schemas import EmbedResponse
from evotok.service.state import get_state

router = APIRouter(tags=["tokenizer"])

_BINARY = BINARY_SCHEMA
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _BINARY}, "required": ["image"]}},
        **RAW_IMAGE_BODIES,
        "application/json": {"schema": {"type": "object", "properties": {"codes": {"type": "array"}}},
                             "example": {"codes": [[[17, 405], [903, 12]], [[5, 5], [1, 2]]]}},
        NPY_CONTENT_TYPE: {"schema": {**_BINARY, "description": "integer codes .npy (h, w, depth)"}},
    },
}


@router.post(
    "/embed",
    summary="Semantic features of an image or of codes",
    description=(
        "From an image (multipart `image` or raw `image/*` body, fitted like /encode) the model encodes and "
        "runs the semantic decoder on all depths; from codes (JSON `{\"codes\": ...}` or `.npy`) it reads the "
        "first `min(depth, semantic_depth)` depths. Features are `[h*w][C]`, positions row-major. "
        "`dtype` picks float32 (default) or float16; `Accept: application/x-npy` returns a `.npy`."
    ),
    response_model=EmbedResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": openapi_parameters(EmbedQuery)},
    responses={
        200: {"content": {NPY_CONTENT_TYPE: {"schema": {**_BINARY, "description": "(h*w, C) float .npy"}}}},
        **openapi_errors(401, 403, 406, 413, 415, 422, 429, 500, 503, 504),
    },
)
@direct
async def embed(request: Request) -> Response:
    route_checks(request)
    q = query_of(EmbedQuery, request)
    dtype, resize, background = q.dtype, q.resize, q.background
    state = get_state(request)
    info = state.model_info()
    npy = wants_npy(request)
    mtype = media_type(request)
    if mtype == "multipart/form-data" or mtype in IMAGE_CONTENT_TYPES:
        blobs, batch_form = await read_images(request, state)
        if batch_form:
            raise InvalidInput("/embed takes one 'image' field; the batch form is only on /encode")
        images = await decode_images(blobs, state, info, resize, "embed_image", deadline_for(state, request),
                                     background)
        op: Op = "embed_image"
        (features,) = await submit_all(state, request, op, images, "embed")
        source, depth = "image", info.semantic_depth
    else:
        codes = await read_codes(request, info, "embed_codes")
        depth = min(codes.shape[-1], info.semantic_depth)
        op = "embed_codes"
        (features,) = await submit_all(state, request, op, [codes[..., :depth]], "embed")
        source = "codes"
    feats = np.asarray(features, dtype=np.float16 if dtype == "float16" else np.float32)
    if npy:
        return Response(await timed(op, info, lambda: to_npy(feats)), media_type=NPY_CONTENT_TYPE)
    card = model_card(info)

    def as_json() -> bytes:
        body = {"features": feats.astype(np.float32).tolist(), "shape": list(feats.shape), "dtype": dtype,
                "source": source, "depth": depth, "model": card}
        return json.dumps(body, separators=(",", ":")).encode()

    return Response(await timed(op, info, as_json), media_type="application/json")
