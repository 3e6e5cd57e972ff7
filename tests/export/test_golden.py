"""Golden self-test: fixed images + fp32 reference codes beside the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from evotok.export.golden import TIE_TOLERANCE, compare_codes, load_golden, run_self_test, write_golden
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


def test_golden_margins_are_the_reference_gaps(golden_dir: Path) -> None:
    g = load_golden(golden_dir / "golden.npz")
    assert g.margins is not None and g.margins.shape == g.codes.shape and g.margins.dtype == np.float32
    assert (g.margins >= 0).all() and np.median(g.margins) > 10 * TIE_TOLERANCE


def test_near_ties_are_not_counted_and_other_differences_are() -> None:
    """A position whose first differing depth is an fp32 near-tie of the reference is excused from that depth
    on (the deeper codes follow from the choice); a difference where the reference was decided still fails."""
    ref = np.zeros((1, 2, 2, 4), np.uint16)
    margins = np.full(ref.shape, 0.5, np.float32)
    margins[0, 0, 0, 1] = TIE_TOLERANCE / 10  # the two nearest codes at depth 2 of position (0, 0) are a tie
    codes = ref.copy()
    codes[0, 0, 0, 1:] = 7  # the other code of the tie, and every deeper code with it
    tie = compare_codes(codes, ref, margins)
    assert tie.agreement == 1.0 and tie.mismatches == 0 and tie.near_ties == 1 and tie.first_mismatch_depth is None
    exact = compare_codes(codes, ref)  # without margins: exact
    assert exact.mismatches == 3 and exact.first_mismatch_depth == 2
    codes[0, 1, 1, 2] = 3  # a decided code differs elsewhere
    both = compare_codes(codes, ref, margins)
    assert both.mismatches == 1 and both.near_ties == 1 and both.first_mismatch_depth == 3 and both.agreement < 1
    codes = ref.copy()
    codes[0, 0, 0, 0] = 7  # depth 1 at the same position is decided (margin 0.5): counted
    assert compare_codes(codes, ref, margins).mismatches == 1
