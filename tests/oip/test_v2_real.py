"""The v2 models with the shipped model (``evotok serve``, ONNX Runtime CPU): the same codes as ``/encode``, the
same PNG pixels as ``/decode``, the same features as ``/embed``, over HTTP (binary and JSON) and gRPC, batched.
One module-scoped server; the first run may export the ONNX graphs (minutes on a CPU)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from PIL import Image

from evotok.paths import REPO_ROOT
from tests.oip.conftest import OipServer, png, start_oip

WEIGHTS = Path(os.environ.get("EVOTOK_TEST_WEIGHTS", str(REPO_ROOT / "weights" / "evotok-small")))
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    env = {"EVOTOK_WEIGHTS": str(WEIGHTS), "EVOTOK_BACKEND": "onnxruntime", "EVOTOK_MAX_BATCH_SIZE": "4",
           "EVOTOK_BATCH_CAP": "4", "EVOTOK_WARMUP_BATCH_SIZES": "[1]"}
    srv = start_oip(["evotok.cli", "serve"], env, tmp_path_factory.mktemp("oip-real") / "server.log", timeout=900)
    yield srv
    srv.server.stop()


def _photos() -> list[bytes]:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((24, 24, 1), np.uint8))
    return [png(smooth), png(rng.integers(0, 256, (200, 150, 3), dtype=np.uint8))]


def test_encode_decode_embed_equal_our_routes(server: OipServer) -> None:
    photos = _photos()
    with httpx.Client(base_url=server.url, timeout=300) as c:
        ref_codes = [np.array(c.post("/encode", content=p, headers={"content-type": "image/png"}).json()["codes"],
                              dtype=np.uint16) for p in photos]
        ref_png = [np.asarray(Image.open(io.BytesIO(c.post("/decode", json={"codes": k.tolist()}).content))
                              .convert("RGB")) for k in ref_codes]
        ref_feats = [np.array(c.post("/embed", json={"codes": k.tolist()}).json()["features"], dtype=np.float32)
                     for k in ref_codes]
    h = th.InferenceServerClient(server.http_target, network_timeout=300.0, connection_timeout=300.0)
    g = tg.InferenceServerClient(server.grpc_target)
    try:
        for name, client, mod, binary in (("http-binary", h, th, True), ("http-json", h, th, False),
                                          ("grpc", g, tg, True)):
            blobs = np.array(photos, dtype=np.object_)
            image = mod.InferInput("IMAGE", [len(photos)], "BYTES")
            if mod is th and not binary:
                import base64

                blobs = np.array([base64.b64encode(p) for p in photos], dtype=np.object_)
                image.set_data_from_numpy(blobs, binary_data=False)
            else:
                image.set_data_from_numpy(blobs)
            codes = client.infer("encode", [image], client_timeout=300).as_numpy("CODES") if mod is tg else \
                client.infer("encode", [image], outputs=[th.InferRequestedOutput("CODES", binary_data=binary)]
                             ).as_numpy("CODES")
            for i in range(len(photos)):
                np.testing.assert_array_equal(codes[i], ref_codes[i], err_msg=name)
            tensor = mod.InferInput("CODES", list(codes.shape), "UINT16")
            if mod is th:
                tensor.set_data_from_numpy(codes, binary_data=binary)
                r = client.infer("decode", [tensor], outputs=[th.InferRequestedOutput("PNG", binary_data=True)])
                f = client.infer("embed", [tensor], outputs=[th.InferRequestedOutput("FEATURES", binary_data=binary)])
            else:
                tensor.set_data_from_numpy(codes)
                r = client.infer("decode", [tensor], outputs=[tg.InferRequestedOutput("PNG")], client_timeout=300)
                f = client.infer("embed", [tensor], client_timeout=300)
            for i, blob in enumerate(r.as_numpy("PNG")):
                got = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
                np.testing.assert_array_equal(got, ref_png[i], err_msg=name)
            feats = f.as_numpy("FEATURES")
            for i in range(len(photos)):
                np.testing.assert_array_equal(feats[i], ref_feats[i], err_msg=name)
    finally:
        h.close()
        g.close()
