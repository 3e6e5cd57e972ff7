"""The v2 protocol end to end with the real ``tritonclient`` package (HTTP and gRPC, JSON and binary tensors)
against a real uvicorn server over the FakeRuntime: the answers equal our own routes' answers, batch inputs,
errors in the protocol's shape, hostile inputs refused before allocation."""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.oip.conftest import OipServer, random_png

pytestmark = [pytest.mark.e2e]
S, G, D, K = 64, 4, 4, 256  # the FakeRuntime's model


@pytest.fixture(scope="module")
def clients(fake_server: OipServer) -> Any:
    h = th.InferenceServerClient(fake_server.http_target, network_timeout=30.0)
    g = tg.InferenceServerClient(fake_server.grpc_target)
    yield h, g
    h.close()
    g.close()


def _encode_route(url: str, blob: bytes, depth: int | None = None) -> np.ndarray:
    r = httpx.post(f"{url}/encode", content=blob, headers={"content-type": "image/png"},
                   params={"depth": depth} if depth else None)
    assert r.status_code == 200, r.text
    return np.array(r.json()["codes"], dtype=np.uint16)


def _image_input(mod: Any, blobs: list[bytes], binary: bool) -> Any:
    inp = mod.InferInput("IMAGE", [len(blobs)], "BYTES")
    if mod is th and not binary:  # JSON: BYTES elements as base64 strings
        inp.set_data_from_numpy(np.array([base64.b64encode(b) for b in blobs], dtype=np.object_), binary_data=False)
    elif mod is th:
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=True)
    else:
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return inp


