"""POST /decode: codes ``[h][w][depth]`` (JSON or ``.npy``) -> PNG image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from evotok.service.codes_io import NPY_CONTENT_TYPE
from evotok.service.fast_lane import direct, route_checks
from evotok.service.handlers import openapi_errors
from evotok.service.imaging import encode_png
from evotok.service.routes.common import read_codes, submit_all, timed
from evotok.service.routes.query import NoQuery, openapi_parameters
from evotok.service.state import get_state

router = APIRouter(tags=["tokenizer"])

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["codes"], "properties": {"codes": {
                "type": "array", "description": "[h][w][depth] integers in [0, K] (K = null code)",
                "items": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}}},
            "example": {"codes": [[[17, 405], [903, 12]], [[5, 5], [1, 2]]]},
        },
        NPY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary",
                                      "description": "integer .npy of shape (h, w, depth), no pickle"}},
    },
}


@router.post(
    "/decode",
    summary="Decode residual codes into a PNG",
    description=(
        "Codes laid out `[h][w][depth]` with `1 <= depth <= D`; the pixel decoder reads the first "
        "`min(depth, pixel_depth)` codes per position (fewer than `pixel_depth` decode a coarser image). "
        "Returns `image/png` of the model's input size."
    ),
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": openapi_parameters(NoQuery)},
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **openapi_errors(401, 403, 413, 415, 422, 429, 500, 503, 504),
    },
)
@direct
async def decode(request: Request) -> Response:
    route_checks(request)
    state = get_state(request)
    info = state.model_info()
    codes = await read_codes(request, info, "decode")
    used = codes[..., : min(codes.shape[-1], info.pixel_depth)]  # same image, and more items share a batch
    (image,) = await submit_all(state, request, "decode", [used], "decode")
    png = await timed("decode", info, lambda: encode_png(image))
    return Response(png, media_type="image/png")
