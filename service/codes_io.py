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
import re
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


_NPY_MAGIC = b"\x93NUMPY"
_NPY_ITEM = re.compile(r"\s*'(descr|fortran_order|shape)'\s*:\s*('[^']*'|True|False|\(\s*(?:\d+\s*,\s*)*(?:\d+\s*)?\))\s*(?:,|(?=\}))")


def read_npy_header(buf: io.BytesIO, error: type[InvalidInput] = InvalidCodes) -> tuple[tuple[int, ...], bool,
                                                                                   np.dtype[Any]]:
    """Read an ``.npy`` header (versions 1.0, 2.0, 3.0) without evaluating it: the dict literal must hold
    exactly ``descr`` (a plain dtype string: structured and object dtypes, i.e. pickles, are refused),
    ``fortran_order`` and ``shape``. Leaves ``buf`` at the first payload byte."""
    head = buf.read(8)
    if len(head) < 8 or head[:6] != _NPY_MAGIC or head[6] not in (1, 2, 3) or head[7] != 0:
        raise error("not a valid .npy file (pickle is not allowed): bad magic or version")
    size_bytes = 2 if head[6] == 1 else 4
    raw_len = buf.read(size_bytes)
    length = int.from_bytes(raw_len, "little") if len(raw_len) == size_bytes else -1
    raw = buf.read(length) if 0 <= length <= 65536 else b""
    if len(raw) != length or length <= 0:
        raise error("not a valid .npy file (pickle is not allowed): truncated header")
    text = raw.decode("latin1" if head[6] < 3 else "utf8", errors="replace").strip()
    fields: dict[str, str] = {}
    pos = 1
    while text.startswith("{") and (m := _NPY_ITEM.match(text, pos)) is not None and m.group(1) not in fields:
        fields[m.group(1)] = m.group(2)
        pos = m.end()
    if not text.startswith("{") or text[pos:].strip() != "}" or len(fields) != 3:
        raise error(f"not a valid .npy file (pickle is not allowed): header {text[:120]!r} is not "
                    "{'descr': <dtype string>, 'fortran_order': bool, 'shape': (ints)}")
    try:
        dtype = np.dtype(fields["descr"].strip("'"))
    except (TypeError, ValueError, OverflowError) as exc:
        raise error(f"not a valid .npy file (pickle is not allowed): dtype {fields['descr']}: {exc}") from exc
    shape = tuple(int(n) for n in fields["shape"].strip("()").replace(",", " ").split())
    return shape, fields["fortran_order"] == "True", dtype


def codes_from_npy(data: bytes, info: ModelInfo) -> U16:
    """``.npy`` bytes -> validated uint16 codes; the header is checked against the model before allocating."""
    if not data:
        raise InvalidCodes("empty body: expected a .npy file")
    buf = io.BytesIO(data)
    shape, fortran, dtype = read_npy_header(buf)
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
    shape, fortran, dtype = read_npy_header(buf, InvalidInput)
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
    """One C-order array as ``.npy`` version 1.0 bytes (what ``np.save`` writes for plain dtypes)."""
    arr = np.asarray(arr, order="C")  # (ascontiguousarray would turn a 0-d array into (1,))
    if arr.dtype.hasobject or arr.dtype.names is not None:
        raise TypeError(f"to_npy writes plain dtypes only, got {arr.dtype}")
    shape = repr(tuple(int(n) for n in arr.shape))  # "(a, b)", "(a,)", "()" as numpy writes them
    header = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
    pad = 64 - (10 + len(header) + 1) % 64
    return _NPY_MAGIC + b"\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little") + \
        header.encode("latin1") + b" " * pad + b"\n" + arr.tobytes()
