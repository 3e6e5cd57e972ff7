"""Happy paths of every endpoint over a FakeRuntime: shapes, dtypes, forms, agreement between forms."""

from __future__ import annotations

import io
import json
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from evotok.export.fake import FakeRuntime
from evotok.service.imaging import fit_to_model, load_image
from tests.service.conftest import png_bytes
from tests.service.fakes import ServiceFakeRuntime

NPY = {"accept": "application/x-npy"}


def _reference_codes(data: bytes, mode: str = "center-crop") -> np.ndarray:
    ref = FakeRuntime()
    return ref.encode(fit_to_model(load_image(data, 10**8), ref.info.image_size, mode)[None])[0]  # type: ignore[arg-type]


def test_encode_json_matches_runtime(client: TestClient) -> None:
    data = png_bytes((100, 70), seed=3)
    r = client.post("/encode", files={"image": ("a.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [4, 4, 4] and body["depth"] == 4
    assert body["model"] == {"name": "fake", "weights_hash": "0" * 64}
    np.testing.assert_array_equal(np.array(body["codes"]), _reference_codes(data))


def test_encode_npy_and_json_agree_and_depth(client: TestClient) -> None:
    data = png_bytes((64, 64), seed=5, fmt="JPEG")
    j = client.post("/encode?depth=2", content=data, headers={"content-type": "image/jpeg"}).json()
    n = client.post("/encode?depth=2", content=data, headers={"content-type": "image/jpeg", **NPY})
    assert n.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(n.content), allow_pickle=False)
    assert arr.dtype == np.uint16 and arr.shape == (4, 4, 2)
    np.testing.assert_array_equal(arr, np.array(j["codes"]))
    np.testing.assert_array_equal(arr, _reference_codes(data)[..., :2])


def test_encode_batch_form(client: TestClient) -> None:
    blobs = [png_bytes((64, 64), seed=s) for s in range(3)]
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    j = client.post("/encode", files=files)
    assert j.status_code == 200
    items = j.json()
    assert isinstance(items, list) and len(items) == 3
    n = client.post("/encode", files=files, headers=NPY)
    arr = np.load(io.BytesIO(n.content), allow_pickle=False)
    assert arr.shape == (3, 4, 4, 4) and arr.dtype == np.uint16
    for i, b in enumerate(blobs):
        np.testing.assert_array_equal(arr[i], np.array(items[i]["codes"]))
        np.testing.assert_array_equal(arr[i], _reference_codes(b))


def test_encode_webp_gray_palette_and_resize_modes(client: TestClient) -> None:
    for data, ctype in [(png_bytes(fmt="WEBP", lossless=True), "image/webp"), (png_bytes(mode="L"), "image/png")]:
        assert client.post("/encode", content=data, headers={"content-type": ctype}).status_code == 200
    pal = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).convert("P").save(pal, format="PNG")
    assert client.post("/encode", content=pal.getvalue(), headers={"content-type": "image/png"}).status_code == 200
    wide = png_bytes((160, 64), seed=9)
    crop = client.post("/encode", content=wide, headers={"content-type": "image/png"}).json()["codes"]
    stretch = client.post("/encode?resize=stretch", content=wide, headers={"content-type": "image/png"}).json()["codes"]
    np.testing.assert_array_equal(np.array(stretch), _reference_codes(wide, "stretch"))
    assert crop != stretch


def test_decode_json_and_npy(client: TestClient) -> None:
    codes = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.uint16)
    a = client.post("/decode", json={"codes": codes.tolist()})
    buf = io.BytesIO()
    np.save(buf, codes)
    b = client.post("/decode", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert a.status_code == b.status_code == 200
    assert a.headers["content-type"] == "image/png"
    img_a = np.asarray(Image.open(io.BytesIO(a.content)))
    assert img_a.shape == (64, 64, 3) and img_a.dtype == np.uint8
    np.testing.assert_array_equal(img_a, np.asarray(Image.open(io.BytesIO(b.content))))
    np.testing.assert_array_equal(img_a, FakeRuntime().decode(codes[None])[0])
    null = client.post("/decode", json={"codes": np.full((4, 4, 1), 256).tolist()})  # K = null code
    assert null.status_code == 200


def test_embed_from_image_and_codes(client: TestClient) -> None:
    data = png_bytes(seed=1)
    img_feats = client.post("/embed", content=data, headers={"content-type": "image/png"}).json()
    assert img_feats["shape"] == [16, 8] and img_feats["source"] == "image"
    codes = client.post("/encode", content=data, headers={"content-type": "image/png"}).json()["codes"]
    code_feats = client.post("/embed", json={"codes": codes}).json()
    np.testing.assert_allclose(np.array(img_feats["features"]), np.array(code_feats["features"]), rtol=1e-6)
    half = client.post("/embed?dtype=float16", json={"codes": codes}, headers=NPY)
    arr = np.load(io.BytesIO(half.content), allow_pickle=False)
    assert arr.dtype == np.float16 and arr.shape == (16, 8)
    np.testing.assert_allclose(arr, np.array(code_feats["features"]), rtol=1e-3)


def test_info_health_ready_metrics_openapi(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["grid"] == 4 and info["num_depths"] == 4 and info["queue"] == "inprocess"
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["self_test_agreement"] == 1.0
    client.post("/encode", content=png_bytes(), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    for name in ("evotok_http_requests_total", "evotok_http_request_duration_seconds_bucket",
                 "evotok_batch_size_bucket", "evotok_queue_wait_seconds_bucket", "evotok_stage_duration_seconds",
                 "evotok_code_agreement_ratio", "evotok_build_info", "evotok_http_requests_in_flight",
                 "evotok_queue_entries", "evotok_queue_oldest_age_seconds", "evotok_batch_fill_ratio_bucket"):
        assert name in text, name
    schema = client.get("/openapi.json").json()
    enc = schema["paths"]["/encode"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg", "image/webp"} <= set(enc["requestBody"]["content"])
    for status in ("413", "415", "422", "429", "503", "504"):
        assert status in enc["responses"], status
        assert "example" in enc["responses"][status]["content"]["application/json"]
    assert "ErrorResponse" in schema["components"]["schemas"]
    json.dumps(schema)


def test_not_ready_while_self_test_fails(app_client) -> None:  # type: ignore[no-untyped-def]
    c = app_client(runtime=ServiceFakeRuntime(corrupt=5), ready=False)
    import time

    for _ in range(200):
        if "self-test" in c.get("/readyz").text:
            break
        time.sleep(0.01)
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert "self-test failed" in r.json()["error"]["message"]
    assert r.headers["retry-after"]
    enc = c.post("/encode", content=png_bytes(), headers={"content-type": "image/png"})
    assert enc.status_code == 503
    assert c.get("/healthz").status_code == 200


def test_backend_error_is_500_and_loop_survives(app_client) -> None:  # type: ignore[no-untyped-def]
    rt = ServiceFakeRuntime()
    c = app_client(runtime=rt)
    rt.fail_on = "encode"
    r = c.post("/encode", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "backend_error"
    assert "injected" not in r.text
    rt.fail_on = None
    assert c.post("/encode", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_unexpected_exception_is_500_json(client: TestClient) -> None:
    app = client.app

    @app.get("/boom")  # type: ignore[attr-defined,misc]
    async def boom() -> None:
        raise KeyError("secret internals")

    r = client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal server error; the event was logged",
                                  "status": 500, "request_id": "boom-1"}}
    assert r.headers["x-request-id"] == "boom-1"


def test_api_keys(app_client) -> None:  # type: ignore[no-untyped-def]
    c = app_client(api_keys=["s3cret", "other"])
    data = png_bytes()
    missing = c.post("/encode", content=data, headers={"content-type": "image/png"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = c.post("/encode", content=data, headers={"content-type": "image/png", "authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    basic = c.get("/info", headers={"authorization": "Basic czNjcmV0"})
    assert basic.status_code == 401
    ok = c.post("/encode", content=data, headers={"content-type": "image/png", "authorization": "Bearer other"})
    assert ok.status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
    assert c.get("/readyz").status_code == 200


def test_chunked_oversize_body_is_413(client: TestClient) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(30):
            yield b"\x00" * 100_000

    r = client.post("/encode", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_drain_on_shutdown_closes_runtime(app_client) -> None:  # type: ignore[no-untyped-def]
    rt = ServiceFakeRuntime()
    c = app_client(runtime=rt)
    assert c.post("/encode", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
    c.__exit__(None, None, None)
    assert rt.closed


def test_overload_429_and_deadline_504_over_http(app_client) -> None:  # type: ignore[no-untyped-def]
    """Admission refuses at once (429 + Retry-After) what its predicted wait cannot serve before the deadline;
    a request admitted on a good prediction whose runtime then runs slow gets 504 at its deadline."""
    from concurrent.futures import ThreadPoolExecutor

    rt = ServiceFakeRuntime(delay_s=0.3)
    c = app_client(runtime=rt, max_queue_size=2, max_batch_size=1, request_timeout_s=0.8)  # 2 batches fit
    data = png_bytes()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(c.post, "/encode", content=data, headers={"content-type": "image/png"})
                   for _ in range(8)]
        responses = [f.result() for f in futures]
    codes = sorted(r.status_code for r in responses)
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
    rt.delay_s = 2.0  # slower than every estimate: admitted (predicted 0.3 s), then past its deadline
    t0 = time.monotonic()
    r = c.post("/encode", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - t0 < 1.6  # at the 0.8 s deadline, not after the 2 s batch
    assert c.get("/healthz").status_code == 200


def test_batch_form_larger_than_the_queue_is_429(app_client) -> None:  # type: ignore[no-untyped-def]
    rt = ServiceFakeRuntime()
    c = app_client(runtime=rt, max_queue_size=2, max_queue_delay_ms=50.0)
    files = [("images", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
    runs_before = len(rt.batch_sizes)  # warm-up batches
    r = c.post("/encode", files=files)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    time.sleep(0.1)
    assert len(rt.batch_sizes) == runs_before  # the two admitted siblings were cancelled before their batch formed
    assert c.post("/encode", files=files[:2]).status_code == 200


def test_client_timeout_header_shortens_the_deadline(app_client) -> None:  # type: ignore[no-untyped-def]
    c = app_client(runtime=ServiceFakeRuntime(delay_s=0.3), request_timeout_s=10.0)
    headers = {"content-type": "image/png"}
    t0 = time.monotonic()
    r = c.post("/encode", content=png_bytes(), headers={**headers, "x-request-timeout-ms": "100"})
    assert r.status_code == 504 and time.monotonic() - t0 < 0.3
    assert c.post("/encode", content=png_bytes(), headers={**headers, "x-request-timeout-ms": "5000"}).status_code == 200


def test_hang_up_while_sending_the_body_counts_as_a_disconnect(client: TestClient) -> None:
    """A client gone before its body was read: counted like any disconnect, 499, not a logged 500."""
    from tests.service.server import metric_values

    def disconnects() -> float:
        return sum(metric_values(client.get("/metrics").text, "evotok_client_disconnects_total", endpoint="encode"))

    def errors_500() -> float:
        return sum(metric_values(client.get("/metrics").text, "evotok_http_requests_total", code="500"))

    before = disconnects()
    before_500 = errors_500()  # the registry is process-wide: other tests may already have counted 500s
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/encode", "raw_path": b"/encode", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"image/png"), (b"content-length", b"1000")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    assert client.portal is not None
    client.portal.call(call)
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert disconnects() == before + 1
    assert errors_500() == before_500


def test_info_reports_the_runtime_lanes(app_client) -> None:  # type: ignore[no-untyped-def]
    """A runtime that does not allow concurrent calls runs one lane, whatever the auto rule would give."""
    info = app_client().get("/info").json()
    assert info["runtime_lanes"] == 1
