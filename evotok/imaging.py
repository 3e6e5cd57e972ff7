"""Image bytes -> the model input ``(S, S, 3)`` uint8, with bounded work; and ``(H, W, 3)`` uint8 -> PNG bytes.

Pure preprocessing, shared by the service (``evotok.service.imaging`` translates ``ImageError`` into the HTTP
error table) and the offline tools (``evotok encode``, ``evotok tokenize``), so a local run and a server run
feed the model the same pixels. Nothing here knows about HTTP.

One rule for what users have on disk (the table is in docs/service.md, containers in ``image_formats.py``):

- containers: PNG (APNG), JPEG, WebP, GIF, BMP, TIFF, AVIF, and HEIC/HEIF with the optional plugin; animated
  files give their **first frame**.
- pixels, converted to 8-bit RGB: RGB as is; grayscale copied to three channels; 1-bit to black/white;
  palette through its palette; CMYK by Pillow's conversion (no ICC colour management); 16-bit samples keep
  their high byte; any alpha channel (RGBA, LA, PA, palette with transparency) is **flattened onto
  ``background``** (default white). 32-bit float images are refused (no agreed value range).
- orientation: the EXIF ``Orientation`` tag is applied (as ``ImageOps.exif_transpose`` does), so a phone photo
  is encoded upright.

Limits, all checked from the header before any pixel is decoded:

- ``width * height <= max_pixels`` (decompression bombs) -> ``ImageError("payload_too_large")``;
- ``max(w, h) / min(w, h) <= max_aspect_ratio`` -> ``ImageError("invalid_image")``. Together these bound the
  work: the fit below never allocates more than the decoded image plus ``S x S`` (no intermediate "short side
  to S" image, which for a 1x40000 PNG was 256 x 10,240,000 pixels).

Fitting to the model input ``S`` (``resize``):

- ``center-crop`` (default): the centred square of side ``min(w, h)`` is resampled to ``S x S`` (bicubic, one
  step from the source, so the crop never materialises a larger image).
- ``stretch``: bicubic resize of the whole image to ``S x S`` (aspect ratio not kept).
- ``none``: the image must already be ``S x S``.

Large JPEGs are decoded with ``draft()`` at the smallest DCT scale that still covers the fitted size.

Every refusal is an ``ImageError`` whose ``code`` is one of ``IMAGE_ERROR_CODES``: the same strings as the
service's error codes, so the tools record the same failure for an image whether it was read locally or sent to
a server.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageColor

from evotok.image_formats import FORMATS, IMAGE_CONTENT_TYPES, served_names, sniff_format

__all__ = ["IMAGE_CONTENT_TYPES", "IMAGE_ERROR_CODES", "RESIZE_MODES", "ImageError", "ImageErrorCode", "ResizeMode", "encode_png", "fit_to_model", "load_image",
           "open_checked", "parse_background", "prepare_image", "prepare_opened", "sniff_format"]

ImageErrorCode = Literal["invalid_image", "unsupported_media_type", "payload_too_large", "invalid_input"]
IMAGE_ERROR_CODES: tuple[ImageErrorCode, ...] = ("invalid_image", "unsupported_media_type", "payload_too_large",
                                                 "invalid_input")
ResizeMode = Literal["center-crop", "stretch", "none"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("center-crop", "stretch", "none")
RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
DEFAULT_MAX_ASPECT_RATIO = 20.0
_REDUCING_GAP = 3.0  # resize reduces by an integer factor first when shrinking >= 3x (Pillow: "indistinguishable")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, OverflowError)
# EXIF Orientation -> the transpose that shows the stored pixels upright (the table of ImageOps.exif_transpose)
_ORIENT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(Exception):
    """An image (or a preprocessing parameter) that cannot be turned into a model input.

    ``code``: ``invalid_image`` (unreadable, or content outside the rule), ``unsupported_media_type`` (a known
    container that is not served), ``payload_too_large`` (over the pixel limit), ``invalid_input`` (a parameter:
    background colour, ``resize=none`` with the wrong size).
    """

    def __init__(self, code: ImageErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ImageErrorCode = code
        self.message = message


def parse_background(value: str) -> RGB:
    """A colour name or ``#rgb``/``#rrggbb`` (Pillow's ImageColor) -> ``(r, g, b)``; ``invalid_input`` if unknown."""
    try:
        rgb = ImageColor.getrgb(value.strip())
    except ValueError as exc:
        raise ImageError("invalid_input", f"background {value!r} is not a colour; use a name (white, black) or #rrggbb") from exc
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def open_checked(data: bytes, max_pixels: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Sniff, open lazily (header only) and check pixel count and aspect ratio; nothing is decoded yet."""
    if not data:
        raise ImageError("invalid_image", "empty image: the request carried zero bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("invalid_image", f"the bytes are not an image in a served format ({served_names()})")
    container = FORMATS[fmt]
    if not container.served:
        raise ImageError("unsupported_media_type", f"{fmt} images are not served ({container.why_not}); send {served_names()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(container.pillow))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("payload_too_large", f"image has too many pixels ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError("invalid_image", f"could not read the {fmt} header: {exc}") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("invalid_image", f"image is {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("payload_too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect_ratio:
        raise ImageError("invalid_image", f"image is {width}x{height}: aspect ratio {aspect:.0f}:1 is over the limit of "
                           f"{max_aspect_ratio:g}:1")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF: show the pixels as stored
    return int(value) if isinstance(value, int) and value in _ORIENT else 1


def _decode(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)  # animated files: the first frame
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("payload_too_large", f"image has too many pixels ({exc})") from exc
    except MemoryError as exc:
        raise ImageError("payload_too_large", "image too large to decode") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError("invalid_image", f"could not decode the {img.format} image: {exc}") from exc


def _flatten(img: Image.Image, background: RGB) -> Image.Image:
    """Any alpha mode -> RGB on ``background``; pastes with the image's own alpha (one RGB-sized allocation)."""
    if img.mode not in ("RGBA", "LA", "RGBa", "La"):
        img = img.convert("RGBA")
    out = Image.new("RGB", img.size, background)
    out.paste(img.convert("RGB") if img.mode in ("LA", "La") else img, (0, 0), img)
    return out


def _sixteen_bit(img: Image.Image) -> Image.Image:
    """16-bit (``I;16*``) or integer (``I``) samples in 0..65535 -> 8-bit ``L`` (the high byte)."""
    arr = np.asarray(img)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise ImageError("invalid_image", f"{img.mode} image with samples outside 0..65535 is not supported")
    return Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8))


