"""The client sends the content type sniffed from the bytes (the server's own container table), so a broken
file gets the same failure code as a local run: bytes that are no image -> 422 ``invalid_image`` (never 415 for
``application/octet-stream``), an ICO -> 415, and BMP/TIFF/GIF photos encode."""

from __future__ import annotations

import io

import pytest
import skimage.data
from PIL import Image

from evotok.client import AsyncClient, Client, EvoTokError
from evotok.client.wire import sniff_image_type
from evotok.imaging import ImageError, prepare_image
from tests.client.server import Server

pytestmark = pytest.mark.e2e


def saved(fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, format=fmt, **kw)
    return buf.getvalue()


def local_code(data: bytes) -> str:
    try:
        prepare_image(data, 256, "center-crop", 40_000_000)
    except ImageError as exc:
        return exc.code
    return "ok"


BROKEN = {
    "garbage": b"garbage",
    "random": bytes(range(256)) * 4,
    "truncated_png": saved("PNG")[:1500],
    "text": b"just some text, named photo.jpg\n",
    "ico": saved("ICO", sizes=[(32, 32)]),
}


def test_sniffed_types() -> None:
    assert sniff_image_type(saved("PNG")) == "image/png"
    assert sniff_image_type(saved("JPEG")) == "image/jpeg"
    assert sniff_image_type(saved("WEBP")) == "image/webp"
    assert sniff_image_type(saved("GIF")) == "image/gif"
    assert sniff_image_type(saved("BMP")) == "image/bmp"
    assert sniff_image_type(saved("TIFF")) == "image/tiff"
    assert sniff_image_type(b"\x00\x00\x00\x1cftypavif" + bytes(20)) == "image/avif"
    assert sniff_image_type(b"\x00\x00\x00\x18ftypheic" + bytes(20)) == "image/heic"
    assert sniff_image_type(b"garbage") == "application/octet-stream"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_bytes_get_the_local_code(server: Server, name: str) -> None:
    data = BROKEN[name]
    want = local_code(data)
    assert want in ("invalid_image", "unsupported_media_type")
    with Client(server.url) as client, pytest.raises(EvoTokError) as err:
        client.encode(data)
    assert err.value.code == want, err.value
    assert err.value.status == (415 if want == "unsupported_media_type" else 422)


@pytest.mark.parametrize("call", ["encode", "embed"])
def test_garbage_is_not_415(server: Server, call: str) -> None:
    with Client(server.url) as client, pytest.raises(EvoTokError) as err:
        getattr(client, call)(b"garbage")
    assert (err.value.status, err.value.code) == (422, "invalid_image")


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "WEBP"])
async def test_less_common_containers_encode(server: Server, fmt: str) -> None:
    async with AsyncClient(server.url) as client:
        result = await client.encode(saved(fmt))
    assert result.codes.shape[:2] == (16, 16)
