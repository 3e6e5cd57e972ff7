"""``evotok tokenize``: shards, manifests, failures, resume after interruption, rank sharding, --server mode.

The local runs use the fake runtime (shaped like the shipped model) in process; the server runs go through
the real app under uvicorn and are killed with SIGKILL mid-run, then resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evotok.client import Client
from evotok.tokenize import TokenizeConfig, list_images, tokenize
from evotok.tools.backends import LocalBackend
from tests.client.server import REPO, fake_runtime, running_server
from tests.tools.photos import BAD, GOOD, write_photo_set

SHARD, CHUNK = 5, 2  # 14 images -> 3 shards (5, 5, 4), chunks of 2


class Interrupted(Exception):
    pass


class CountingRuntime:
    """The fake runtime, counting every image it encodes."""

    def __init__(self) -> None:
        self.inner = fake_runtime()
        self.info = self.inner.info
        self.encoded = 0

    def encode(self, images: np.ndarray) -> np.ndarray:
        self.encoded += len(images)
        codes: np.ndarray = self.inner.encode(images)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        images: np.ndarray = self.inner.decode(codes)
        return images

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    root = tmp_path_factory.mktemp("photos")
    return root, write_photo_set(root)


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished run (partial chunks must be gone)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert not any(name.startswith(".partial") for name in files), sorted(files)
    return files


def run_local(dataset: Path, out: Path, **kw: Any) -> tuple[Any, CountingRuntime]:
    rt = CountingRuntime()
    on_chunk = kw.pop("on_chunk", None)
    cfg = TokenizeConfig(dataset, out, shard_size=SHARD, chunk_size=CHUNK, progress=False, **kw)
    return tokenize(cfg, LocalBackend(rt), on_chunk=on_chunk), rt


def refused(root: Path) -> dict[str, str]:
    """{file: error code} of the files the one imaging rule refuses (its rules, e.g. for alpha, may change)."""
    from evotok.imaging import ImageError, prepare_image

    out = {}
    for name in list_images(root):
        try:
            prepare_image((root / name).read_bytes(), 256, "center-crop", 40_000_000)
        except ImageError as exc:
            out[name] = exc.code
    return out


def test_listing_is_sorted_and_filtered(dataset: tuple[Path, dict[str, tuple[int, int]]]) -> None:
    root, _ = dataset
    names = list_images(root)
    assert names == sorted([*GOOD, *BAD])
    assert "README.txt" not in names


def test_shards_and_manifests(dataset: tuple[Path, dict[str, tuple[int, int]]], tmp_path: Path) -> None:
    root, sizes = dataset
    report, rt = run_local(root, tmp_path / "out")
    out = tmp_path / "out"
    assert report.shards_written == [0, 1, 2] and report.manifest_written
    bad = refused(root)
    assert bad.get("broken/truncated.jpg") == "invalid_image"  # a truncated JPEG is always refused
    assert rt.encoded == 14 - len(bad) and report.failures == len(bad)
    top = json.loads((out / "manifest.json").read_text())
    assert top["num_samples"] == 14 and top["num_images"] == 14 - len(bad) and top["num_failures"] == len(bad)
    assert top["model"]["name"] == "fake" and top["model"]["weights_hash"] == "0" * 64
    assert {f["source"]: f["code"] for f in top["failures"]} == bad
    runtime = fake_runtime()
    from evotok.imaging import prepare_image

    seen = []
    for entry in top["shards"]:
        man = json.loads((out / entry["manifest"]).read_text())
        data = (out / man["codes_file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == man["codes_sha256"] == entry["codes_sha256"]
        codes = np.load(out / man["codes_file"], allow_pickle=False)
        assert codes.dtype == np.uint16 and list(codes.shape) == man["codes_shape"]
        assert codes.shape[1:] == (16, 16, 16) and codes.shape[0] == len(man["images"])
        assert man["preprocessing"]["resize"] == "center-crop" and man["preprocessing"]["image_size"] == 256
        for img in man["images"]:
            assert img["key"] == img["source"].rsplit(".", 1)[0]
            assert img["source"] not in sizes or tuple(img["size"]) == sizes[img["source"]]
            pixels = prepare_image((root / img["source"]).read_bytes(), 256, "center-crop", 40_000_000)
            np.testing.assert_array_equal(codes[img["row"]], runtime.encode(pixels[None])[0])
            seen.append(img["source"])
        seen += [f["source"] for f in man["failures"]]
    assert sorted(seen) == list_images(root) and len(seen) == len(set(seen))  # every file exactly once
    assert not (out / ".partial").exists()


@pytest.mark.parametrize("stop_after", [2, 6, 10])  # inside shard 0, inside shard 1, at a shard boundary
def test_interrupted_then_resumed_is_byte_identical(
    dataset: tuple[Path, dict[str, tuple[int, int]]], tmp_path: Path, stop_after: int
) -> None:
    root, _ = dataset
    run_local(root, tmp_path / "straight")

    first_run: list[int] = []

    def stop(shard: int, done: int) -> None:
        if done >= stop_after:
            first_run.append(done)
            raise Interrupted

    with pytest.raises(Interrupted):
        run_local(root, tmp_path / "resumed", on_chunk=stop)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    report, rt = run_local(root, tmp_path / "resumed")
    assert report.manifest_written
    # nothing done twice, nothing skipped: the resumed run sends exactly the files the first run had not
    done_first = first_run[0]
    assert done_first - stop_after < CHUNK
    assert report.samples_processed + done_first == 14
    # the files are processed in plan order: the resumed run's runtime saw exactly the readable rest
    bad = refused(root)
    assert rt.encoded == len([n for n in list_images(root)[done_first:] if n not in bad])
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "straight")


def test_rank_sharding_matches_single_process(
    dataset: tuple[Path, dict[str, tuple[int, int]]], tmp_path: Path
) -> None:
    root, _ = dataset
    run_local(root, tmp_path / "one")
    r1, _ = run_local(root, tmp_path / "two", rank=1, world_size=2)
    assert r1.shards_written == [1] and not r1.manifest_written  # shards 0 and 2 belong to rank 0
    r0, _ = run_local(root, tmp_path / "two", rank=0, world_size=2)
    assert r0.shards_written == [0, 2] and r0.manifest_written
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    again, rt = run_local(root, tmp_path / "two")  # a finished run is a no-op
    assert again.shards_written == [] and rt.encoded == 0


def test_resume_refuses_a_different_run(
    dataset: tuple[Path, dict[str, tuple[int, int]]], tmp_path: Path
) -> None:
    root, _ = dataset
    run_local(root, tmp_path / "out")
    with pytest.raises(ValueError, match="different run"):
        tokenize(
            TokenizeConfig(root, tmp_path / "out", shard_size=4, chunk_size=CHUNK, progress=False),
            LocalBackend(CountingRuntime()),
        )


def _cli(root: Path, out: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "evotok.cli",
        "tokenize",
        str(root),
        "--out",
        str(out),
        "--server",
        url,
        "--shard-size",
        str(SHARD),
        "--chunk-size",
        str(CHUNK),
        "--concurrency",
        "4",
        "--no-progress",
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_server_mode_killed_and_resumed(
    dataset: tuple[Path, dict[str, tuple[int, int]]], tmp_path: Path
) -> None:
    root, _ = dataset
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a slow fake runtime (0.25 s per batch) so the kill lands mid-run
    with running_server(tmp_path, env={"EVOTOK_TEST_DELAY_S": "0.25"}) as server:
        straight = subprocess.run(
            _cli(root, tmp_path / "straight", server.url),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert straight.returncode == 0, straight.stderr
        assert "manifest.json written" in straight.stdout

        killed = tmp_path / "killed"
        proc = subprocess.Popen(
            _cli(root, killed, server.url), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and len(list(killed.rglob("chunk-*.json"))) + len(list(killed.glob("shard-*.json"))) * 3 < 4
        ):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not (killed / "manifest.json").exists(), "the run finished before the kill"
        resumed = subprocess.run(
            _cli(root, killed, server.url), env=env, capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr
        assert snapshot(killed) == snapshot(tmp_path / "straight")

        # two ranks at once, as torchrun starts them (RANK / WORLD_SIZE), into one folder
        ranks = [
            subprocess.Popen(
                _cli(root, tmp_path / "ranks", server.url),
                env={**env, "RANK": str(r), "WORLD_SIZE": "2"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(2)
        ]
        outs = [p.communicate(timeout=300) for p in ranks]
        assert [p.returncode for p in ranks] == [0, 0], outs
        assert outs[0][0].startswith(f"server {server.url} (rank 0/2):") and "wrote 2 shards" in outs[0][0]
        assert outs[1][0].startswith(f"server {server.url} (rank 1/2):") and "wrote 1 shards" in outs[1][0]
        assert snapshot(tmp_path / "ranks") == snapshot(tmp_path / "straight")

        # the server's shards equal the in-process run's codes, and decode back through the client
        run_local(root, tmp_path / "local")
        with Client(server.url) as client:
            for shard in sorted(killed.glob("shard-*.json")):
                man = json.loads(shard.read_text())
                codes = np.load(killed / man["codes_file"], allow_pickle=False)
                local = np.load(tmp_path / "local" / man["codes_file"], allow_pickle=False)
                np.testing.assert_array_equal(codes, local)
                for img in man["images"]:
                    direct = client.encode(root / img["source"]).codes
                    np.testing.assert_array_equal(codes[img["row"]], direct)
                    png = client.decode(codes[img["row"]])
                    assert png.image().size == (256, 256)
                    assert png.png == client.decode(direct).png


def write_broken_set(root: Path) -> None:
    """Broken files (and a few good ones in less common containers) for the failure-code comparison."""
    import io

    import skimage.data
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(skimage.data.chelsea())
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    (root / "garbage.png").write_bytes(bytes(range(256)) * 8)  # no known container
    (root / "truncated.png").write_bytes(buf.getvalue()[:2000])  # a PNG cut short
    (root / "notes.jpg").write_text("a text file named .jpg\n")
    ico = io.BytesIO()
    photo.resize((32, 32)).save(ico, format="ICO")
    (root / "icon.png").write_bytes(ico.getvalue())  # a known container the server does not take (415)
    photo.save(root / "good-bmp.bmp", format="BMP")
    photo.save(root / "good-tiff.tif", format="TIFF")
    photo.save(root / "good-gif.gif", format="GIF")


def failure_codes(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["source"]: f["code"] for f in manifest["failures"]}


@pytest.mark.e2e
def test_same_failure_codes_locally_and_with_server(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    write_broken_set(root)
    run_local(root, tmp_path / "local")
    local = failure_codes(tmp_path / "local")
    assert local == {"garbage.png": "invalid_image", "truncated.png": "invalid_image",
                     "notes.jpg": "invalid_image", "icon.png": "unsupported_media_type"}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with running_server(tmp_path) as server:
        res = subprocess.run(_cli(root, tmp_path / "server", server.url), env=env, capture_output=True,
                             text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert failure_codes(tmp_path / "server") == local
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith(f"server {server.url} (local): 3 images, 4 failures"), line
