"""``evotok export`` end to end on the tiny model (in process and as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evotok.export.cli import main
from evotok.export.onnx_export import read_manifest


def test_export_check_writes_parity(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    assert main(["--weights", str(tiny_dir), "--out", str(out), "--check", "--threads", "2"]) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout[: stdout.rindex("}") + 1])["parity"]["passed"] is True
    m = read_manifest(out)
    assert m.parity is not None and m.parity["onnxruntime-cpu"]["code_agreement"] == 1.0
    stamp = (out / "encoder.onnx").stat().st_mtime_ns
    assert main(["--weights", str(tiny_dir), "--out", str(out)]) == 0  # current: reused
    assert (out / "encoder.onnx").stat().st_mtime_ns == stamp


def test_trt_without_tensorrt_exports_variants_then_fails_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "evotok.cli", "export", "--weights", str(tiny_dir), "--out", str(out), "--trt"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert "TensorRT is not usable here" in proc.stderr
    assert (out / "decoder.fp16.onnx").is_file() and not (out / "quantizer.fp16.onnx").exists()
