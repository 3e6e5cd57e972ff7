"""Export to ONNX, run in ONNX Runtime CPU, compare with PyTorch fp32: codes identical, pixels and features close."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from evotok.export.onnx_export import MANIFEST_FILE, export_onnx, read_manifest
from evotok.export.parity import check_export
from evotok.paths import default_weights_dir


def _assert_parity(weights: Path, export: Path) -> None:
    report = check_export(weights, export, threads=2)
    assert report.code_agreement == 1.0, report
    assert report.first_mismatch_depth is None
    assert report.pixel_max_abs <= 2 and report.prefix1_pixel_max_abs <= 2
    assert report.semantic_cosine_min > 0.9999
    assert report.passed
    stored = read_manifest(export).parity
    assert stored is not None and stored["onnxruntime-cpu"]["code_agreement"] == 1.0


def test_manifest_describes_graphs(tiny_dir: Path, tiny_export: Path) -> None:
    m = json.loads((tiny_export / MANIFEST_FILE).read_text())
    card = json.loads((tiny_dir / "config.json").read_text())
    assert m["weights_hash"] == card["hash"] and m["model_name"] == "evotok-tiny"
    assert set(m["graphs"]) == {"encoder", "quantizer", "decoder", "semantic_decoder"}
    assert m["graphs"]["encoder"]["inputs"][0] == {"name": "images", "shape": ["batch", 32, 32, 3],
                                                   "dtype": "uint8", "range": [0, 255]}
    assert m["graphs"]["decoder"]["inputs"][0]["shape"] == ["batch", 4, 4, 2]
    assert m["graphs"]["quantizer"]["outputs"][0]["dtype"] == "int64"
    assert {"torch", "onnx", "onnxruntime"} <= set(m["versions"])
    for name, g in m["graphs"].items():
        model = onnx.load(str(tiny_export / g["file"]))
        onnx.checker.check_model(model)
        assert not list(tiny_export.glob("*.data")), "must be single-file ONNX"
        dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert dim0.dim_param == "batch", name  # named dynamic batch axis


def test_tiny_parity_onnxruntime_cpu(tiny_dir: Path, tiny_export: Path) -> None:
    _assert_parity(tiny_dir, tiny_export)


def test_parity_detects_a_wrong_graph(tiny_dir: Path, tiny_export: Path, tmp_path: Path) -> None:
    """A quantizer exported from other codebooks must fail the check (the check can fail)."""
    import shutil

    from tests.export.conftest import make_weights

    other = make_weights(tmp_path / "other", "evotok-tiny", seed=7)
    other_export = export_onnx(other, tmp_path / "other-x")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    shutil.copy(tmp_path / "other-x" / "quantizer.onnx", bad / "quantizer.onnx")
    assert other_export.graphs["quantizer"].sha256 != read_manifest(bad).graphs["quantizer"].sha256
    report = check_export(tiny_dir, bad, threads=2, record=False)
    assert not report.passed and report.code_agreement < 0.5 and report.first_mismatch_depth == 1


@pytest.mark.slow
def test_small_parity_onnxruntime_cpu(small_dir: Path, tmp_path: Path) -> None:
    manifest = export_onnx(small_dir, tmp_path / "small")
    assert manifest.export_seconds < 120  # `evotok export` must finish in 2 minutes
    _assert_parity(small_dir, tmp_path / "small")


@pytest.mark.slow
def test_shipped_model_parity(tmp_path: Path) -> None:
    weights = default_weights_dir()
    export_onnx(weights, tmp_path / "shipped")
    _assert_parity(weights, tmp_path / "shipped")
    assert np.isfinite(read_manifest(tmp_path / "shipped").export_seconds)