def to_rgb(img: Image.Image, background: RGB = WHITE) -> Image.Image:
    """Any supported pixel mode -> 8-bit RGB by the rule in the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and (
        "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")))
    if has_alpha:
        return _flatten(img, background)
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit(img).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    raise ImageError("invalid_image", f"pixel mode {mode} is not supported (floating-point samples have no agreed range)")


def fit_to_model(img: Image.Image, size: int, mode: ResizeMode = "center-crop") -> npt.NDArray[np.uint8]:
    """RGB PIL image -> ``(size, size, 3)`` uint8 by the rule in the module docstring (never larger than S x S)."""
    width, height = img.size
    if mode == "none":
        if (width, height) != (size, size):
            raise ImageError("invalid_input", f"resize=none needs a {size}x{size} image, got {width}x{height}")
        out = img
    elif mode == "stretch":
        out = img if (width, height) == (size, size) else img.resize(
            (size, size), Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)
    elif mode == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = img if (width, height) == (size, size) else img.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
            reducing_gap=_REDUCING_GAP)
    else:  # pragma: no cover - guarded by the Literal/query validation
        raise ImageError("invalid_input", f"unknown resize mode {mode!r}; choose one of {list(RESIZE_MODES)}")
    arr = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(arr.reshape(size, size, 3))


def _draft_jpeg(img: Image.Image, size: int, mode: ResizeMode) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the fitted size."""
    if img.format != "JPEG" or mode == "none":
        return
    width, height = img.size
    side = min(width, height)
    need = (size, size) if mode == "stretch" else (-(-width * size // side), -(-height * size // side))
    if min(width // need[0], height // need[1]) >= 2:
        img.draft(None, need)


def load_image(data: bytes, max_pixels: int, *, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
               background: RGB = WHITE) -> Image.Image:
    """Open, check and fully decode one image; returns it upright, in mode ``RGB``."""
    img = open_checked(data, max_pixels, max_aspect_ratio)
    orientation = _orientation(img)
    _decode(img)
    rgb = to_rgb(img, background)
    return rgb.transpose(_ORIENT[orientation]) if orientation in _ORIENT else rgb


def prepare_image(data: bytes, size: int, mode: ResizeMode, max_pixels: int, *,
                  max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO, background: RGB = WHITE) -> npt.NDArray[np.uint8]:
    """Request bytes -> model input ``(size, size, 3)`` uint8 in [0, 255]: ``open_checked`` (header only),
    then ``prepare_opened`` (decode and fit)."""
    return prepare_opened(open_checked(data, max_pixels, max_aspect_ratio), size, mode, background)


def prepare_opened(img: Image.Image, size: int, mode: ResizeMode, background: RGB = WHITE) -> npt.NDArray[np.uint8]:
    """An image from ``open_checked`` (checked, not decoded yet) -> model input ``(size, size, 3)`` uint8.

    Orientation is applied to the fitted ``S x S`` result: centre crop and stretch commute with the eight
    EXIF transposes (the crop is a centred square), so the large image is never copied just to turn it.
    """
    orientation = _orientation(img)
    _draft_jpeg(img, size, mode)
    _decode(img)
    try:
        rgb = to_rgb(img, background)
        if rgb is not img:
            img.close()  # free the full-size source before the resize allocates
        fitted = fit_to_model(rgb, size, mode)
    except MemoryError as exc:
        raise ImageError("payload_too_large", "image too large to convert") from exc
    except (OSError, ValueError) as exc:
        raise ImageError("invalid_image", f"could not convert the image: {exc}") from exc
    if orientation in _ORIENT:
        fitted = np.ascontiguousarray(np.asarray(Image.fromarray(fitted).transpose(_ORIENT[orientation])))
    return fitted


def encode_png(image: npt.NDArray[np.uint8], compress_level: int = 3) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (lossless; level 3 trades a few % size for speed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
