"""POST /encode: image(s) -> residual codes (JSON ``[h][w][depth]`` or uint16 ``.npy``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from evotok.service.codes_io import NPY_CONTENT_TYPE, to_npy
from evotok.service.errors import InvalidInput
from evotok.service.fast_lane import direct, route_checks
from evotok.service.handlers import openapi_errors
from evotok.service.routes.common import (
    BINARY_SCHEMA,
    RAW_IMAGE_BODIES,
    deadline_for,
    decode_images,
    media_type,
    model_card,
    read_image_tensors,
    read_images,
    submit_all,
    timed,
    wants_npy,
)
from evotok.service.routes.query import EncodeQuery, openapi_parameters, query_of
from evotok.service.schemas import EncodeResponse
from evotok.service.state import get_state

router = APIRouter(tags=["tokenizer"])

_BINARY = BINARY_SCHEMA
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {**_BINARY, "description": "one image (see the accepted formats)"},
                    "images": {"type": "array", "items": _BINARY,
                               "description": "batch form: several images (up to EVOTOK_MAX_BATCH_IMAGES)"},
                },
                "oneOf": [{"required": ["image"]}, {"required": ["images"]}],
            },
        },
        **RAW_IMAGE_BODIES,
        NPY_CONTENT_TYPE: {"schema": {**_BINARY, "description": "uint8 (S, S, 3) or (B, S, S, 3) model inputs"}},
    },
}
_EXAMPLE = {"codes": [[[17, 405, 88], [903, 12, 7]], [[5, 5, 5], [1, 2, 3]]], "shape": [2, 2, 3], "depth": 3,
            "model": {"name": "evotok-small", "weights_hash": "3f1c...e9"}}


@router.post(
    "/encode",
    summary="Encode an image into residual codes",
    description=(
        "Send one image as the multipart field `image` or as the raw body (PNG, JPEG, WebP, GIF, BMP, TIFF, "
        "AVIF, HEIC when installed; the container is sniffed from the bytes); several multipart `images` "
        "fields form the batch form (the answer is then a JSON list, or one `.npy` of shape (B, h, w, depth)). "
        "Images are turned upright by their EXIF orientation, converted to 8-bit RGB (alpha flattened onto "
        "`background`, CMYK/16-bit/1-bit/palette converted, first frame of animations) and fitted to the "
        "model input by `resize` (default: centred square, bicubic to the model size). "
        "`Accept: application/x-npy` returns uint16 codes as a `.npy` file (no pickle). "
        "`Content-Type: application/x-npy` sends model inputs instead of an image file: uint8 RGB of shape "
        "(S, S, 3), or (B, S, S, 3) for the batch form, S = the model's `image_size` (no decoding, EXIF, alpha "
        "or resizing is done for them)."
    ),
    response_model=EncodeResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": openapi_parameters(EncodeQuery)},
    responses={
        200: {"content": {"application/json": {"example": _EXAMPLE},
                          NPY_CONTENT_TYPE: {"schema": _BINARY, "description": "uint16 (h, w, depth) or (B, h, w, depth)"}}},
        **openapi_errors(401, 403, 406, 413, 415, 422, 429, 500, 503, 504),
    },
)
@direct
async def encode(request: Request) -> Response:
    route_checks(request)
    q = query_of(EncodeQuery, request)
    depth, resize, background = q.depth, q.resize, q.background
    state = get_state(request)
    info = state.model_info()
    if depth is not None and depth > info.num_depths:
        raise InvalidInput(f"depth must be in 1..{info.num_depths}, got {depth}")
    npy = wants_npy(request)
    if media_type(request) == NPY_CONTENT_TYPE:  # tensors already decoded and fitted by the client
        images, batch_form = await read_image_tensors(request, state, info)
    else:
        blobs, batch_form = await read_images(request, state)
        images = await decode_images(blobs, state, info, resize, "encode", deadline_for(state, request), background)
    codes = await submit_all(state, request, "encode", images, "encode")
    d = depth or info.num_depths
    out = np.stack([c[..., :d] for c in codes]).astype(np.uint16)  # (B, h, w, d)
    if npy:
        body = await timed("encode", info, lambda: to_npy(out if batch_form else out[0]), inline=len(out) <= 8)
        return Response(body, media_type=NPY_CONTENT_TYPE)
    card = model_card(info)

    def as_json() -> bytes:  # orjson writes the uint16 array directly: ~18 us per 16x16x16 item, 17x json+tolist
        items = [{"codes": c, "shape": list(c.shape), "depth": d, "model": card} for c in out]
        return orjson.dumps(items if batch_form else items[0], option=orjson.OPT_SERIALIZE_NUMPY)

    body = await timed("encode", info, as_json, inline=len(out) <= 8)  # microseconds: no thread hop
    return Response(body, media_type="application/json")
