"""The three v2 models, their metadata, and the ``infer`` both transports share.

=========  =========================================================  ==========================================
model      inputs (one of)                                            outputs
=========  =========================================================  ==========================================
encode     ``IMAGE`` BYTES ``[B]`` (image files) or                   ``CODES`` UINT16 ``[B, g, g, d]``
           ``PIXELS`` UINT8 ``[B, S, S, 3]`` (fitted model inputs)     (parameter ``depth``: first d depths)
decode     ``CODES`` integer ``[B, g, g, d]``                          ``PNG`` BYTES ``[B]``, ``PIXELS`` UINT8
                                                                      ``[B, S, S, 3]`` (as requested; none
                                                                      requested: both)
embed      ``CODES`` integer ``[B, g, g, d]``, or ``IMAGE`` / ``PIXELS``  ``FEATURES`` FP32 ``[B, g*g, C]``
=========  =========================================================  ==========================================

Request parameters: ``depth`` (encode), ``resize`` (``center-crop`` | ``stretch`` | ``none``) and ``background``
for images, as on ``/encode``; Triton's ``timeout`` (microseconds) shortens the deadline (transports). The
version of every model is the served weights' hash (``versions: [<weights_hash>]``); ``platform`` names the
weights (``evotok:<name>``). The work is the routes' work: images go through ``routes.common.decode_images``
(hostile-input limits, bounded decodes), codes through ``codes_io.validate_codes``, items through the batcher.
Shapes are checked against the model before any tensor is made (``tensors.as_array`` then checks the bytes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo
from evotok.service.codes_io import validate_codes
from evotok.service.core import Op
from evotok.service.errors import InvalidInput
from evotok.service.imaging import RESIZE_MODES, ResizeMode, encode_png
from evotok.service.oip.status import ModelNotFound
from evotok.service.oip.tensors import (
    INTEGER_TYPES,
    NUMPY_OF,
    InferRequest,
    OutTensor,
    Tensor,
    as_array,
    as_bytes_elements,
)
from evotok.service.state import ServiceState

MODELS = ("encode", "decode", "embed")
PLATFORM = "evotok"
Array = npt.NDArray[Any]
U8 = npt.NDArray[np.uint8]


@dataclass
class Transport:
    """What ``infer`` needs from HTTP or gRPC: submitting items to the batcher under the request's deadline
    (and client watch), decoding image files under the app's decode bound, and running an output step
    (PNG encoding) off the event loop."""

    submit: Callable[[Op, list[Array]], Awaitable[list[Array]]]
    decode_images: Callable[[list[bytes], Op, ResizeMode, str | None], Awaitable[list[U8]]]
    output: Callable[[Op, Callable[[], Any]], Awaitable[Any]]


def check_model(name: str, version: str | None, info: ModelInfo | None) -> None:
    if name not in MODELS:
        raise ModelNotFound(f"unknown model {name!r}; this server has {', '.join(MODELS)}")
    if version and info is not None and version != info.weights_hash:
        raise ModelNotFound(f"model {name!r} has version {info.weights_hash} (the weights hash), not {version!r}")


def _io(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def model_metadata(name: str, info: ModelInfo) -> dict[str, Any]:
    """``ModelMetadataResponse`` fields (the HTTP answer adds ``parameters`` with the weights card)."""
    s, g = info.image_size, info.grid
    image = _io("IMAGE", "BYTES", [-1])
    pixels = _io("PIXELS", "UINT8", [-1, s, s, 3])
    codes_in = _io("CODES", "UINT16", [-1, g, g, -1])
    table: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
        "encode": ([image, pixels], [_io("CODES", "UINT16", [-1, g, g, -1])]),
        "decode": ([codes_in], [_io("PNG", "BYTES", [-1]), pixels]),
        "embed": ([codes_in, image, pixels], [_io("FEATURES", "FP32", [-1, g * g, info.semantic_dim])]),
    }
    inputs, outputs = table[name]
    return {"name": name, "versions": [info.weights_hash], "platform": f"{PLATFORM}:{info.name}",
            "inputs": inputs, "outputs": outputs}


def _param_int(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"parameter {key!r} must be an integer, got {value!r:.40}")
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"parameter {key!r} must be an integer, got {value!r:.40}") from None


def _param_str(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"parameter {key!r} must be a string, got {value!r:.40}")
    return value


def _batch_size(t: Tensor, limit: int) -> int:
    if not t.shape or not 1 <= t.shape[0] <= limit:
        raise InvalidInput(f"input {t.name!r}: the first dimension is the batch, 1..{limit} items "
                           f"(EVOTOK_MAX_BATCH_IMAGES); shape {list(t.shape)}")
    return t.shape[0]


def _pixels(t: Tensor, info: ModelInfo, limit: int) -> list[U8]:
    s = info.image_size
    _batch_size(t, limit)
    if t.datatype != "UINT8" or t.shape[1:] != (s, s, 3):
        raise InvalidInput(f"input 'PIXELS' must be UINT8 [B, {s}, {s}, 3] (RGB fitted to the model input), got "
                           f"{t.datatype} {list(t.shape)}")
    arr = as_array(t, NUMPY_OF["UINT8"])
    return [np.array(im, dtype=np.uint8, order="C") for im in arr]  # own, writable copies


def _image_blobs(t: Tensor, limit: int) -> list[bytes]:
    if t.datatype != "BYTES" or len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise InvalidInput(f"input 'IMAGE' must be BYTES [B] (one encoded image file per element), got "
                           f"{t.datatype} {list(t.shape)}")
    _batch_size(t, limit)
    return as_bytes_elements(t)


def _codes(t: Tensor, info: ModelInfo, limit: int) -> list[npt.NDArray[np.uint16]]:
    g, depths = info.grid, info.num_depths
    _batch_size(t, limit)
    if t.datatype not in INTEGER_TYPES or len(t.shape) != 4 or t.shape[1:3] != (g, g) \
            or not 1 <= t.shape[3] <= depths:
        raise InvalidInput(f"input 'CODES' must be an integer tensor [B, {g}, {g}, d] with d in 1..{depths}, got "
                           f"{t.datatype} {list(t.shape)}")
    arr = as_array(t, NUMPY_OF[t.datatype])
    return [validate_codes(item, info) for item in arr]


def _one_input(req: InferRequest, allowed: tuple[str, ...], model: str) -> Tensor:
    names = [t.name for t in req.inputs]
    unknown = [n for n in names if n not in allowed]
    if unknown or len(names) != 1:
        raise InvalidInput(f"model {model!r} takes exactly one input, one of {', '.join(allowed)}; got {names}")
    return req.inputs[0]


def _wanted(req: InferRequest, allowed: tuple[str, ...], model: str) -> list[str]:
    if req.outputs is None or not req.outputs:
        return list(allowed)
    names = [o.name for o in req.outputs]
    bad = [n for n in names if n not in allowed]
    if bad or len(set(names)) != len(names):
        raise InvalidInput(f"model {model!r} has outputs {', '.join(allowed)}; requested {names}")
    return names


async def _images(t: Tensor, state: ServiceState, info: ModelInfo, op: Op, params: dict[str, Any],
                  transport: Transport) -> list[U8]:
    limit = state.settings.max_batch_images
    if t.name == "PIXELS":
        return _pixels(t, info, limit)
    resize = _param_str(params, "resize") or "center-crop"
    if resize not in RESIZE_MODES:
        raise InvalidInput(f"parameter 'resize' must be one of {', '.join(RESIZE_MODES)}, got {resize!r:.40}")
    blobs = _image_blobs(t, limit)
    return await transport.decode_images(blobs, op, resize, _param_str(params, "background"))


async def infer(state: ServiceState, info: ModelInfo, model: str, req: InferRequest,
                transport: Transport) -> list[OutTensor]:
    """Run one v2 inference request on the batcher; the outputs in the order they were requested."""
    params = req.parameters
    limit = state.settings.max_batch_images
    if model == "encode":
        wanted = _wanted(req, ("CODES",), model)
        t = _one_input(req, ("IMAGE", "PIXELS"), model)
        depth = _param_int(params, "depth")
        if depth is not None and not 1 <= depth <= info.num_depths:
            raise InvalidInput(f"parameter 'depth' must be in 1..{info.num_depths}, got {depth}")
        images = await _images(t, state, info, "encode", params, transport)
        codes = await transport.submit("encode", list(images))
        d = depth or info.num_depths
        out = np.stack([c[..., :d] for c in codes]).astype(np.uint16)
        return [OutTensor(n, "UINT16", out.shape, array=out) for n in wanted]
    if model == "decode":
        wanted = _wanted(req, ("PNG", "PIXELS"), model)
        t = _one_input(req, ("CODES",), model)
        items = _codes(t, info, limit)
        used = [c[..., : min(c.shape[-1], info.pixel_depth)] for c in items]  # as /decode does
        pixels = np.stack(await transport.submit("decode", list(used))).astype(np.uint8)
        outs = []
        for n in wanted:
            if n == "PIXELS":
                outs.append(OutTensor(n, "UINT8", pixels.shape, array=pixels))
            else:
                pngs = await transport.output("decode", lambda: [encode_png(im) for im in pixels])
                outs.append(OutTensor(n, "BYTES", (len(pngs),), elements=pngs))
        return outs
    if model == "embed":
        wanted = _wanted(req, ("FEATURES",), model)
        t = _one_input(req, ("CODES", "IMAGE", "PIXELS"), model)
        if t.name == "CODES":
            codes = _codes(t, info, limit)
            depth = min(codes[0].shape[-1], info.semantic_depth)
            feats = await transport.submit("embed_codes", [c[..., :depth] for c in codes])
        else:
            images = await _images(t, state, info, "embed_image", params, transport)
            feats = await transport.submit("embed_image", list(images))
        arr = np.stack(feats).astype(np.float32)
        return [OutTensor(n, "FP32", arr.shape, array=arr) for n in wanted]
    raise ModelNotFound(f"unknown model {model!r}")


def timeout_s(params: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds; None when absent."""
    us = _param_int(params, "timeout")
    if us is None:
        return None
    if us <= 0:
        raise InvalidInput(f"parameter 'timeout' must be a positive number of microseconds, got {us}")
    return us / 1e6
