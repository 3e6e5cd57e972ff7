"""The web page in a real headless Chromium (Debian ``chromium``, driven by Playwright) against the real app
under uvicorn: upload a photo, wait for the reconstructions, check every view renders, download the codes and
PNG and compare them with what the API returns. Saves a screenshot to artifacts/web/ (and to docs/img/web.png with EVOTOK_UPDATE_DOCS_SCREENSHOT=1).

Runtime: the fake runtime shaped like the shipped model by default; ``EVOTOK_TEST_RUNTIME=real`` serves the
shipped weights instead (used to make the README screenshot).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image

from evotok.client import Client
from tests.client.server import REPO, Server, running_server

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = REPO / "artifacts" / "web"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runtime = os.environ.get("EVOTOK_TEST_RUNTIME", "fake")
    with running_server(tmp_path_factory.mktemp("uvicorn"), runtime=runtime, timeout_s=600) as s:
        yield s


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=92)  # 451x300: exercises the centre crop
    return path


PIXEL_STATS = """(el) => {
  const c = document.createElement('canvas');
  const w = el.naturalWidth || el.width, h = el.naturalHeight || el.height;
  c.width = w; c.height = h;
  const ctx = c.getContext('2d');
  ctx.drawImage(el, 0, 0);
  const d = ctx.getImageData(0, 0, w, h).data;
  let n = 0, s = 0, s2 = 0, opaque = 0;
  for (let i = 0; i < d.length; i += 4) {
    const v = (d[i] + d[i + 1] + d[i + 2]) / 3; n++; s += v; s2 += v * v; if (d[i + 3] === 255) opaque++;
  }
  const mean = s / n;
  return {w, h, mean, std: Math.sqrt(Math.max(s2 / n - mean * mean, 0)), opaque: opaque / n};
}"""

BLOB_B64 = """async (el) => {
  const buf = new Uint8Array(await (await fetch(el.src)).arrayBuffer());
  let s = ''; for (const b of buf) s += String.fromCharCode(b);
  return btoa(s);
}"""


def assert_rendered(stats: dict[str, float], size: int) -> None:
    assert (stats["w"], stats["h"]) == (size, size), stats
    assert stats["opaque"] == 1.0 and stats["std"] > 1.0, f"blank or transparent: {stats}"


def test_page_end_to_end(server: Server, photo: Path, browser: Any, tmp_path: Path) -> None:
    with Client(server.url) as client:
        info = client.info()
        api_codes = client.encode(photo).codes  # (h, w, D)
        api_pngs = {d: client.decode(api_codes[..., :d]).png for d in range(1, info.pixel_depth + 1)}
    size, grid = info.image_size, info.grid

    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('depths')", timeout=30_000)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#status[data-state='done']", timeout=120_000)
    assert not errors, errors

    # original (centre crop at model size), reconstruction at the pixel depth, one per prefix depth
    assert_rendered(page.eval_on_selector("#original", PIXEL_STATS), size)
    assert_rendered(page.eval_on_selector("#recon", PIXEL_STATS), size)
    recon = base64.b64decode(page.eval_on_selector("#recon", BLOB_B64))
    assert recon == api_pngs[info.pixel_depth]
    prefixes = page.query_selector_all("#prefixes img")
    assert [p.get_attribute("data-depth") for p in prefixes] == [
        str(d) for d in range(1, info.pixel_depth + 1)
    ]
    for img in prefixes:
        assert_rendered(img.evaluate(PIXEL_STATS), size)
        d = int(img.get_attribute("data-depth"))
        assert base64.b64decode(img.evaluate(BLOB_B64)) == api_pngs[d]

    # colour map per depth: D canvases of grid x grid cells, coloured from the API's codes
    grids = page.query_selector_all("#grids canvas")
    assert len(grids) == info.num_depths
    for c in grids:
        stats = c.evaluate(PIXEL_STATS)
        assert (stats["w"], stats["h"]) == (grid, grid) and stats["opaque"] == 1.0
    distinct = page.evaluate("""() => [...document.querySelectorAll('#grids canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const s = new Set();
        for (let i = 0; i < d.length; i += 4) s.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]); return s.size; })""")
    want_distinct = [len(np.unique(api_codes[..., k])) for k in range(info.num_depths)]
    assert distinct == want_distinct  # one colour per distinct index

    # semantic curve from /info and the latency table
    points = page.get_attribute("#curve polyline", "points") or ""
    assert len(points.split()) == len(info.semantic_by_depth) > 0
    latency = page.inner_text("#latency")
    assert "encode" in latency and f"decode d={info.pixel_depth}" in latency and "ms" in latency

    # downloads equal the API's answers
    with page.expect_download() as dl:
        page.click("#dl-npy")
    npy = np.load(io.BytesIO(Path(dl.value.path()).read_bytes()), allow_pickle=False)
    assert npy.dtype == np.uint16
    np.testing.assert_array_equal(npy, api_codes)
    with page.expect_download() as dl:
        page.click("#dl-json")
    body = json.loads(Path(dl.value.path()).read_text())
    np.testing.assert_array_equal(np.asarray(body["codes"], np.uint16), api_codes)
    with page.expect_download() as dl:
        page.click("#dl-png")
    assert Path(dl.value.path()).read_bytes() == api_pngs[info.pixel_depth]
    assert dl.value.suggested_filename == "chelsea.recon.png"
    assert not errors, errors

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"page-{info.name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    if os.environ.get("EVOTOK_UPDATE_DOCS_SCREENSHOT") == "1":  # refresh the README picture on purpose only
        docs_img = REPO / "docs" / "img" / "web.png"
        docs_img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, docs_img)
    page.close()


def test_page_shows_api_errors(server: Server, browser: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('depths')", timeout=30_000)
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status[data-state='error']", timeout=30_000)
    assert "invalid_image" in page.inner_text("#status")
    page.close()


SAMPLE = REPO / "service" / "static" / "sample.jpg"
FORMATS = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff", "image/avif",
           "image/heic")


def test_sample_photo_and_legend(server: Server, browser: Any) -> None:
    """One click on "try the sample" encodes the built-in photo (shipped, < 100 KB) and shows every view; the
    legend under the code maps says what they are, with this model's numbers; the picker takes every format."""
    assert SAMPLE.stat().st_size < 100_000
    with Client(server.url) as client:
        info = client.info()
        api_codes = client.encode(SAMPLE).codes
        api_png = client.decode(api_codes[..., : info.pixel_depth]).png

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('depths')", timeout=30_000)
    accept = page.get_attribute("#file", "accept") or ""
    assert all(t in accept.split(",") for t in FORMATS), accept
    assert page.is_visible("#sample") and "sample" in page.inner_text("#sample").lower()

    page.click("#sample")
    page.wait_for_selector("#status[data-state='done']", timeout=120_000)
    assert "sample.jpg" in page.inner_text("#status")
    assert_rendered(page.eval_on_selector("#original", PIXEL_STATS), info.image_size)
    assert base64.b64decode(page.eval_on_selector("#recon", BLOB_B64)) == api_png
    assert len(page.query_selector_all("#grids canvas")) == info.num_depths

    legend = page.inner_text("#grids-legend")
    assert page.is_visible("#grids-legend")
    for words in ("codebook index", "patch", "depth", "arbitrary",
                  f"{info.grid}×{info.grid} tokens", f"{info.num_depths} depths", f"{info.codebook_size} codes"):
        assert words in legend, (words, legend)
    # the legend sits under the code maps
    grids_box, legend_box = page.query_selector("#grids").bounding_box(), page.query_selector("#grids-legend").bounding_box()
    assert grids_box and legend_box and legend_box["y"] >= grids_box["y"] + grids_box["height"] - 1
    assert not errors, errors
    page.close()


def test_format_the_browser_cannot_preview(server: Server, browser: Any, tmp_path: Path) -> None:
    """A TIFF (which Chromium cannot decode) is still encoded by the server; the preview says so."""
    path = tmp_path / "chelsea.tif"
    Image.fromarray(skimage.data.chelsea()).save(path, format="TIFF")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('depths')", timeout=30_000)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#status[data-state='done']", timeout=120_000)
    assert "chelsea.tif" in page.inner_text("#status")
    assert not errors, errors
    page.close()
