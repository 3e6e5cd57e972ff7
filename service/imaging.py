"""Image bytes -> the model input ``(S, S, 3)`` uint8, with limits; and ``(H, W, 3)`` uint8 -> PNG bytes.

Accepted input (one documented rule, everything else is refused rather than silently converted):

- containers: PNG, JPEG, WebP (sniffed from the bytes, not trusted from the Content-Type); GIF, BMP, TIFF
  and others -> 415 ``unsupported_media_type``; bytes that are no known image -> 422 ``invalid_image``.
- pixels: 8-bit RGB, 8-bit grayscale (``L``, copied to the three channels) and 8-bit palette images without
  transparency (``P`` -> RGB). Refused with 422 ``invalid_image``: any alpha channel (RGBA, LA, PA, palette
  with transparency; flattening needs a background colour only the client knows), CMYK, 16-bit PNG (any
  colour type), 1-bit and 32-bit integer/float modes. Animated PNG/WebP are refused (one image = one frame).
- size: ``width * height <= max_image_pixels``, checked from the header before any pixel is decoded
  (decompression bombs) -> 413 ``payload_too_large``. Truncated or corrupt files -> 422 ``invalid_image``.

Fitting to the model input ``S = info.image_size`` (``resize`` query parameter):

- ``center-crop`` (default): scale so the short side is ``S`` (bicubic), then crop the centre ``S x S``.
- ``stretch``: bicubic resize to ``S x S`` (aspect ratio not kept).
- ``none``: the image must already be ``S x S`` (else 422).
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from evotok.service.errors import InvalidImage, InvalidInput, PayloadTooLarge, UnsupportedMediaType

ResizeMode = Literal["center-crop", "stretch", "none"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("center-crop", "stretch", "none")
IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")
_ACCEPTED_MODES = {"RGB", "L", "P"}


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes: ``PNG``/``JPEG``/``WEBP`` (served), other names (refused), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if len(data) >= 12 and data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "HEIF/AVIF"
    return None


def _png_bit_depth(data: bytes) -> int | None:
    # IHDR is the first chunk: 8 signature + 4 length + 4 type + 4 width + 4 height, then bit depth
    if len(data) >= 25 and data[12:16] == b"IHDR":
        return data[24]
    return None


def load_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check and fully decode one image; returns a PIL image in mode ``RGB``."""
    if not data:
        raise InvalidImage("empty image: the request carried zero bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage("the bytes are not a PNG, JPEG or WebP image")
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise UnsupportedMediaType(f"{fmt} images are not supported; send PNG, JPEG or WebP")
    if fmt == "PNG" and _png_bit_depth(data) == 16:
        raise InvalidImage("16-bit PNG is not supported; send an 8-bit RGB or grayscale PNG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
                )
            if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
                raise InvalidImage("animated images are not supported; send a single frame")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image has too many pixels ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"could not decode the {fmt} image: {exc}") from exc
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode not in _ACCEPTED_MODES:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            raise InvalidImage(f"images with an alpha channel ({mode}) are not supported; flatten to RGB first")
        raise InvalidImage(f"pixel mode {mode} is not supported; send 8-bit RGB or grayscale")
    if mode == "P" and ("transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")):
        raise InvalidImage("palette images with transparency are not supported; flatten to RGB first")
    return img if mode == "RGB" else img.convert("RGB")


def fit_to_model(img: Image.Image, size: int, mode: ResizeMode = "center-crop") -> npt.NDArray[np.uint8]:
    """RGB PIL image -> ``(size, size, 3)`` uint8 by the rule named in the module docstring."""
    width, height = img.size
    if mode == "none":
        if (width, height) != (size, size):
            raise InvalidInput(f"resize=none needs a {size}x{size} image, got {width}x{height}")
        out = img
    elif mode == "stretch":
        out = img if (width, height) == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)
    elif mode == "center-crop":
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        resized = img if (new_w, new_h) == (width, height) else img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        out = resized.crop((left, top, left + size, top + size))
    else:  # pragma: no cover - guarded by the Literal/query validation
        raise InvalidInput(f"unknown resize mode {mode!r}; choose one of {list(RESIZE_MODES)}")
    arr = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(arr.reshape(size, size, 3))


def prepare_image(data: bytes, size: int, mode: ResizeMode, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Request bytes -> model input ``(size, size, 3)`` uint8 in [0, 255]."""
    return fit_to_model(load_image(data, max_pixels), size, mode)


def encode_png(image: npt.NDArray[np.uint8], compress_level: int = 3) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (lossless; level 3 trades a few % size for speed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