def _tensor(mod: Any, name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    inp = mod.InferInput(name, list(arr.shape), datatype)
    if mod is th:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def _outputs(mod: Any, names: list[str], binary: bool) -> list[Any]:
    if mod is th:
        return [th.InferRequestedOutput(n, binary_data=binary) for n in names]
    return [tg.InferRequestedOutput(n) for n in names]


FORMS = [("http", True), ("http", False), ("grpc", True)]


def _client(clients: Any, transport: str) -> tuple[Any, Any]:
    h, g = clients
    return (th, h) if transport == "http" else (tg, g)


def test_health_and_metadata(fake_server: OipServer, clients: Any) -> None:
    h, g = clients
    for c in (h, g):
        assert c.is_server_live() and c.is_server_ready()
        for m in ("encode", "decode", "embed"):
            assert c.is_model_ready(m)
    info = httpx.get(f"{fake_server.url}/info").json()
    meta = h.get_model_metadata("encode")
    assert meta["versions"] == [info["weights_hash"]] and meta["platform"] == f"evotok:{info['name']}"
    assert meta["parameters"]["weights_hash"] == info["weights_hash"]
    assert {i["name"] for i in meta["inputs"]} == {"IMAGE", "PIXELS"}
    gmeta = g.get_model_metadata("decode")
    assert list(gmeta.versions) == [info["weights_hash"]]
    assert [o.name for o in gmeta.outputs] == ["PNG", "PIXELS"]
    assert "binary_tensor_data" in h.get_server_metadata()["extensions"]
    assert g.get_server_metadata().name == "evotok"
    assert h.is_model_ready("encode", model_version=info["weights_hash"])
    assert not h.is_model_ready("nope")
    assert not h.is_model_ready("encode", model_version="not-the-hash")
    with pytest.raises(InferenceServerException) as exc:
        g.get_model_metadata("nope")
    assert exc.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(("transport", "binary"), FORMS)
def test_encode_batch_equals_route(fake_server: OipServer, clients: Any, transport: str, binary: bool) -> None:
    mod, c = _client(clients, transport)
    blobs = [random_png(i) for i in range(3)]
    r = c.infer("encode", [_image_input(mod, blobs, binary)], outputs=_outputs(mod, ["CODES"], binary))
    codes = r.as_numpy("CODES")
    assert codes.dtype == np.uint16 and codes.shape == (3, G, G, D)
    for blob, got in zip(blobs, codes, strict=True):
        np.testing.assert_array_equal(got, _encode_route(fake_server.url, blob))
    r2 = c.infer("encode", [_image_input(mod, blobs[:1], binary)], parameters={"depth": 2})
    np.testing.assert_array_equal(r2.as_numpy("CODES")[0], _encode_route(fake_server.url, blobs[0], depth=2))


@pytest.mark.parametrize(("transport", "binary"), FORMS)
def test_encode_pixels_and_decode_and_embed(fake_server: OipServer, clients: Any, transport: str,
                                             binary: bool) -> None:
    mod, c = _client(clients, transport)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    codes = c.infer("encode", [_tensor(mod, "PIXELS", pixels, "UINT8", binary)]).as_numpy("CODES")
    for im, got in zip(pixels, codes, strict=True):
        np.testing.assert_array_equal(got, _encode_route(fake_server.url, _png(im)))
    r = c.infer("decode", [_tensor(mod, "CODES", codes, "UINT16", binary)],
                outputs=_outputs(mod, ["PNG", "PIXELS"], binary))
    pngs, pix = r.as_numpy("PNG"), r.as_numpy("PIXELS")
    assert pngs.shape == (2,) and pix.shape == (2, S, S, 3) and pix.dtype == np.uint8
    for i in range(2):
        png_bytes = base64.b64decode(pngs[i]) if (transport == "http" and not binary) else pngs[i]
        route = httpx.post(f"{fake_server.url}/decode", json={"codes": codes[i].tolist()})
        ref = np.asarray(Image.open(io.BytesIO(route.content)).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB")), ref)
        np.testing.assert_array_equal(pix[i], ref)
    feats = c.infer("embed", [_tensor(mod, "CODES", codes.astype(np.int64), "INT64", binary)]).as_numpy("FEATURES")
    assert feats.dtype == np.float32 and feats.shape[:2] == (2, G * G)
    ref = np.array(httpx.post(f"{fake_server.url}/embed", json={"codes": codes[1].tolist()}).json()["features"],
                   dtype=np.float32)
    np.testing.assert_array_equal(feats[1], ref)
    img_feats = c.infer("embed", [_image_input(mod, [random_png(5)], binary)]).as_numpy("FEATURES")
    route = httpx.post(f"{fake_server.url}/embed", content=random_png(5), headers={"content-type": "image/png"})
    np.testing.assert_array_equal(img_feats[0], np.array(route.json()["features"], dtype=np.float32))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


BAD_INPUTS = [
    ("decode", "CODES", np.zeros((1, G + 1, G, 2), np.uint16), "UINT16", "[B, 4, 4, d]"),
    ("decode", "CODES", np.full((1, G, G, 2), K + 1, np.uint16), "UINT16", "code values"),
    ("decode", "CODES", np.zeros((1, G, G, D + 1), np.uint16), "UINT16", "d in 1.."),
    ("decode", "CODES", np.zeros((1, G, G, 2), np.float32), "FP32", "integer tensor"),
    ("encode", "PIXELS", np.zeros((1, S, S + 1, 3), np.uint8), "UINT8", "PIXELS"),
    ("encode", "CODES", np.zeros((1, G, G, 2), np.uint16), "UINT16", "exactly one input"),
    ("encode", "IMAGE", np.array([b"not an image"], dtype=np.object_), "BYTES", "image"),
    ("encode", "PIXELS", np.zeros((9, S, S, 3), np.uint8), "UINT8", "1..8 items"),
]


@pytest.mark.parametrize(("transport", "binary"), FORMS)
@pytest.mark.parametrize(("model", "name", "arr", "datatype", "words"), BAD_INPUTS)
def test_bad_inputs_answer_4xx_in_protocol_shape(clients: Any, transport: str, binary: bool, model: str, name: str,
                                                 arr: np.ndarray, datatype: str, words: str) -> None:
    mod, c = _client(clients, transport)
    if datatype == "BYTES" and transport == "http" and not binary:
        arr = np.array([base64.b64encode(b) for b in arr], dtype=np.object_)
    with pytest.raises(InferenceServerException) as exc:
        c.infer(model, [_tensor(mod, name, arr, datatype, binary)])
    if transport == "http":
        assert exc.value.status() in ("422", "413"), exc.value
    else:
        assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", exc.value
    assert words.lower() in exc.value.message().lower()


def test_unknown_model_and_output(fake_server: OipServer, clients: Any) -> None:
    h, g = clients
    inp = _tensor(th, "CODES", np.zeros((1, G, G, 2), np.uint16), "UINT16")
    with pytest.raises(InferenceServerException) as exc:
        h.infer("nope", [inp])
    assert exc.value.status() == "404"
    with pytest.raises(InferenceServerException) as exc:
        h.infer("decode", [inp], outputs=[th.InferRequestedOutput("CODES")])
    assert exc.value.status() == "422" and "outputs" in exc.value.message()
    ginp = _tensor(tg, "CODES", np.zeros((1, G, G, 2), np.uint16), "UINT16")
    with pytest.raises(InferenceServerException) as exc:
        g.infer("nope", [ginp])
    assert exc.value.status() == "StatusCode.NOT_FOUND"


# --- hostile inputs, sent raw --------------------------------------------------------------------------------
def _raw_infer(url: str, model: str, header: dict[str, Any], blobs: bytes = b"", header_len: str | None = None,
               extra: dict[str, str] | None = None) -> httpx.Response:
    body = json.dumps(header).encode()
    headers = {"content-type": "application/octet-stream"}
    if blobs or header_len is not None:
        headers["Inference-Header-Content-Length"] = header_len if header_len is not None else str(len(body))
    headers.update(extra or {})
    return httpx.post(f"{url}/v2/models/{model}/infer", content=body + blobs, headers=headers, timeout=30)


def _assert_v2_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for w in words:
        assert w.lower() in body["error"].lower(), body


def test_hostile_http_bodies_refused_before_allocation(fake_server: OipServer) -> None:
    url = fake_server.url
    huge = {"inputs": [{"name": "CODES", "datatype": "UINT16", "shape": [1, 1 << 30, 1 << 30, 4],
                        "parameters": {"binary_data_size": 8}}]}
    _assert_v2_error(_raw_infer(url, "decode", huge, b"\0" * 8), 422, "[B, 4, 4, d]")
    many = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1 << 31, S, S, 3],
                        "parameters": {"binary_data_size": 8}}]}
    _assert_v2_error(_raw_infer(url, "encode", many, b"\0" * 8), 422, "batch")
    short = {"inputs": [{"name": "CODES", "datatype": "UINT16", "shape": [1, G, G, 2],
                         "parameters": {"binary_data_size": 1000}}]}
    _assert_v2_error(_raw_infer(url, "decode", short, b"\0" * 64), 422, "binary_data_size")
    wrong = {"inputs": [{"name": "CODES", "datatype": "UINT16", "shape": [1, G, G, 2],
                         "parameters": {"binary_data_size": 10}}]}
    _assert_v2_error(_raw_infer(url, "decode", wrong, b"\0" * 10), 422, "needs 64")
    ok = {"inputs": [{"name": "CODES", "datatype": "UINT16", "shape": [1, G, G, 2],
                      "parameters": {"binary_data_size": 64}}]}
    for lie in ("999999", "-5", "abc", "0"):
        _assert_v2_error(_raw_infer(url, "decode", ok, b"\0" * 64, header_len=lie), 422, "Inference-Header")
    _assert_v2_error(_raw_infer(url, "decode", ok, b"\0" * 64 + b"extra"), 422, "follow")
    lying_bytes = struct.pack("<I", 1 << 30) + b"\x89PNG"
    img = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                       "parameters": {"binary_data_size": len(lying_bytes)}}]}
    _assert_v2_error(_raw_infer(url, "encode", img, lying_bytes), 422, "declares")
    two = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2],
                       "parameters": {"binary_data_size": 8}}]}
    _assert_v2_error(_raw_infer(url, "encode", two, struct.pack("<I", 4) + b"abcd"), 422, "ends before")
    json_lie = {"inputs": [{"name": "CODES", "datatype": "UINT16", "shape": [1, G, G, 2], "data": [1, 2, 3]}]}
    _assert_v2_error(_raw_infer(url, "decode", json_lie), 422, "values for shape")
    _assert_v2_error(_raw_infer(url, "decode", {"inputs": []}), 422, "inputs")
    r = httpx.post(f"{url}/v2/models/decode/infer", content=b"{not json", timeout=10)
    _assert_v2_error(r, 422, "json")
    gz = _raw_infer(url, "decode", ok, b"\0" * 64, extra={"content-encoding": "gzip"})
    _assert_v2_error(gz, 415, "content-encoding")
    bomb = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(
        _bomb_png()).decode()]}]}
    _assert_v2_error(_raw_infer(url, "encode", bomb), 413)
    assert httpx.get(f"{url}/healthz").status_code == 200


