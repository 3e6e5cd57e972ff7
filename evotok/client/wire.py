"""Request bodies and response parsing shared by the sync and async clients (no I/O here).

Image inputs accepted everywhere: a path, raw encoded bytes (any container the server takes, sent as they are
with the sniffed content type), a PIL image
or an ``(H, W, 3)`` uint8 array (both sent as PNG). Codes travel as ``.npy`` (uint16, no pickle) or JSON
nested lists ``[h][w][d]``.
"""

from __future__ import annotations

import io
import json
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from evotok.client.errors import EvoTokError
from evotok.client.types import ModelRef

NPY = "application/x-npy"
OCTET = "application/octet-stream"
ImageInput = Union[str, "PathLike[str]", bytes, npt.NDArray[np.uint8], Any]  # Any: PIL.Image.Image


def sniff_image_type(data: bytes) -> str:
    """Content type from magic bytes, by the server's own container table (``evotok.image_formats``):
    PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF, HEIC/HEIF, ICO. ``application/octet-stream`` for bytes that are no
    known image; ``encode`` then uploads them as a multipart file, so the server sniffs them and answers
    ``invalid_image`` (422) exactly as a local run records them, not 415 for the content type."""
    from evotok.image_formats import FORMATS, sniff_format

    name = sniff_format(data)
    if name is None:
        return OCTET
    types = FORMATS[name].media_types
    return types[0] if types else f"image/x-{name.lower()}"  # ICO: refused by the server as locally (415)


def image_bytes(image: ImageInput) -> tuple[bytes, str]:
    """Any supported image input -> (encoded bytes, content type)."""
    if isinstance(image, (str, PathLike)):
        data = Path(image).read_bytes()
        return data, sniff_image_type(data)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return data, sniff_image_type(data)
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"array images must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    raise TypeError(f"unsupported image input {type(image).__name__}")


def npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> npt.NDArray[Any]:
    """Parse a ``.npy`` body (pickles refused)."""
    try:
        arr: npt.NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
        return arr
    except ValueError as exc:
        raise EvoTokError("bad_response", f"server sent an unreadable .npy body: {exc}", 0) from exc


def to_codes(codes: Any) -> npt.NDArray[np.uint16]:
    """Codes (array or nested lists) -> uint16 array, checking the integer range [0, 65535]."""
    arr = np.asarray(codes)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError("codes must lie in [0, 65535]")
    return arr.astype(np.uint16)


def codes_body(codes: Any, fmt: str) -> tuple[bytes, str]:
    """Codes ``(h, w, d)`` or ``(B, h, w, d)`` -> request body for /decode or /embed."""
    arr = to_codes(codes)
    if arr.ndim not in (3, 4):
        raise ValueError(f"codes must be (h, w, d) or (B, h, w, d), got shape {arr.shape}")
    if fmt == "npy":
        return npy_bytes(arr), NPY
    if fmt == "json":
        return json.dumps({"codes": arr.tolist()}, separators=(",", ":")).encode(), "application/json"
    raise ValueError(f"unknown codes format {fmt!r} (npy or json)")


def model_ref(body: dict[str, Any]) -> ModelRef | None:
    model = body.get("model")
    if isinstance(model, dict) and "name" in model:
        return ModelRef(str(model["name"]), str(model.get("weights_hash", "")))
    return None


def parse_codes_json(body: dict[str, Any]) -> tuple[npt.NDArray[np.uint16], int, ModelRef | None]:
    """/encode JSON -> (codes, depth, model). Accepts the single form ``{"codes", "shape", ...}`` and a
    batch given either as 4-D ``codes`` or as ``{"results": [single, ...]}``."""
    if "results" in body:
        parts = [parse_codes_json(r) for r in body["results"]]
        if not parts:
            raise EvoTokError("bad_response", "empty batch in /encode response", 0)
        codes = np.stack([p[0] for p in parts])
        return codes, parts[0][1], parts[0][2] or model_ref(body)
    try:
        codes = to_codes(body["codes"])
    except (KeyError, ValueError) as exc:
        raise EvoTokError("bad_response", f"unexpected /encode response: {exc}", 0) from exc
    shape = body.get("shape")
    if shape is not None and tuple(shape) != codes.shape:
        codes = codes.reshape(tuple(int(s) for s in shape))
    depth = int(body.get("depth") or codes.shape[-1])
    return codes, depth, model_ref(body)


def parse_features_json(body: dict[str, Any]) -> npt.NDArray[np.float32]:
    key = "features" if "features" in body else "embeddings"
    try:
        feats = np.asarray(body[key], dtype=np.float32)
    except KeyError as exc:
        raise EvoTokError("bad_response", "no 'features' in /embed response", 0) from exc
    shape = body.get("shape")
    if shape is not None and tuple(shape) != feats.shape:
        feats = feats.reshape(tuple(int(s) for s in shape))
    return feats
