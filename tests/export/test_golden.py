"""Golden self-test: fixed images + fp32 reference codes beside the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from evotok.export.golden import compare_codes, load_golden, run_self_test, write_golden
from evotok.export.ort_runtime import OrtRuntime
from evotok.export.torch_runtime import TorchRuntime
from tests.export.conftest import make_weights


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_weights(tmp_path_factory.mktemp("golden"), "evotok-tiny")
    write_golden(folder)
    return folder


def test_golden_file_contents(golden_dir: Path) -> None:
    g = load_golden(golden_dir / "golden.npz")
    assert g.images.shape == (4, 32, 32, 3) and g.images.dtype == np.uint8
    assert g.codes.shape == (4, 4, 4, 4) and g.codes.dtype == np.uint16
    assert g.names == ("astronaut", "chelsea", "coffee", "rocket")
    assert len(g.weights_hash) == 64
    assert len(np.unique(g.codes)) > 4  # the photos give diverse codes


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_self_test_passes(golden_dir: Path, tmp_path: Path, backend: str) -> None:
    rt = TorchRuntime(golden_dir) if backend == "torch" else OrtRuntime(golden_dir, cache_dir=tmp_path, threads=2)
    result = rt.self_test()
    assert result.passed and result.agreement == 1.0 and result.first_mismatch_depth is None
    assert result.num_images == 4 and len(result.agreement_by_depth) == 4


def test_self_test_fails_on_changed_codes(golden_dir: Path, tmp_path: Path) -> None:
    g = load_golden(golden_dir / "golden.npz")
    codes = g.codes.copy()
    codes[0, 0, 0, 2] = (int(codes[0, 0, 0, 2]) + 1) % 32  # one token flips at depth 3
    bad = tmp_path / "golden.npz"
    np.savez(bad, images=g.images, codes=codes, names=np.array(g.names), weights_hash=np.array(g.weights_hash))
    result = run_self_test(TorchRuntime(golden_dir), bad)
    assert not result.passed and result.first_mismatch_depth == 3
    assert result.agreement == pytest.approx(1 - 1 / codes.size)
    assert run_self_test(TorchRuntime(golden_dir), bad, threshold=0.99).passed


def test_self_test_fails_for_other_weights_or_missing_file(golden_dir: Path, tmp_path: Path) -> None:
    other = make_weights(tmp_path / "other", "evotok-tiny", seed=5)
    shutil.copy(golden_dir / "golden.npz", other / "golden.npz")
    result = TorchRuntime(other).self_test()
    assert not result.passed and "belong to weights" in result.details["reason"]
    missing = TorchRuntime(other).self_test(tmp_path / "nope.npz")
    assert not missing.passed and "not found" in missing.details["reason"]


def test_compare_codes() -> None:
    a = np.zeros((2, 2, 2, 3), np.uint16)
    b = a.copy()
    b[1, 1, 1, 1] = 5
    cmp = compare_codes(b, a)
    assert cmp.by_depth == (1.0, 0.875, 1.0) and cmp.first_mismatch_depth == 2 and cmp.mismatches == 1
    with pytest.raises(ValueError):
        compare_codes(a[..., :2], a)


@pytest.mark.slow
def test_shipped_golden_self_test_onnxruntime(tmp_path: Path) -> None:
    """The service's readiness check on the shipped model: ONNX Runtime CPU reproduces the stored codes."""
    from evotok.paths import default_weights_dir

    rt = OrtRuntime(default_weights_dir(), cache_dir=tmp_path, threads=2)
    result = rt.self_test()
    assert result.passed and result.agreement == 1.0, result
