"""The wheel serves: ``pip wheel`` the working tree, install ``<wheel>[cpu]`` into a fresh venv (no torch), run
``evotok serve`` from an empty folder, encode a JPEG and decode its codes over HTTP. The install size is printed
and held to 400 MB (docs/install.md). The same venv then shows the two other doors of an install: an export
that needs torch stops with one line naming the extra (exit 2), and ``evotok bench`` runs from the package.

pip reaches its index and cache as configured on the machine (the cache keeps a rerun to about a minute).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from evotok.paths import REPO_ROOT
from tests.service.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LIMIT_MB = 400
# what `pip wheel` reads (pyproject.toml maps model/, export/, service/, bench/ and weights/ into `evotok`)
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "constraints-cpu.txt", "evotok", "model", "export",
           "service", "bench", "weights/evotok-small")
SHIPPED = REPO_ROOT / "weights" / "evotok-small"


@dataclass
class Install:
    root: Path
    venv: Path
    wheel: Path
    size_mb: float

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self) -> dict[str, str]:
        """A bare environment: no EVOTOK_* settings, a private home and cache, no checkout on any path."""
        home = self.root / "home"
        return {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(home),
                "XDG_CACHE_HOME": str(home / ".cache"), "LANG": "C.UTF-8"}


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res  # type: ignore[no-any-return]


def _size_mb(folder: Path) -> float:
    """Disk use of ``folder`` in MiB (``du -s``: allocated blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in [".", *files]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 2**20


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    t0 = time.perf_counter()
    for rel in SOURCES:  # a copy: the build writes build/ and *.egg-info beside the sources
        path = REPO_ROOT / rel
        if path.is_dir():
            shutil.copytree(path, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(dist)], 300)
    (wheel,) = dist.glob("evotok_serve-*.whl")
    t_build = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[cpu]"], 600)
    t_install = time.perf_counter()
    install = Install(root, venv, wheel, _size_mb(venv))
    print(f"\nwheel {wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB (built in {t_build - t0:.0f} s); "
          f"`pip install '<wheel>[cpu]'` into a new venv: {install.size_mb:.0f} MiB "
          f"(installed in {t_install - t_build:.0f} s)")
    return install


def test_install_has_no_torch_and_fits(installed: Install) -> None:
    res = subprocess.run([installed.bin("python"), "-c", "import torch"], capture_output=True, text=True,
                         check=False, env=installed.env(), timeout=60)
    assert res.returncode != 0 and "No module named 'torch'" in res.stderr
    assert installed.size_mb <= LIMIT_MB, f"[cpu] install is {installed.size_mb:.0f} MiB > {LIMIT_MB}"


@pytest.fixture
def server(installed: Install) -> Iterator[tuple[str, Path]]:
    """``evotok serve`` of the installed package, started in an empty folder; stopped by PID."""
    cwd = installed.root / "empty"
    cwd.mkdir(exist_ok=True)
    port = free_port()
    log_path = installed.root / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([installed.bin("evotok"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=installed.env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 150
        while True:
            if proc.poll() is not None:
                pytest.fail(f"evotok serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"not ready after 150 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield url, log_path
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_installed_serve_encodes_and_decodes(installed: Install, server: tuple[str, Path]) -> None:
    url, log_path = server
    card = json.loads((SHIPPED / "config.json").read_text())
    with httpx.Client(base_url=url, timeout=60) as c:
        info = c.get("/info").json()
        assert info["name"] == "evotok-small" and info["weights_hash"] == card["hash"]
        assert info["backend"] == "onnxruntime"
        r = c.post("/encode", content=_jpeg(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        codes = np.array(r.json()["codes"])
        assert codes.shape == (info["grid"], info["grid"], info["num_depths"])
        assert codes.min() >= 0 and codes.max() <= info["codebook_size"] and len(np.unique(codes)) > 16
        d = c.post("/decode", json={"codes": codes.tolist()})
        assert d.status_code == 200 and d.headers["content-type"] == "image/png", d.text
        png = Image.open(io.BytesIO(d.content))
        assert png.size == (info["image_size"], info["image_size"]) and png.mode == "RGB"
        assert float(np.asarray(png).std()) > 10  # a picture, not a flat field
    # the engines were read from the package, and nothing was exported or written to a cache
    log = log_path.read_text()
    assert "_shipped/evotok-small/onnx" in log, log[-3000:]
    assert not (installed.root / "home" / ".cache" / "evotok").exists()
    assert not any((installed.root / "empty").iterdir())


def test_export_without_torch_is_one_clear_error(installed: Install, tmp_path: Path) -> None:
    """Weights without engines: the export they need is refused in one line naming the extra, exit 2."""
    weights = tmp_path / "my-model"
    weights.mkdir()
    for name in ("config.json", "model.safetensors", "golden.npz"):
        shutil.copy2(SHIPPED / name, weights / name)
    res = subprocess.run([installed.bin("evotok"), "serve", "--port", str(free_port()), "--weights", str(weights)],
                         cwd=tmp_path, env=installed.env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "evotok-serve[cpu,torch]" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_bench_runs_from_the_install(installed: Install, tmp_path: Path) -> None:
    env = installed.env()
    listing = subprocess.run([installed.bin("evotok"), "bench", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0 and "service" in listing.stdout
    res = subprocess.run([installed.bin("evotok"), "bench", "service", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "usage: evotok bench service" in res.stdout, res.stdout + res.stderr
    # a benchmark that needs torch says which extra brings it
    torch_bench = subprocess.run([installed.bin("evotok"), "bench", "runtime"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
    assert torch_bench.returncode == 2 and "evotok-serve[cpu,torch]" in torch_bench.stderr, torch_bench.stderr