def _bomb_png() -> bytes:
    """A small PNG that declares 9000 x 9000 pixels (over EVOTOK_MAX_IMAGE_PIXELS' default)."""
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_hostile_grpc_messages(fake_server: OipServer) -> None:
    with grpc.insecure_channel(fake_server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def call(**kw: Any) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(service_pb2.ModelInferRequest(**kw), timeout=10)
            return exc.value

        tensor = service_pb2.ModelInferRequest.InferInputTensor
        e = call(model_name="decode", inputs=[tensor(name="CODES", datatype="UINT16", shape=[1, 1 << 40, G, 2])],
                 raw_input_contents=[b"\0" * 8])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in e.details()
        e = call(model_name="decode", inputs=[tensor(name="CODES", datatype="UINT16", shape=[1, G, G, 2])],
                 raw_input_contents=[b"\0" * 10])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 64" in e.details()
        e = call(model_name="encode", inputs=[tensor(name="IMAGE", datatype="BYTES", shape=[1])],
                 raw_input_contents=[struct.pack("<I", 1 << 31) + b"xx"])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "declares" in e.details()
        e = call(model_name="decode", inputs=[tensor(name="CODES", datatype="UINT16", shape=[1, G, G, 2])],
                 raw_input_contents=[b"\0" * 64, b"\0"])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        e = call(model_name="decode", inputs=[tensor(name="CODES", datatype="UINT16", shape=[1, G, G, 2],
                                                     contents=service_pb2.InferTensorContents(uint_contents=[1, 2]))])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "values for shape" in e.details()
        e = call(model_name="encode", inputs=[tensor(name="IMAGE", datatype="BYTES", shape=[1])],
                 raw_input_contents=[b"\0" * 3_000_000])  # over EVOTOK_MAX_BODY_BYTES
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # typed contents (no raw) work too
        ok = stub.ModelInfer(service_pb2.ModelInferRequest(model_name="decode", inputs=[tensor(
            name="CODES", datatype="UINT16", shape=[1, G, G, 2],
            contents=service_pb2.InferTensorContents(uint_contents=[3] * (G * G * 2)))]), timeout=10)
        assert [o.name for o in ok.outputs] == ["PNG", "PIXELS"] and len(ok.raw_output_contents) == 2


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_load_generator(fake_server: OipServer, transport: str) -> None:
    from evotok.service.oip.load import v2_load

    target = fake_server.http_target if transport == "http" else fake_server.grpc_target
    result = v2_load(target, transport, random_png(9), clients=4, duration_s=0.5, warmup=1)  # type: ignore[arg-type]
    assert result.requests > 0 and result.errors == 0 and result.images_per_s > 0
    assert 0 < result.p50_ms <= result.p95_ms


def test_grpc_standard_health_service(fake_server: OipServer) -> None:
    """``grpc.health.v1.Health`` (what Kubernetes' grpc probes and gRPC load balancers call) answers from the same
    state as /readyz and /healthz."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(fake_server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert httpx.get(f"{fake_server.url}/readyz").status_code == 200


def test_v2_requests_have_their_own_endpoint_label(fake_server: OipServer, clients: Any) -> None:
    from tests.service.server import metric_values

    def count(code: str, endpoint: str) -> float:
        text = httpx.get(f"{fake_server.url}/metrics").text
        return sum(metric_values(text, "evotok_http_requests_total", code=code, endpoint=endpoint))

    h, _g = clients
    live0 = count("200", "v2")
    bad = httpx.post(f"{fake_server.url}/v2/models/encode/infer", json={"inputs": []})
    assert 400 <= bad.status_code < 500
    bad0 = count(str(bad.status_code), "v2_infer")
    assert h.is_server_live()
    httpx.post(f"{fake_server.url}/v2/models/encode/infer", json={"inputs": []})
    assert count("200", "v2") == live0 + 1  # this test's own requests, counted under their labels
    assert count(str(bad.status_code), "v2_infer") == bad0 + 1
