"""Each endpoint as a ``Call``: how to build the HTTP request and how to read the answer.

The sync and async clients only differ in how they send a ``Call`` (and sleep between retries), so the
endpoint knowledge lives here once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import numpy as np

from evotok.client import wire
from evotok.client.errors import EvoTokError
from evotok.client.types import DecodeResult, EmbedResult, EncodeResult, Health, model_info_from_dict
from evotok.export.types import ModelInfo

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response, float], T]
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    ok_statuses: frozenset[int] = frozenset({200})

    def request_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": self.params or None, "headers": self.headers}
        if self.content is not None:
            kw["content"] = self.content
        if self.files is not None:
            kw["files"] = self.files
        return kw


def _json_any(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise EvoTokError(
            "bad_response", f"{resp.request.url.path}: not JSON: {exc}", resp.status_code
        ) from exc


def _json(resp: httpx.Response) -> dict[str, Any]:
    body = _json_any(resp)
    if not isinstance(body, dict):
        raise EvoTokError(
            "bad_response", f"{resp.request.url.path}: expected a JSON object", resp.status_code
        )
    return body


def _is_npy(resp: httpx.Response) -> bool:
    ctype: str = resp.headers.get("content-type", "")
    return ctype.split(";")[0].strip() == wire.NPY


def _depth_params(depth: int | None) -> dict[str, Any]:
    return {} if depth is None else {"depth": int(depth)}


def _parse_encode(batched: bool) -> Callable[[httpx.Response, float], EncodeResult]:
    def parse(resp: httpx.Response, latency: float) -> EncodeResult:
        if _is_npy(resp):
            codes = wire.to_codes(wire.load_npy(resp.content))
            depth, model = codes.shape[-1], None
        else:
            body = _json_any(resp)  # one result object, or a list of them (batch form)
            codes, depth, model = wire.parse_codes_json({"results": body} if isinstance(body, list) else body)
        if batched and codes.ndim == 3:
            codes = codes[None]
        if not batched and codes.ndim == 4 and codes.shape[0] == 1:
            codes = codes[0]
        return EncodeResult(codes=codes, depth=int(depth), model=model, latency_s=latency)

    return parse


def _one_image(path: str, parse: Callable[[httpx.Response, float], T], image: wire.ImageInput, accept: str,
               params: dict[str, Any] | None = None) -> Call[T]:
    """One image as the raw request body with its sniffed content type; bytes that are no known image go as a
    multipart ``image`` file instead, so the server judges the bytes (422 ``invalid_image``, as a local run)
    rather than the content type (415). For ``/encode`` and ``/embed`` alike."""
    data, ctype = wire.image_bytes(image)
    if ctype == wire.OCTET:
        return Call("POST", path, parse, params=params or {}, headers={"Accept": accept},
                    files=[("image", ("image", data, ctype))])
    return Call("POST", path, parse, params=params or {}, headers={"Content-Type": ctype, "Accept": accept},
                content=data)


def encode(image: wire.ImageInput, depth: int | None, fmt: str) -> Call[EncodeResult]:
    accept = wire.NPY if fmt == "npy" else "application/json"
    return _one_image("/encode", _parse_encode(False), image, accept, _depth_params(depth))


def encode_many(images: Sequence[wire.ImageInput], depth: int | None, fmt: str) -> Call[EncodeResult]:
    """The batch form: several multipart ``images`` fields in one request -> ``(B, h, w, d)``."""
    files = []
    for i, image in enumerate(images):
        data, ctype = wire.image_bytes(image)
        files.append(("images", (f"image{i}", data, ctype)))
    accept = wire.NPY if fmt == "npy" else "application/json"
    return Call(
        "POST",
        "/encode",
        _parse_encode(True),
        params=_depth_params(depth),
        headers={"Accept": accept},
        files=files,
    )


def decode(codes: Any, fmt: str) -> Call[DecodeResult]:
    body, ctype = wire.codes_body(codes, fmt)

    def parse(resp: httpx.Response, latency: float) -> DecodeResult:
        if not resp.content.startswith(b"\x89PNG"):
            raise EvoTokError("bad_response", "/decode did not return a PNG", resp.status_code)
        return DecodeResult(png=resp.content, latency_s=latency)

    return Call(
        "POST", "/decode", parse, headers={"Content-Type": ctype, "Accept": "image/png"}, content=body
    )


def _parse_embed(resp: httpx.Response, latency: float) -> EmbedResult:
    if _is_npy(resp):
        feats = wire.load_npy(resp.content).astype(np.float32)
        return EmbedResult(features=feats, model=None, latency_s=latency)
    body = _json(resp)
    return EmbedResult(features=wire.parse_features_json(body), model=wire.model_ref(body), latency_s=latency)


def embed_image(image: wire.ImageInput, fmt: str) -> Call[EmbedResult]:
    return _one_image("/embed", _parse_embed, image, wire.NPY if fmt == "npy" else "application/json")


def embed_codes(codes: Any, fmt: str) -> Call[EmbedResult]:
    body, ctype = wire.codes_body(codes, "npy" if fmt == "npy" else "json")
    accept = wire.NPY if fmt == "npy" else "application/json"
    return Call(
        "POST", "/embed", _parse_embed, headers={"Content-Type": ctype, "Accept": accept}, content=body
    )


def info() -> Call[ModelInfo]:
    return Call("GET", "/info", lambda resp, _lat: model_info_from_dict(_json(resp)))


def health(path: str) -> Call[Health]:
    def parse(resp: httpx.Response, _lat: float) -> Health:
        try:
            body = json.loads(resp.content) if resp.content else {}
        except ValueError:
            body = {"text": resp.text}
        return Health(
            ok=resp.status_code == 200,
            status=resp.status_code,
            body=body if isinstance(body, dict) else {"value": body},
        )

    # a not-ready server answers 503: that is the answer, not an error to retry or raise
    return Call("GET", path, parse, ok_statuses=frozenset({200, 503}))
