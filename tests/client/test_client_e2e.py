"""Client against the real app under uvicorn (fake runtime shaped like the shipped model).

Expected codes/images are computed independently: the service's documented preprocessing
(``evotok.service.imaging.prepare_image``) followed by the same deterministic runtime in this process.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from evotok.client import AsyncClient, Client, EvoTokError, RetryPolicy
from evotok.service.imaging import prepare_image
from tests.client.server import FAKE_SHAPE, Server, fake_runtime, running_server

pytestmark = pytest.mark.e2e


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


PHOTOS = {
    "astronaut": skimage.data.astronaut(),
    "chelsea": skimage.data.chelsea(),
    "coffee": skimage.data.coffee(),
}


def expected_codes(data: bytes) -> np.ndarray:
    pixels = prepare_image(data, FAKE_SHAPE["image_size"], "center-crop", 40_000_000)
    codes: np.ndarray = fake_runtime().encode(pixels[None])[0]
    return codes


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, retry=RetryPolicy(max_retries=1, base_delay_s=0.01)) as c:
        yield c


def test_info_and_health(client: Client) -> None:
    info = client.info()
    assert (info.image_size, info.grid, info.num_depths, info.pixel_depth) == (256, 16, 16, 4)
    assert len(info.semantic_by_depth) == 16
    assert client.healthz().ok and client.readyz().ok
    assert client.readyz().body["ready"] is True


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_encode_matches_runtime(client: Client, name: str) -> None:
    data = jpeg(PHOTOS[name])
    res = client.encode(data)
    assert res.codes.dtype == np.uint16 and res.codes.shape == (16, 16, 16)
    np.testing.assert_array_equal(res.codes, expected_codes(data))
    assert res.model is not None and res.model.name == "fake" and res.depth == 16
    assert res.latency_s > 0


def test_input_kinds_npy_json_and_depth_agree(client: Client, tmp_path: Path) -> None:
    arr = PHOTOS["chelsea"]
    path = tmp_path / "chelsea.png"
    Image.fromarray(arr).save(path)
    by_path = client.encode(path).codes
    np.testing.assert_array_equal(by_path, client.encode(arr).codes)  # array -> PNG, lossless
    np.testing.assert_array_equal(by_path, client.encode(Image.open(path)).codes)
    np.testing.assert_array_equal(by_path, client.encode(str(path), fmt="npy").codes)
    four = client.encode(path, depth=4)
    assert four.codes.shape == (16, 16, 4) and four.depth == 4
    np.testing.assert_array_equal(four.codes, by_path[..., :4])


def test_encode_many_equals_singles(client: Client) -> None:
    blobs = [jpeg(PHOTOS[n]) for n in sorted(PHOTOS)]
    for fmt in ("json", "npy"):
        batch = client.encode_many(blobs, depth=8, fmt=fmt)
        assert batch.batched and batch.codes.shape == (3, 16, 16, 8)
        for i, data in enumerate(blobs):
            np.testing.assert_array_equal(batch.codes[i], expected_codes(data)[..., :8])


def test_decode_roundtrip(client: Client) -> None:
    codes = client.encode(jpeg(PHOTOS["astronaut"])).codes
    runtime = fake_runtime()
    for d in (1, 4, 16):
        for fmt in ("npy", "json"):
            out = client.decode(codes[..., :d], fmt=fmt)
            assert out.image().size == (256, 256)
            np.testing.assert_array_equal(out.array(), runtime.decode(codes[None, ..., :d])[0])


def test_embed_image_and_codes(client: Client) -> None:
    data = jpeg(PHOTOS["coffee"])
    codes = expected_codes(data)
    runtime = fake_runtime()
    want = runtime.embed_codes(codes[None])[0]
    from_image = client.embed(data)
    from_codes = client.embed(codes=codes, fmt="npy")
    assert from_image.features.shape == (256, 16) and from_image.features.dtype == np.float32
    np.testing.assert_allclose(from_image.features, want, rtol=1e-6)
    np.testing.assert_allclose(from_codes.features, want, rtol=1e-6)
    with pytest.raises(ValueError):
        client.embed()


def test_errors_are_typed(client: Client) -> None:
    with pytest.raises(EvoTokError) as bad_image:
        client.encode(b"\x89PNG\r\n\x1a\n truncated")
    assert (bad_image.value.status, bad_image.value.code) == (422, "invalid_image")
    with pytest.raises(EvoTokError) as bad_depth:
        client.encode(PHOTOS["chelsea"], depth=17)
    assert bad_depth.value.status == 422
    with pytest.raises(EvoTokError) as bad_codes:
        client.decode(np.full((16, 16, 4), 5000, np.uint16))  # K = 4096
    assert (bad_codes.value.status, bad_codes.value.code) == (422, "invalid_codes")
    with pytest.raises(EvoTokError) as icon:  # a container that is sniffed but not served (GIF is served now)
        client.encode(b"\x00\x00\x01\x00" + b"\x00" * 30)
    assert (icon.value.status, icon.value.code) == (415, "unsupported_media_type")


def test_async_client_concurrent(server: Server) -> None:
    blobs = [
        jpeg(np.ascontiguousarray(PHOTOS[n][::-1] if i % 2 else PHOTOS[n]))
        for i in range(4)
        for n in sorted(PHOTOS)
    ]

    async def main() -> list[np.ndarray]:
        async with AsyncClient(server.url, max_concurrency=6) as c:
            assert (await c.readyz()).ok and (await c.info()).grid == 16
            results = await asyncio.gather(*(c.encode(b, fmt="npy") for b in blobs))
            decoded = await c.decode(results[0].codes)
            assert decoded.image().size == (256, 256)
            return [r.codes for r in results]

    codes = asyncio.run(main())
    for data, got in zip(blobs, codes, strict=True):
        np.testing.assert_array_equal(got, expected_codes(data))


def test_api_key_bearer(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"EVOTOK_API_KEYS": '["s3cret"]'}) as s:
        with Client(s.url) as anon, pytest.raises(EvoTokError) as missing:
            anon.info()
        assert (missing.value.status, missing.value.code) == (401, "unauthorized")
        with Client(s.url, api_key="wrong") as wrong, pytest.raises(EvoTokError) as bad:
            wrong.encode(PHOTOS["chelsea"])
        assert (bad.value.status, bad.value.code) == (403, "forbidden")
        with Client(s.url, api_key="s3cret") as ok:
            assert ok.encode(PHOTOS["chelsea"]).codes.shape == (16, 16, 16)
