"""The shipped model's ONNX export travels with it (weights/evotok-small/onnx/, in the wheel as
evotok/_shipped/evotok-small/onnx/): it is current for the weights, read in place and never when stale; paths
resolve env, else checkout, else package; a needed export without torch is one clear error (exit 2)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import stat
import tomllib
from pathlib import Path

import pytest

from evotok import paths
from evotok.export import onnx_export
from evotok.export.onnx_export import (
    ExporterUnavailableError,
    bundled_export,
    default_export_dir,
    ensure_exported,
    export_onnx,
    read_manifest,
)
from evotok.paths import REPO_ROOT

SHIPPED = REPO_ROOT / "weights" / "evotok-small"


def test_committed_export_is_current_for_the_shipped_weights() -> None:
    """Fails after new weights until scripts/ship_engines.sh has re-exported them."""
    card = json.loads((SHIPPED / "config.json").read_text())
    assert bundled_export(SHIPPED, card["hash"]) == SHIPPED / "onnx", "run scripts/ship_engines.sh"
    manifest = read_manifest(SHIPPED / "onnx")
    assert manifest.parity is not None and all(r["passed"] for r in manifest.parity.values())
    assert not any(e.variants for e in manifest.graphs.values())  # fp32 only: half variants are GPU-side
    size_mb = sum(p.stat().st_size for p in (SHIPPED / "onnx").iterdir()) / 2**20
    assert size_mb < 30, f"the committed export is {size_mb:.1f} MiB"


def test_package_data_covers_the_model_folder() -> None:
    """Every file of the shipped model folder is matched by [tool.setuptools.package-data] (and MANIFEST.in)."""
    cfg = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["evotok._shipped"] == "weights" and "evotok._shipped" in cfg["packages"]
    assert cfg["package-dir"]["evotok.benchmarks"] == "bench" and "evotok.benchmarks" in cfg["packages"]
    patterns = cfg["package-data"]["evotok._shipped"]
    manifest_in = (REPO_ROOT / "MANIFEST.in").read_text()
    for path in SHIPPED.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(SHIPPED.parent).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in the wheel"
            assert any(fnmatch.fnmatch(f"weights/{rel}", p) for line in manifest_in.splitlines()
                       if line.startswith("include ") for p in line.split()[1:]), f"{rel} is not in the sdist"


def test_paths_env_else_checkout_else_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("EVOTOK_WEIGHTS", "EVOTOK_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.in_checkout()
    assert paths.default_weights_dir() == SHIPPED
    assert paths.default_cache_dir() == REPO_ROOT / ".cache" / "evotok"
    # installed layout: the package in site-packages, the model inside it
    site = tmp_path / "site-packages"
    packaged = site / "evotok" / "_shipped" / "evotok-small"
    packaged.mkdir(parents=True)
    (packaged / "config.json").write_text("{}")
    monkeypatch.setattr(paths, "REPO_ROOT", site)
    monkeypatch.setattr(paths, "PACKAGED_WEIGHTS", packaged)
    assert not paths.in_checkout()
    assert paths.default_weights_dir() == packaged
    assert paths.default_cache_dir() == tmp_path / "xdg" / "evotok"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.default_cache_dir() == Path.home() / ".cache" / "evotok"
    monkeypatch.setenv("EVOTOK_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("EVOTOK_CACHE_DIR", str(tmp_path / "c"))
    assert paths.default_weights_dir() == tmp_path / "w" and paths.default_cache_dir() == tmp_path / "c"


def _read_only(folder: Path) -> None:
    for p in [*folder.iterdir(), folder]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(folder: Path) -> None:
    for p in [folder, *folder.iterdir()]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_bundled_export_is_read_in_place_and_never_when_stale(tiny_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    export_onnx(weights, weights / "onnx")
    _read_only(weights / "onnx")  # as in a root-owned site-packages
    cache = tmp_path / "cache"
    assert ensure_exported(weights, cache) == weights / "onnx"
    assert not cache.exists()  # nothing exported, nothing written
    _writable(weights / "onnx")
    # a graph that no longer matches its manifest: ignored, exported into the cache instead
    with (weights / "onnx" / "decoder.onnx").open("ab") as f:
        f.write(b"\0")
    assert ensure_exported(weights, cache) == default_export_dir(weights, cache)
    # an export of other weights (stale after retraining): ignored
    shutil.rmtree(cache)
    export_onnx(weights, weights / "onnx")
    manifest = json.loads((weights / "onnx" / "manifest.json").read_text())
    manifest["weights_hash"] = "0" * 64
    (weights / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    assert ensure_exported(weights, cache) == default_export_dir(weights, cache)


def test_needed_export_without_torch_is_one_clear_error(tiny_weights: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from evotok.service.cli import ensure_engines

    real_find_spec = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    with pytest.raises(ExporterUnavailableError, match=r"evotok-serve\[cpu,torch\]"):
        ensure_exported(tiny_weights, tmp_path / "cache")
    with pytest.raises(SystemExit) as exc:
        ensure_engines(tiny_weights, tmp_path / "cache")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'evotok-serve[cpu,torch]'" in err
    assert "constraints-cpu.txt" in err and "download.pytorch.org/whl/cpu" in err
    assert not (tmp_path / "cache").exists()


def test_bench_scripts_from_checkout_else_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from evotok import bench

    assert bench.bench_dir() == REPO_ROOT / "bench"
    monkeypatch.setattr(bench, "in_checkout", lambda: False)
    assert bench.bench_dir() == paths.PACKAGE_DIR / "benchmarks"
