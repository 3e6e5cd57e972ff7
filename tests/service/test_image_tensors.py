"""``POST /encode`` with ``Content-Type: application/x-npy``: model inputs sent as tensors (no decoding).

Valid: uint8 ``(S, S, 3)`` or ``(B, S, S, 3)``; the codes equal those of the same pixels sent as a PNG. Hostile
or wrong tensors are a 4xx in the one error shape, checked from the header before any allocation.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

NPY = {"content-type": "application/x-npy"}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _header_only(shape: tuple[int, ...], dtype: str = "|u1", payload: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})  # type: ignore[no-untyped-call]
    return b"\x93NUMPY\x01\x00" + buf.getvalue()[8:] + payload


def _error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["status"] == status, body
    return str(body["error"]["message"])


def _images(n: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_tensor_gives_the_codes_of_the_same_pixels_as_png(client: TestClient) -> None:
    (image,) = _images(1)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    as_png = client.post("/encode", content=png.getvalue(), headers={"content-type": "image/png"})
    as_npy = client.post("/encode", content=_npy(image), headers=NPY)
    assert as_png.status_code == 200 and as_npy.status_code == 200, as_npy.text
    assert as_npy.json()["codes"] == as_png.json()["codes"]


def test_batch_form_answers_each_image(client: TestClient) -> None:
    images = _images(3)
    r = client.post("/encode", content=_npy(images), headers={**NPY, "accept": "application/x-npy"})
    assert r.status_code == 200, r.text
    codes = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert codes.shape[0] == 3 and codes.dtype == np.uint16
    for i in range(3):
        one = np.load(io.BytesIO(client.post("/encode", content=_npy(images[i]),
                                             headers={**NPY, "accept": "application/x-npy"}).content))
        np.testing.assert_array_equal(codes[i], one)
    r = client.post("/encode", content=_npy(np.asfortranarray(images[0])), headers=NPY)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_header_only((100_000, 100_000, 3)), "shape"),
        (_header_only((2**40, 64, 64, 3)), "shape"),
        (_header_only((64, 64, 3), "<f4"), "uint8"),
        (_header_only((64, 64, 3), "|O"), "pickle"),
        (_npy(np.zeros((32, 32, 3), np.uint8)), "shape"),
        (_npy(np.zeros((64, 64, 4), np.uint8)), "shape"),
        (_npy(np.zeros((64, 64), np.uint8)), "shape"),
        (_npy(np.zeros((0, 64, 64, 3), np.uint8)), "shape"),
        (_npy(np.zeros((64, 64, 3), np.uint16)), "uint8"),
        (_header_only((64, 64, 3), payload=b"\0" * (64 * 64 * 3 - 1)), "payload"),
        (_header_only((64, 64, 3), payload=b"\0" * (64 * 64 * 3 + 1)), "payload"),
        (b"", "empty"),
        (b"not an npy file at all", "not a valid .npy"),
    ],
)
def test_wrong_or_hostile_tensors_are_422(client: TestClient, body: bytes, needle: str) -> None:
    message = _error(client.post("/encode", content=body, headers=NPY), 422, "invalid_input")
    assert needle in message


def test_more_images_than_the_batch_limit_is_refused(app_client: Any) -> None:
    client = app_client(max_batch_images=2)
    assert client.post("/encode", content=_npy(_images(2)), headers=NPY).status_code == 200
    _error(client.post("/encode", content=_npy(_images(3)), headers=NPY), 413, "payload_too_large")  # before reading
    _error(client.post("/encode", content=_header_only((3, 64, 64, 3)), headers=NPY), 422, "invalid_input")
