"""Codes on the wire: JSON nested lists ``[h][w][depth]`` or ``.npy`` (no pickle), validated against the model.

Valid codes for a model with grid ``g``, ``D`` depths and codebook size ``K``:

- shape ``(g, g, d)`` with ``1 <= d <= D`` (one image; the batch form of ``.npy`` responses is ``(B, g, g, d)``)
- integer dtype (JSON numbers must be integers: ``1.0``, ``true`` and strings are refused)
- values ``0 <= v <= K``; ``K`` itself is the null code (a zero vector, see ``evotok.export.types``)

Anything else raises ``InvalidCodes`` (422 ``invalid_codes``). Codes leave this module as uint16.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo
from evotok.service.errors import InvalidCodes

NPY_CONTENT_TYPE = "application/x-npy"
U16 = npt.NDArray[np.uint16]


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
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCodes(f"codes are not a rectangular [h][w][depth] array: {exc}") from exc
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        kind = "booleans" if arr.dtype == np.bool_ else f"{arr.dtype} values"
        raise InvalidCodes(f"codes must be JSON integers, got {kind}")
    return validate_codes(arr, info)


def load_npy(data: bytes) -> npt.NDArray[Any]:
    """``.npy`` bytes -> array (pickled object arrays are refused)."""
    if not data:
        raise InvalidCodes("empty body: expected a .npy file")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidCodes(f"not a valid .npy file (pickle is not allowed): {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise InvalidCodes("expected a single .npy array, not an .npz archive")
    return arr


def codes_from_npy(data: bytes, info: ModelInfo) -> U16:
    return validate_codes(load_npy(data), info)


def to_npy(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
