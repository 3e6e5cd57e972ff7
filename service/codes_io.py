"""Codes on the wire: JSON nested lists ``[h][w][depth]`` or ``.npy`` (no pickle), validated against the model;
and pre-processed images as ``.npy`` (``images_from_npy``, the tensor input of ``POST /encode``).

Valid codes for a model with grid ``g``, ``D`` depths and codebook size ``K``:

- shape ``(g, g, d)`` with ``1 <= d <= D`` (one image; the batch form of ``.npy`` responses is ``(B, g, g, d)``)
- integer dtype (JSON numbers must be integers: ``1.0``, ``true`` and strings are refused)
- values ``0 <= v <= K``; ``K`` itself is the null code (a zero vector, see ``evotok.export.types``)

Anything else raises ``InvalidCodes`` (422 ``invalid_codes``). Codes leave this module as uint16.

Hostile bodies are bounded before any allocation: a codes body larger than ``max_codes_body_bytes(info)``
(the largest valid grid, generously formatted) is refused with 413 before it is read or parsed; JSON integers
longer than ``MAX_INT_DIGITS`` and nesting too deep for the parser are ``invalid_codes``; an ``.npy`` header is
checked against the model (dtype, shape) and the payload length against the header before the array exists.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo
from evotok.service.errors import InvalidCodes, InvalidInput

NPY_CONTENT_TYPE = "application/x-npy"
U16 = npt.NDArray[np.uint16]
MAX_INT_DIGITS = 12  # a code is at most 5 digits; longer JSON integers are refused before int() runs
_BYTES_PER_VALUE = 64  # JSON with generous indentation, or int64 .npy (8 bytes) with room to spare
_BODY_SLACK = 64 * 1024


def max_codes_body_bytes(info: ModelInfo) -> int:
    """The largest codes body (JSON or ``.npy``) worth reading for this model; bigger bodies get 413."""
    return info.grid * info.grid * info.num_depths * _BYTES_PER_VALUE + _BODY_SLACK


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidCodes(f"a JSON integer of {len(text)} digits is no code (codes are 0..K)")
    return int(text)


def parse_json(body: bytes) -> Any:
    """JSON bytes -> Python objects with bounded integers; syntax errors are ``invalid_input``."""
    try:
        return json.loads(body, parse_int=_parse_int)
    except RecursionError as exc:
        raise InvalidCodes("JSON nested too deeply for [h][w][depth] codes") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # e.g. int() digit limits inside the parser
        raise InvalidCodes(f"JSON numbers out of range for codes: {exc}") from exc


def validate_codes(arr: npt.NDArray[Any], info: ModelInfo) -> U16:
    """Check shape, dtype and range of one ``(h, w, d)`` code grid; return it as uint16."""
    g, depth_max, k = info.grid, info.num_depths, info.codebook_size
    if arr.dtype.kind not in "iu":
        raise InvalidCodes(f"codes must be integers, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise InvalidCodes(f"codes must have shape [h][w][depth] = ({g}, {g}, 1..{depth_max}), got {arr.shape}")
    h, w, d = arr.shape
    if (h, w) != (g, g):
        raise InvalidCodes(f"codes must cover a {g}x{g} grid, got {h}x{w}")
    if not 1 <= d <= depth_max:
        raise InvalidCodes(f"codes must have 1..{depth_max} depths, got {d}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > k:
        raise InvalidCodes(f"code values must be in [0, {k}] ({k} = null code), got min {lo} max {hi}")
    return np.ascontiguousarray(arr, dtype=np.uint16)


def codes_from_json(obj: Any, info: ModelInfo) -> U16:
    """A JSON body ``{"codes": [[[...]]]}`` (already parsed) -> validated uint16 codes."""
    if not isinstance(obj, dict) or "codes" not in obj:
        raise InvalidCodes('expected a JSON object {"codes": [h][w][depth] integers}')
    try:
        arr = np.asarray(obj["codes"])
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidCodes(f"codes are not a rectangular [h][w][depth] array: {exc}") from exc
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        kind = "booleans" if arr.dtype == np.bool_ else f"{arr.dtype} values"
        raise InvalidCodes(f"codes must be JSON integers, got {kind}")
    return validate_codes(arr, info)


def _npy_header(buf: io.BytesIO, error: type[InvalidInput] = InvalidCodes) -> tuple[tuple[int, ...], bool,
                                                                                   np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise error(f"not a valid .npy file (pickle is not allowed): {exc}") from exc
    shape, fortran, dtype = header
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def codes_from_npy(data: bytes, info: ModelInfo) -> U16:
    """``.npy`` bytes -> validated uint16 codes; the header is checked against the model before allocating."""
    if not data:
        raise InvalidCodes("empty body: expected a .npy file")
    buf = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(buf)
    g, depth_max = info.grid, info.num_depths
    if dtype.hasobject or dtype.kind not in "iu":
        raise InvalidCodes(f"codes must be an integer .npy (pickle is not allowed), got dtype {dtype}")
    if len(shape) != 3 or shape[:2] != (g, g) or not 1 <= shape[2] <= depth_max:
        raise InvalidCodes(f"codes .npy must have shape ({g}, {g}, 1..{depth_max}), the header says {shape}")
    offset = buf.tell()
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise InvalidCodes(f".npy payload is {len(data) - offset} bytes; shape {shape} of {dtype} needs {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape, order="F" if fortran else "C")
    return validate_codes(arr, info)


def max_image_npy_bytes(info: ModelInfo, max_images: int) -> int:
    """The largest ``.npy`` image body worth reading: ``max_images`` model-size uint8 images and a header."""
    return max_images * info.image_size * info.image_size * 3 + 4096


def images_from_npy(data: bytes, info: ModelInfo, max_images: int) -> tuple[list[npt.NDArray[np.uint8]], bool]:
    """``.npy`` bytes of model inputs -> ``(S, S, 3)`` uint8 images, and whether the batch form was used.

    Accepted: uint8 ``(S, S, 3)`` (one image) or ``(B, S, S, 3)`` with ``1 <= B <= max_images`` (the batch
    form), ``S`` = the model's image size, RGB in [0, 255]: images already decoded and fitted by the client
    (no EXIF, alpha or resizing happens here). The header is checked before the array exists.
    """
    if not data:
        raise InvalidInput("empty body: expected a .npy file")
    buf = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(buf, InvalidInput)
    s = info.image_size
    if dtype != np.uint8:
        raise InvalidInput(f"an image .npy must be uint8 RGB in [0, 255] (pickle is not allowed), got dtype {dtype}")
    batch_form = len(shape) == 4
    if shape[-3:] != (s, s, 3) or len(shape) not in (3, 4) or (batch_form and not 1 <= shape[0] <= max_images):
        raise InvalidInput(f"an image .npy must have shape ({s}, {s}, 3) or (B, {s}, {s}, 3) with B in "
                           f"1..{max_images} (decoded and fitted to the model input), the header says {shape}")
    offset = buf.tell()
    expected = math.prod(shape)
    if len(data) - offset != expected:
        raise InvalidInput(f".npy payload is {len(data) - offset} bytes; shape {shape} of uint8 needs {expected}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape, order="F" if fortran else "C")
    batch = arr if batch_form else arr[None]
    return [np.array(im, order="C") for im in batch], batch_form  # own, writable copies of the body


def to_npy(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
