"""Provider choice and refusal: never trust the available-provider list, check what the session got."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evotok.export.ort_runtime import OrtRuntime, ProviderUnavailableError, provider_list, verify_providers


class FakeSession:
    """A session that, like ORT without a GPU, silently fell back to CPU (or really got what it asked)."""

    def __init__(self, path: str, providers: list[Any], honour: bool) -> None:
        self.path = path
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self._got = [*names, "CPUExecutionProvider"] if honour else ["CPUExecutionProvider"]

    def get_providers(self) -> list[str]:
        return list(dict.fromkeys(self._got))

    def get_inputs(self) -> list[Any]:
        class _In:
            name = "x"

        return [_In()]


def _factory(honour: bool, calls: list[Any]) -> Any:
    def make(path: str, options: Any, providers: list[Any]) -> FakeSession:
        calls.append((Path(path).name, providers, options))
        return FakeSession(path, providers, honour)

    return make


def test_refuses_when_cuda_did_not_load(tiny_dir: Path, tiny_export: Path) -> None:
    calls: list[Any] = []
    with pytest.raises(ProviderUnavailableError, match=r"\['cuda'\] did not load.*CPUExecutionProvider"):
        OrtRuntime(tiny_dir, providers=("cuda",), export_dir=tiny_export, session_factory=_factory(False, calls))
    assert calls and calls[0][1] == [("CUDAExecutionProvider", {"use_tf32": "0"})]


def test_accepts_and_reports_real_providers(tiny_dir: Path, tiny_export: Path) -> None:
    calls: list[Any] = []
    rt = OrtRuntime(tiny_dir, providers=("cuda", "cpu"), export_dir=tiny_export, threads=3,
                    session_factory=_factory(True, calls))
    assert rt.info.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert len(calls) == 4
    opts = calls[0][2]
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1


def test_real_onnxruntime_cuda_request_is_refused_without_gpu(tiny_dir: Path, tiny_export: Path) -> None:
    """The real ORT (CPU build here) has no CUDA provider: the runtime must refuse, not fall back."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build lists CUDA; covered by the fake-session test")
    with pytest.raises(ProviderUnavailableError):
        OrtRuntime(tiny_dir, providers=("cuda",), export_dir=tiny_export)


def test_tensorrt_provider_options_keep_quantizer_fp32(tmp_path: Path) -> None:
    enc = provider_list(("tensorrt", "cuda"), "encoder", precision="fp16", engine_dir=tmp_path)
    quant = provider_list(("tensorrt", "cuda"), "quantizer", precision="fp16", engine_dir=tmp_path)
    assert enc[0][0] == "TensorrtExecutionProvider" and enc[0][1]["trt_fp16_enable"] is True
    assert quant[0][1]["trt_fp16_enable"] is False
    assert enc[0][1]["trt_engine_cache_path"] == str(tmp_path / "encoder") and enc[1] == ("CUDAExecutionProvider", {"use_tf32": "0"})


def test_provider_validation(tiny_dir: Path, tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        provider_list(("rocm",), "encoder", precision="fp32", engine_dir=None)
    with pytest.raises(ValueError, match="at least one"):
        provider_list((), "encoder", precision="fp32", engine_dir=None)
    with pytest.raises(ValueError, match="fp16"):
        OrtRuntime(tiny_dir, providers=("cpu",), precision="fp16", export_dir=tiny_export)
    verify_providers(("cpu",), ["CPUExecutionProvider"], "encoder")
    with pytest.raises(ProviderUnavailableError, match="tensorrt"):
        verify_providers(("tensorrt", "cuda"), ["CUDAExecutionProvider", "CPUExecutionProvider"], "decoder")
