"""``evotok encode`` / ``evotok decode``: round trips through a real server (subprocess CLI) and in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evotok.client import Client
from evotok.tools.backends import LocalBackend
from evotok.tools.codes_cli import load_codes, run_decode, run_encode
from tests.client.server import REPO, Server, fake_runtime, running_server
from tests.tools.photos import write_photo_set


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photo_set(root)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("uvicorn")) as s:
        yield s


def evotok(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evotok.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


@pytest.mark.e2e
def test_server_roundtrip_npy_and_json(photos: Path, server: Server, tmp_path: Path) -> None:
    a, b = photos / "people/astronaut.jpg", photos / "food/coffee.webp"
    npy, js = tmp_path / "codes.npy", tmp_path / "codes.json"
    r = evotok("encode", str(a), str(b), "-o", str(npy), "--server", server.url)
    assert r.returncode == 0, r.stderr
    r = evotok("encode", str(a), "-o", str(js), "--depth", "4", "--server", server.url)
    assert r.returncode == 0, r.stderr
    with Client(server.url) as client:
        want = client.encode_many([a, b]).codes
        batch = np.load(npy, allow_pickle=False)
        assert batch.dtype == np.uint16 and batch.shape == (2, 16, 16, 16)
        np.testing.assert_array_equal(batch, want)
        body = json.loads(js.read_text())
        assert body["shape"] == [16, 16, 4] and body["depth"] == 4 and body["sources"] == [str(a)]
        assert body["model"]["name"] == "fake"
        np.testing.assert_array_equal(load_codes(js).codes, want[0, ..., :4])

        out = tmp_path / "out.png"
        r = evotok("decode", str(js), "-o", str(out), "--server", server.url)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == client.decode(want[0, ..., :4]).png
        r = evotok("decode", str(npy), "-o", str(out), "--depth", "2", "--server", server.url)
        assert r.returncode == 0, r.stderr
        for i in range(2):
            png = tmp_path / f"out-{i}.png"
            assert Image.open(png).size == (256, 256)
            assert png.read_bytes() == client.decode(want[i, ..., :2]).png


def test_local_mode_equals_server(photos: Path, server: Server, tmp_path: Path) -> None:
    """The in-process path (same preprocessing, same runtime) gives the server's codes and pixels."""
    images = [photos / "animals/cats/chelsea.png", photos / "grey/moon.jpg"]
    backend = LocalBackend(fake_runtime())
    f = run_encode(images, tmp_path / "c.npy", backend, depth=None)
    with Client(server.url) as client:
        np.testing.assert_array_equal(f.codes, client.encode_many(images).codes)
        paths = run_decode(tmp_path / "c.npy", tmp_path / "x.png", backend, depth=4)  # a batch of 2
        assert [p.name for p in paths] == ["x-0.png", "x-1.png"]
        for p, codes in zip(paths, f.codes, strict=True):
            served = client.decode(codes[..., :4]).array()
            np.testing.assert_array_equal(np.asarray(Image.open(p).convert("RGB")), served)


@pytest.mark.e2e
def test_unreadable_image_fails_cleanly(photos: Path, server: Server, tmp_path: Path) -> None:
    out = tmp_path / "codes.npy"
    r = evotok(
        "encode",
        str(photos / "people/astronaut.jpg"),
        str(photos / "broken/truncated.jpg"),
        "-o",
        str(out),
        "--server",
        server.url,
    )
    assert r.returncode == 1 and "invalid_image" in r.stderr and "truncated.jpg" in r.stderr
    assert not out.exists()
    r = evotok(
        "encode",
        str(photos / "people/astronaut.jpg"),
        "-o",
        str(tmp_path / "codes.txt"),
        "--server",
        server.url,
    )
    assert r.returncode == 2 and ".npy or .json" in r.stderr
    r = evotok("decode", str(tmp_path / "missing.npy"), "-o", str(tmp_path / "o.png"), "--server", server.url)
    assert r.returncode == 1


@pytest.mark.slow
def test_local_mode_with_the_shipped_model(photos: Path, tmp_path: Path) -> None:
    """``evotok encode/decode`` without --server: ``load_runtime`` in process (torch backend, shipped weights)."""
    photo = photos / "animals/cats/chelsea.png"
    codes, out = tmp_path / "c.npy", tmp_path / "r.png"
    r = evotok("encode", str(photo), "-o", str(codes), "--backend", "torch")
    assert r.returncode == 0, r.stderr
    arr = np.load(codes, allow_pickle=False)
    assert arr.dtype == np.uint16 and arr.shape == (16, 16, 16)
    r = evotok("decode", str(codes), "-o", str(out), "--backend", "torch")
    assert r.returncode == 0, r.stderr
    recon = np.asarray(Image.open(out).convert("RGB"))
    assert recon.shape == (256, 256, 3) and recon.std() > 0
    # reconstruction quality is the model's business (tests/model, evotok eval); here: the CLI wiring
