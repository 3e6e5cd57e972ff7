"""Hostile bodies for the parsers: each is a 4xx in the one error shape, never a 500.

Rows: npy header claiming (1e5, 1e5, 16); JSON codes with a 5000-digit integer; 100k-deep nesting; the
OpenAPI examples (they used code 4005 > K); multipart without an image field. The memory/time rows
(large bodies, slow clients, huge images) are end-to-end in ``test_hostile_limits.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import png_bytes


def _assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["status"] == status, body


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<u2", payload: bytes = b"") -> bytes:
    """An .npy file whose header claims ``shape`` but carries only ``payload``: a parser that trusts the
    header allocates the claimed size before it notices."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[no-untyped-call]
    return b"\x93NUMPY\x01\x00" + buf.getvalue()[8:] + payload


@pytest.mark.parametrize("shape", [(100_000, 100_000, 16), (4, 4, 10**12), (2**62, 2**62, 4)])
def test_npy_header_is_checked_before_allocating(client: TestClient, shape: tuple[int, ...]) -> None:
    r = client.post("/decode", content=_npy_header_only(shape), headers={"content-type": "application/x-npy"})
    _assert_error(r, 422, "invalid_codes")
    assert "shape" in r.json()["error"]["message"]


def test_npy_short_and_long_payloads(client: TestClient) -> None:
    good = np.ones((4, 4, 2), np.uint16)
    short = _npy_header_only((4, 4, 2), payload=good.tobytes()[:-2])
    long = _npy_header_only((4, 4, 2), payload=good.tobytes() + b"xx")
    for data in (short, long):
        r = client.post("/decode", content=data, headers={"content-type": "application/x-npy"})
        _assert_error(r, 422, "invalid_codes")
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(np.arange(32, dtype=np.uint16).reshape(4, 4, 2)))
    r = client.post("/decode", content=fortran.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/decode", "/embed"])
def test_json_huge_integer(client: TestClient, path: str) -> None:
    body = '{"codes": [[[' + "9" * 5000 + "]]]}"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    _assert_error(r, 422, "invalid_codes")


@pytest.mark.parametrize("path", ["/decode", "/embed"])
def test_json_deep_nesting(client: TestClient, path: str) -> None:
    body = '{"codes": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code in (413, 422), r.text
    _assert_error(r, r.status_code, "payload_too_large" if r.status_code == 413 else "invalid_codes")
    moderate = '{"codes": ' + "[" * 500 + "1" + "]" * 500 + "}"  # within the size cap, too deep for codes
    r = client.post(path, content=moderate, headers={"content-type": "application/json"})
    _assert_error(r, 422, "invalid_codes")


def test_codes_body_larger_than_any_valid_codes_is_413(client: TestClient) -> None:
    """The largest valid codes JSON for the model is small; a bigger body is refused before parsing."""
    body = json.dumps({"codes": np.ones((4, 4, 4), int).tolist()}) + " " * 1_500_000
    r = client.post("/decode", content=body, headers={"content-type": "application/json"})
    _assert_error(r, 413, "payload_too_large")
    pretty = json.dumps({"codes": np.full((4, 4, 4), 256).tolist()}, indent=8)  # whitespace-heavy but valid
    assert client.post("/decode", content=pretty, headers={"content-type": "application/json"}).status_code == 200


def test_openapi_examples_are_valid_requests(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    tried = 0
    for path in ("/decode", "/embed"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        example = content["application/json"]["example"]
        r = client.post(path, json=example)
        assert r.status_code == 200, (path, example, r.text)
        tried += 1
    assert tried == 2


def test_openapi_multipart_requires_the_image_field(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    embed = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert embed.get("required") == ["image"], embed
    encode = spec["paths"]["/encode"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    alternatives = encode.get("oneOf") or encode.get("anyOf") or []
    assert sorted(tuple(a.get("required", [])) for a in alternatives) == [("image",), ("images",)], encode
    for path in ("/encode", "/embed"):
        r = client.post(path, files={"file": ("a.png", png_bytes(), "image/png")})
        _assert_error(r, 422, "invalid_input")


def test_openapi_lists_the_accepted_image_types(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/encode", "/embed"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        for ctype in ("image/gif", "image/bmp", "image/tiff", "image/avif"):
            assert ctype in content, (path, sorted(content))
