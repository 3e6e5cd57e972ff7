"""Runtime interface of the torch and onnxruntime backends (tiny model): shapes, dtypes, prefixes, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from evotok.export.onnx_export import default_export_dir, ensure_exported, read_manifest
from evotok.export.ort_runtime import OrtRuntime
from evotok.export.runtime import Runtime, load_runtime
from evotok.export.torch_runtime import TorchRuntime
from tests.export.conftest import make_weights, smooth_images


@pytest.fixture(scope="module")
def runtimes(tiny_dir: Path, tiny_export: Path) -> dict[str, Runtime]:
    return {
        "torch": TorchRuntime(tiny_dir),
        "onnxruntime": OrtRuntime(tiny_dir, export_dir=tiny_export, threads=2, warmup_batches=(1, 3)),
    }


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_shapes_and_dtypes(runtimes: dict[str, Runtime], backend: str) -> None:
    rt = runtimes[backend]
    info = rt.info
    assert (info.image_size, info.grid, info.num_depths, info.codebook_size) == (32, 4, 4, 32)
    images = smooth_images(3, 32)
    codes = rt.encode(images)
    assert codes.shape == (3, 4, 4, 4) and codes.dtype == np.uint16 and int(codes.max()) < 32
    out = rt.decode(codes)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    feats = rt.embed_codes(codes)
    assert feats.shape == (3, 16, info.semantic_dim) and feats.dtype == np.float32
    np.testing.assert_array_equal(rt.embed_images(images), feats)
    assert info.backend == backend and info.providers


def test_onnxruntime_reports_real_providers(runtimes: dict[str, Runtime]) -> None:
    assert runtimes["onnxruntime"].info.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_prefix_decode_matches_torch_prefix(runtimes: dict[str, Runtime], depth: int) -> None:
    """ORT pads a prefix with the null code; torch decodes the prefix itself: same images (within 1 level)."""
    codes = runtimes["torch"].encode(smooth_images(2, 32, seed=3))
    prefix = codes[..., :depth]
    ref = runtimes["torch"].decode(prefix).astype(int)
    got = runtimes["onnxruntime"].decode(prefix).astype(int)
    assert np.abs(ref - got).max() <= 1
    ref_f = runtimes["torch"].embed_codes(prefix)
    np.testing.assert_allclose(runtimes["onnxruntime"].embed_codes(prefix), ref_f, atol=1e-4)


def test_prefix_changes_the_image(runtimes: dict[str, Runtime]) -> None:
    rt = runtimes["onnxruntime"]
    codes = rt.encode(smooth_images(2, 32, seed=4))
    assert not np.array_equal(rt.decode(codes[..., :1]), rt.decode(codes[..., :2]))
    # depths beyond pixel_depth (2) do not change the image
    np.testing.assert_array_equal(rt.decode(codes[..., :2]), rt.decode(codes))


def test_null_code_padding_equals_prefix(runtimes: dict[str, Runtime]) -> None:
    rt = runtimes["onnxruntime"]
    codes = rt.encode(smooth_images(2, 32, seed=5)).astype(np.int64)
    padded = codes.copy()
    padded[..., 1:] = rt.info.codebook_size
    np.testing.assert_array_equal(rt.decode(padded), rt.decode(codes[..., :1]))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_invalid_inputs_raise(runtimes: dict[str, Runtime], backend: str) -> None:
    rt = runtimes[backend]
    with pytest.raises(ValueError, match="uint8"):
        rt.encode(np.zeros((1, 32, 32, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images must be"):
        rt.encode(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="code values"):
        rt.decode(np.full((1, 4, 4, 2), 33, np.int64))
    with pytest.raises(ValueError, match="codes must be"):
        rt.decode(np.zeros((1, 4, 4, 5), np.int64))
    with pytest.raises(ValueError, match="integers"):
        rt.embed_codes(np.zeros((1, 4, 4, 2), np.float32))


def test_load_runtime_backends(tiny_dir: Path, tiny_export: Path) -> None:
    rt = load_runtime(tiny_dir, "onnxruntime", export_dir=tiny_export, threads=1)
    assert isinstance(rt, OrtRuntime)
    assert isinstance(load_runtime(tiny_dir, "torch"), TorchRuntime)
    with pytest.raises(ValueError, match="unknown backend"):
        load_runtime(tiny_dir, "jax")  # type: ignore[arg-type]


def test_ensure_exported_reuses_and_refreshes(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w", "evotok-tiny")
    cache = tmp_path / "cache"
    folder = ensure_exported(weights, cache)
    assert folder == default_export_dir(weights, cache) and folder.parent == cache
    assert folder.name.startswith("evotok-tiny-")
    stamp = os.stat(folder / "manifest.json").st_mtime_ns
    assert ensure_exported(weights, cache) == folder
    assert os.stat(folder / "manifest.json").st_mtime_ns == stamp  # not re-exported
    (folder / "decoder.onnx").unlink()  # incomplete folder -> re-export
    ensure_exported(weights, cache)
    assert (folder / "decoder.onnx").is_file()
    # new weights -> new hash -> new folder
    make_weights(weights, "evotok-tiny", seed=3)
    folder2 = ensure_exported(weights, cache)
    assert folder2 != folder and read_manifest(folder2).weights_hash != read_manifest(folder).weights_hash


def test_ort_refuses_export_of_other_weights(tiny_dir: Path, tmp_path: Path) -> None:
    from evotok.export.onnx_export import export_onnx

    other = make_weights(tmp_path / "other", "evotok-tiny", seed=9)
    export_onnx(other, tmp_path / "x")
    with pytest.raises(ValueError, match="re-export"):
        OrtRuntime(tiny_dir, export_dir=tmp_path / "x")


def test_torch_bf16_autocast_keeps_shapes_and_mostly_the_codes(tiny_dir: Path) -> None:
    fp32, bf16 = TorchRuntime(tiny_dir), TorchRuntime(tiny_dir, precision="bf16")
    assert bf16.info.precision == "bf16"
    images = smooth_images(4, 32, seed=8)
    c32, c16 = fp32.encode(images), bf16.encode(images)
    assert c16.dtype == np.uint16 and c16.shape == c32.shape
    assert (c16[..., 0] == c32[..., 0]).mean() > 0.5  # bf16 encoder: close, not bit-exact (fp32 is the reference)
    assert bf16.decode(c32).dtype == np.uint8 and bf16.embed_codes(c32).dtype == np.float32
    with pytest.raises(ValueError, match="precision"):
        TorchRuntime(tiny_dir, precision="fp16")


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_codes(tiny_dir: Path, tmp_path: Path) -> None:
    from evotok.export.onnx_export import export_onnx
    from evotok.export.parity import check_export

    manifest = export_onnx(tiny_dir, tmp_path / "dyn", exporter="dynamo")
    assert manifest.exporter == "dynamo"
    report = check_export(tiny_dir, tmp_path / "dyn", threads=2)
    assert report.passed and report.code_agreement == 1.0


def test_concurrent_ensure_exported_exports_once(tmp_path: Path) -> None:
    """Two processes starting together: one exports, the other waits on the lock and reuses the folder."""
    import subprocess
    import sys

    weights = make_weights(tmp_path / "w", "evotok-tiny")
    code = ("import sys, logging; logging.basicConfig(level=logging.INFO); "
            "from evotok.export.onnx_export import ensure_exported; print(ensure_exported(sys.argv[1], sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(weights), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert sum("exporting" in err for _, err in outs) == 1
    assert read_manifest(Path(outs[0][0].strip())).weights_hash
