"""Everyday images: what users have on disk is accepted and converted by one documented rule.

Cases covered here: JPEG with EXIF orientation 6; RGBA / LA / palette-with-transparency PNG, CMYK
JPEG, 16-bit PNG (were 422); GIF, BMP, TIFF (were 415); a GIF to ``/embed``. Pixel values are checked on
``prepare_image`` (the one conversion path), status codes and codes through the app.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from evotok.export.fake import FakeRuntime
from evotok.service.imaging import prepare_image

SIZE = 64  # FakeRuntime image size
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _blocks(w: int, h: int, seed: int = 0, cell: int = 16) -> np.ndarray[Any, Any]:
    """An (h, w, 3) picture of constant ``cell`` x ``cell`` blocks (stable under JPEG at quality 100)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // cell, w // cell, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)


def _exif_jpeg(upright: np.ndarray[Any, Any], orientation: int) -> bytes:
    """The JPEG a phone writes: pixels stored unrotated, EXIF Orientation telling the viewer how to turn them."""
    stored = Image.fromarray(upright)
    # orientation 6 = "rotate 90 degrees clockwise to display": the sensor image is the upright one turned back
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    stored = stored.transpose(inverse[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def _agreement(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def _encode(client: TestClient, data: bytes, ctype: str = "image/png", query: str = "") -> Any:
    r = client.post(f"/encode{query}", content=data, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["codes"])


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(client: TestClient, orientation: int) -> None:
    upright = _blocks(96, 64)  # landscape: a wrong orientation changes the crop, not only the rotation
    phone = _exif_jpeg(upright, orientation)
    reference = _save(Image.fromarray(upright), "JPEG", quality=100, subsampling=0)
    got = prepare_image(phone, SIZE, "center-crop", 10**7)
    want = prepare_image(reference, SIZE, "center-crop", 10**7)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 8
    agreement = _agreement(_encode(client, phone, "image/jpeg"), _encode(client, reference, "image/jpeg"))
    assert agreement >= 0.9, f"codes of the phone photo agree {agreement:.0%} with the upright picture"


def _rgba_png(alpha: int, mode: str = "RGBA") -> bytes:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    img = Image.fromarray(rgba)
    return _save(img.convert("LA") if mode == "LA" else img, "PNG")


def _palette_transparent() -> bytes:
    img = Image.new("P", (SIZE, SIZE), 0)
    img.putpalette([10, 20, 30] * 256)
    return _save(img, "PNG", transparency=0)


def _png16(value: int, channels: int) -> bytes:
    """A 16-bit PNG (gray or RGB) built by hand: every sample ``value``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + struct.pack(">H", value) * channels * SIZE
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 16, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * SIZE))
            + chunk(b"IEND", b""))


def _uniform(value: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    return np.broadcast_to(np.array(value, np.uint8), (SIZE, SIZE, 3))


CONVERSIONS: list[tuple[str, Callable[[], bytes], dict[str, Any], tuple[int, int, int], int]] = [
    # name, bytes, prepare_image kwargs, expected uniform colour, tolerance
    ("transparent rgba on white", lambda: _rgba_png(0), {}, WHITE, 0),
    ("transparent rgba on black", lambda: _rgba_png(0), {"background": BLACK}, BLACK, 0),
    ("transparent gray+alpha", lambda: _rgba_png(0, "LA"), {}, WHITE, 0),
    ("palette with transparency", _palette_transparent, {}, WHITE, 0),
    ("16-bit gray png", lambda: _png16(40000, 1), {}, (156, 156, 156), 1),
    ("16-bit rgb png", lambda: _png16(40000, 3), {}, (156, 156, 156), 1),
    ("cmyk jpeg", lambda: _save(Image.new("RGB", (SIZE, SIZE), (200, 100, 50)).convert("CMYK"), "JPEG",
                                quality=100), {}, (200, 100, 50), 3),
    ("1-bit png", lambda: _save(Image.new("1", (SIZE, SIZE), 1), "PNG"), {}, WHITE, 0),
    ("gif", lambda: _save(Image.new("RGB", (SIZE, SIZE), (0, 0, 255)).convert("P"), "GIF"), {}, (0, 0, 255), 0),
    ("bmp", lambda: _save(Image.new("RGB", (SIZE, SIZE), (1, 2, 3)), "BMP"), {}, (1, 2, 3), 0),
    ("tiff", lambda: _save(Image.new("RGB", (SIZE, SIZE), (4, 5, 6)), "TIFF"), {}, (4, 5, 6), 0),
    ("avif", lambda: _save(Image.new("RGB", (SIZE, SIZE), (200, 100, 50)), "AVIF", quality=100), {},
     (200, 100, 50), 6),
]


@pytest.mark.parametrize("case", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_conversion_to_rgb(case: tuple[str, Callable[[], bytes], dict[str, Any], tuple[int, int, int], int]) -> None:
    _name, make, kwargs, colour, tol = case
    out = prepare_image(make(), SIZE, "none", 10**7, **kwargs)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.array(colour)).max() <= tol, out[0, 0]


def _frames(fmt: str) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    imgs = [Image.new("RGB", (SIZE, SIZE), c) for c in colours]
    if fmt == "GIF":
        imgs = [i.convert("P") for i in imgs]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return _save(imgs[0], fmt, save_all=True, append_images=imgs[1:], duration=100, **extra)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_give_their_first_frame(fmt: str) -> None:
    out = prepare_image(_frames(fmt), SIZE, "none", 10**7)
    assert np.abs(out.astype(int) - np.array([255, 0, 0])).max() <= 2


def test_heic_when_the_plugin_is_installed() -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is an optional extra (images)")
    pillow_heif.register_heif_opener()
    data = _save(Image.new("RGB", (SIZE, SIZE), (200, 100, 50)), "HEIF", quality=100)
    out = prepare_image(data, SIZE, "none", 10**7)
    assert np.abs(out.astype(int) - np.array([200, 100, 50])).max() <= 6


ACCEPTED = [
    ("rgba png", lambda: _rgba_png(128), "image/png"),
    ("gray+alpha png", lambda: _rgba_png(128, "LA"), "image/png"),
    ("palette with transparency", _palette_transparent, "image/png"),
    ("cmyk jpeg", lambda: _save(Image.new("RGB", (SIZE, SIZE), (9, 9, 9)).convert("CMYK"), "JPEG"), "image/jpeg"),
    ("16-bit png", lambda: _png16(1234, 3), "image/png"),
    ("gif", lambda: _frames("GIF"), "image/gif"),
    ("animated png", lambda: _frames("PNG"), "image/png"),
    ("animated webp", lambda: _frames("WEBP"), "image/webp"),
    ("bmp", lambda: _save(Image.new("RGB", (SIZE, SIZE)), "BMP"), "image/bmp"),
    ("tiff", lambda: _save(Image.new("RGB", (SIZE, SIZE)), "TIFF"), "image/tiff"),
    ("avif", lambda: _save(Image.new("RGB", (SIZE, SIZE)), "AVIF"), "image/avif"),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
@pytest.mark.parametrize("path", ["/encode", "/embed"])
def test_everyday_formats_are_served(client: TestClient, case: tuple[str, Callable[[], bytes], str], path: str) -> None:
    _name, make, ctype = case
    data = make()
    raw = client.post(path, content=data, headers={"content-type": ctype})
    assert raw.status_code == 200, raw.text
    multipart = client.post(path, files={"image": ("x", data, "application/octet-stream")})
    assert multipart.status_code == 200, multipart.text


def test_background_query_and_setting(app_client: Callable[..., TestClient]) -> None:
    data = _rgba_png(0)
    white = FakeRuntime().encode(_uniform(WHITE)[None])[0]
    black = FakeRuntime().encode(_uniform(BLACK)[None])[0]
    default = app_client()
    np.testing.assert_array_equal(_encode(default, data), white)
    np.testing.assert_array_equal(_encode(default, data, query="?background=black"), black)
    np.testing.assert_array_equal(_encode(default, data, query="?background=%23000000"), black)
    bad = default.post("/encode?background=notacolour", content=data, headers={"content-type": "image/png"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input", bad.text
    dark = app_client(background="black")
    np.testing.assert_array_equal(_encode(dark, data), black)
