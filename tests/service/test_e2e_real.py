"""End to end with the shipped model: a real ``evotok serve`` (ONNX Runtime CPU, in-process batching).

Runs when ``weights/evotok-small/`` (model.safetensors, config.json, golden.npz) and the ONNX Runtime backend
exist; until then each test is skipped with that reason. The first run exports the ONNX graphs into the
engine cache (``evotok serve`` does it when they are missing), which can take minutes on a CPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from evotok.paths import REPO_ROOT
from evotok.service.imaging import fit_to_model
from tests.service.server import Server, metric_values, start_server

# EVOTOK_TEST_WEIGHTS points the tests at another model folder (e.g. a freshly initialised one)
WEIGHTS = Path(os.environ.get("EVOTOK_TEST_WEIGHTS", str(REPO_ROOT / "weights" / "evotok-small")))
# the weights ship in the repository: a missing file is a failure, not a skip
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"astronaut": data.astronaut(), "chelsea": data.chelsea()}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the cap fixed at 8: on a 2-core CPU the auto cap is usually 1 (batching does not pay), and this module
    # checks that batches of the real runtime form and answer correctly
    env = {"EVOTOK_WEIGHTS": str(WEIGHTS), "EVOTOK_BACKEND": "onnxruntime", "EVOTOK_MAX_BATCH_SIZE": "8",
           "EVOTOK_BATCH_CAP": "8", "EVOTOK_MAX_QUEUE_DELAY_MS": "10", "EVOTOK_WARMUP_BATCH_SIZES": "[1, 8]"}
    srv = start_server(["evotok.cli", "serve"], env, tmp_path_factory.mktemp("real") / "server.log")
    try:
        srv.wait_ready(timeout=900)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def runtimes(server: Server) -> dict[str, Any]:
    """The Python runtimes on the same weights: ONNX Runtime (what the server runs) and torch (the model)."""
    from evotok.export.runtime import load_runtime

    return {"ort": load_runtime(WEIGHTS, "onnxruntime"), "torch": load_runtime(WEIGHTS, "torch")}


def test_codes_equal_python_runtime_and_forms_agree(server: Server, runtimes: dict[str, Any]) -> None:
    ort = runtimes["ort"]
    size = ort.info.image_size
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, photo in _photos().items():
            crop = fit_to_model(Image.fromarray(photo), size, "center-crop")
            body = _png(photo)
            j = c.post("/encode", content=body, headers={"content-type": "image/png"})
            assert j.status_code == 200, j.text
            http_codes = np.array(j.json()["codes"])
            n = c.post("/encode", files={"image": (f"{name}.png", body, "image/png")},
                       headers={"accept": "application/x-npy"})
            npy = np.load(io.BytesIO(n.content), allow_pickle=False)
            assert npy.dtype == np.uint16 and npy.shape == (ort.info.grid, ort.info.grid, ort.info.num_depths)
            np.testing.assert_array_equal(npy, http_codes)
            np.testing.assert_array_equal(npy, ort.encode(crop[None])[0])
            torch_codes = runtimes["torch"].encode(crop[None])[0]
            assert float((torch_codes == npy).mean()) >= 0.99, name


def test_round_trip_psnr_matches_python_runtime(server: Server, runtimes: dict[str, Any]) -> None:
    model = runtimes["torch"]
    size = model.info.image_size
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, photo in _photos().items():
            crop = fit_to_model(Image.fromarray(photo), size, "center-crop")
            codes = c.post("/encode", content=_png(photo), headers={"content-type": "image/png"}).json()["codes"]
            r = c.post("/decode", json={"codes": codes})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            served = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
            reference = model.decode(model.encode(crop[None]))[0]
            p_http, p_ref = psnr(served, crop), psnr(reference, crop)
            assert abs(p_http - p_ref) <= 0.5, (name, p_http, p_ref)


def test_concurrent_requests_are_batched(server: Server) -> None:
    body = _png(_photos()["chelsea"])

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            rs = await asyncio.gather(*(client.post("/encode", content=body, headers={"content-type": "image/png"})
                                        for _ in range(24)))
            return [r.status_code for r in rs]

    assert set(asyncio.run(burst())) == {200}
    text = httpx.get(f"{server.url}/metrics").text
    count = metric_values(text, "evotok_batch_size_count", op="encode")[0]
    le1 = metric_values(text, "evotok_batch_size_bucket", op="encode", le="1.0")[0]
    assert le1 < count  # at least one batch held more than one image
    info = httpx.get(f"{server.url}/info").json()
    card = json.loads((WEIGHTS / "config.json").read_text())
    assert info["backend"] == "onnxruntime" and info["weights_hash"] == card["hash"]
    assert info["batch_cap"] == "8" and info["batch_caps"]["encode"]["cap"] == 8
    agreement = metric_values(text, "evotok_code_agreement_ratio")
    assert agreement and min(agreement) == 1.0


def test_batch_form_matches_single_requests(server: Server) -> None:
    photos = _photos()
    with httpx.Client(base_url=server.url, timeout=120) as c:
        files = [("images", (f"{k}.png", _png(v), "image/png")) for k, v in photos.items()]
        batch = np.load(io.BytesIO(c.post("/encode", files=files, headers={"accept": "application/x-npy"}).content))
        for i, photo in enumerate(photos.values()):
            single = c.post("/encode", content=_png(photo), headers={"content-type": "image/png",
                                                                      "accept": "application/x-npy"})
            np.testing.assert_array_equal(batch[i], np.load(io.BytesIO(single.content)))
