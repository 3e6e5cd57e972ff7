"""Malformed requests: each gets the right 4xx in the one JSON error shape, and the server stays healthy."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import png_bytes

# FakeRuntime defaults: image 64, grid 4, D = 4, K = 256


def _float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 0.5, np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A 5000x5000 (25 Mpx) grayscale PNG that compresses to a few kB: over the test cap of 4 Mpx."""
    buf = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


GOOD_CODES = np.ones((4, 4, 2), np.int64).tolist()
JPEG = png_bytes(fmt="JPEG")
PNG = png_bytes()


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    kwargs: Callable[[], dict[str, Any]]


def img(data: bytes, ctype: str = "image/png") -> Callable[[], dict[str, Any]]:
    return lambda: {"content": data, "headers": {"content-type": ctype}}


def form(files: list[tuple[str, tuple[str, bytes, str]]], **extra: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"files": files, **extra}


def codes_json(obj: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"content": json.dumps(obj), "headers": {"content-type": "application/json"}}


def npy(data: bytes) -> Callable[[], dict[str, Any]]:
    return lambda: {"content": data, "headers": {"content-type": "application/x-npy"}}


CASES = [
    # --- images -------------------------------------------------------------------------------------
    Case("zero bytes raw", "post", "/encode", 422, "invalid_image", img(b"")),
    Case("zero bytes multipart", "post", "/encode", 422, "invalid_image", form([("image", ("a.png", b"", "image/png"))])),
    Case("text body as png", "post", "/encode", 422, "invalid_image", img(b"hello, this is not an image")),
    Case("text/plain content type", "post", "/encode", 415, "unsupported_media_type", img(b"hello", "text/plain")),
    Case("no content type", "post", "/encode", 415, "unsupported_media_type", lambda: {"content": PNG}),
    Case("truncated png", "post", "/encode", 422, "invalid_image", img(PNG[: len(PNG) // 2])),
    Case("png header only", "post", "/encode", 422, "invalid_image", img(PNG[:40])),
    Case("truncated jpeg", "post", "/encode", 422, "invalid_image", img(JPEG[: len(JPEG) // 2], "image/jpeg")),
    Case("corrupt jpeg body", "post", "/encode", 422, "invalid_image",
         img(JPEG[:200] + bytes(len(JPEG) - 200), "image/jpeg")),
    # GIF/BMP/TIFF, animations, alpha, CMYK and 16-bit are accepted now (tests/service/test_everyday_images.py)
    Case("ico", "post", "/encode", 415, "unsupported_media_type", img(png_bytes((32, 32), fmt="ICO"))),
    Case("float tiff", "post", "/encode", 422, "invalid_image", img(_float_tiff(), "image/tiff")),
    Case("extreme aspect ratio", "post", "/encode", 422, "invalid_image", img(png_bytes((2100, 100)))),
    Case("unknown background", "post", "/encode?background=nope", 422, "invalid_input", img(PNG)),
    Case("decompression bomb", "post", "/encode", 413, "payload_too_large", img(_bomb_png())),
    Case("oversize body", "post", "/encode", 413, "payload_too_large", img(b"\x89PNG\r\n\x1a\n" + bytes(2_100_000))),
    Case("wrong field name", "post", "/encode", 422, "invalid_input", form([("file", ("a.png", PNG, "image/png"))])),
    Case("image and images", "post", "/encode", 422, "invalid_input",
         form([("image", ("a.png", PNG, "image/png")), ("images", ("b.png", PNG, "image/png"))])),
    Case("image as text field", "post", "/encode", 422, "invalid_input", lambda: {"data": {"image": "abc"},
                                                                                  "files": [("x", ("x", b"x", "text/plain"))]}),
    Case("too many batch images", "post", "/encode", 422, "invalid_input",
         form([("images", (f"{i}.png", PNG, "image/png")) for i in range(40)])),
    Case("broken multipart boundary", "post", "/encode", 422, "invalid_input",
         lambda: {"content": b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
                  "headers": {"content-type": "multipart/form-data; boundary=other"}}),
    Case("bad timeout header", "post", "/encode", 422, "invalid_input",
         lambda: {"content": PNG, "headers": {"content-type": "image/png", "x-request-timeout-ms": "-5"}}),
    Case("depth 0", "post", "/encode?depth=0", 422, "invalid_input", img(PNG)),
    Case("depth too big", "post", "/encode?depth=5", 422, "invalid_input", img(PNG)),
    Case("depth not a number", "post", "/encode?depth=abc", 422, "invalid_input", img(PNG)),
    Case("bad resize option", "post", "/encode?resize=fill", 422, "invalid_input", img(PNG)),
    Case("resize none wrong size", "post", "/encode?resize=none", 422, "invalid_input", img(png_bytes((80, 64)))),
    Case("not acceptable", "post", "/encode", 406, "not_acceptable",
         lambda: {"content": PNG, "headers": {"content-type": "image/png", "accept": "text/html"}}),
    # --- codes --------------------------------------------------------------------------------------
    Case("bad json", "post", "/decode", 422, "invalid_input",
         lambda: {"content": b"{codes: [1,", "headers": {"content-type": "application/json"}}),
    Case("empty json body", "post", "/decode", 422, "invalid_codes",
         lambda: {"content": b"", "headers": {"content-type": "application/json"}}),
    Case("json without codes key", "post", "/decode", 422, "invalid_codes", codes_json({"tokens": GOOD_CODES})),
    Case("json list not object", "post", "/decode", 422, "invalid_codes", codes_json(GOOD_CODES)),
    Case("codes wrong grid", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.ones((3, 4, 2), int).tolist()})),
    Case("codes 2-d", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.ones((4, 4), int).tolist()})),
    Case("codes ragged", "post", "/decode", 422, "invalid_codes", codes_json({"codes": [[[1, 2], [3]], [[1, 2], [3, 4]]]})),
    Case("codes zero depth", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.ones((4, 4, 0), int).tolist()})),
    Case("codes too many depths", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.ones((4, 4, 5), int).tolist()})),
    Case("codes negative", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), -1).tolist()})),
    Case("codes out of range", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), 257).tolist()})),
    Case("codes floats", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), 1.5).tolist()})),
    Case("codes integral floats", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), 1.0).tolist()})),
    Case("codes booleans", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), True).tolist()})),
    Case("codes strings", "post", "/decode", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), "1").tolist()})),
    Case("codes huge ints", "post", "/decode", 422, "invalid_codes", codes_json({"codes": [[[10**30]]]})),
    Case("npy float", "post", "/decode", 422, "invalid_codes", npy(_npy(np.ones((4, 4, 2), np.float32)))),
    Case("npy wrong shape", "post", "/decode", 422, "invalid_codes", npy(_npy(np.ones((1, 4, 4, 2), np.uint16)))),
    Case("npy pickled", "post", "/decode", 422, "invalid_codes", npy(_pickled_npy())),
    Case("npy garbage", "post", "/decode", 422, "invalid_codes", npy(b"not an npy file at all")),
    Case("npy truncated", "post", "/decode", 422, "invalid_codes", npy(_npy(np.ones((4, 4, 2), np.uint16))[:100])),
    Case("decode wrong content type", "post", "/decode", 415, "unsupported_media_type", img(PNG)),
    Case("embed wrong content type", "post", "/embed", 415, "unsupported_media_type", img(b"x", "text/csv")),
    Case("embed bad dtype", "post", "/embed?dtype=int8", 422, "invalid_input", codes_json({"codes": GOOD_CODES})),
    Case("embed batch form", "post", "/embed", 422, "invalid_input",
         form([("images", ("a.png", PNG, "image/png")), ("images", ("b.png", PNG, "image/png"))])),
    Case("embed negative codes", "post", "/embed", 422, "invalid_codes", codes_json({"codes": np.full((4, 4, 2), -3).tolist()})),
    # --- routing ------------------------------------------------------------------------------------
    Case("unknown path", "get", "/encoder", 404, "not_found", lambda: {}),
    Case("wrong method", "get", "/encode", 405, "method_not_allowed", lambda: {}),
]


@pytest.fixture(scope="module")
def shared_client() -> Any:
    from evotok.service.app import create_app
    from tests.service.conftest import make_settings, wait_ready
    from tests.service.fakes import ServiceFakeRuntime

    rt = ServiceFakeRuntime()
    with TestClient(create_app(make_settings(), runtime_factory=lambda: rt), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def test_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request(shared_client: TestClient, case: Case) -> None:
    response = getattr(shared_client, case.method)(case.path, **case.kwargs())
    assert response.status_code == case.status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == case.code, body
    assert body["error"]["status"] == case.status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    # the server is still healthy and serving after each bad request
    assert shared_client.get("/healthz").status_code == 200
    ok = shared_client.post("/encode", content=PNG, headers={"content-type": "image/png"})
    assert ok.status_code == 200, ok.text


def test_rejections_are_counted(shared_client: TestClient) -> None:
    shared_client.post("/encode", content=b"", headers={"content-type": "image/png"})
    text = shared_client.get("/metrics").text
    line = next(ln for ln in text.splitlines()
                if ln.startswith('evotok_admission_rejections_total{endpoint="encode",reason="invalid_input"}'))
    assert float(line.split()[-1]) >= 1
