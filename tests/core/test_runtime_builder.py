"""One runtime builder: the API process and the worker pass identical options to the Runtime, for every backend.

Before the core refactor the two processes built their Runtime separately; with ``EVOTOK_BACKEND=tensorrt`` the
API never passed a precision, so TensorRT ran fp16 while ``EVOTOK_PRECISION`` said fp32.
"""

from __future__ import annotations

from typing import Any

import pytest

from evotok.service.settings import Settings


class _Recorded(Exception):
    pass


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str, dict[str, Any]]]:
    calls: list[tuple[Any, str, dict[str, Any]]] = []

    def fake_load_runtime(weights: Any, backend: str, **options: Any) -> Any:
        calls.append((weights, backend, options))
        raise _Recorded

    import evotok.export.runtime

    monkeypatch.setattr(evotok.export.runtime, "load_runtime", fake_load_runtime)
    return calls


def _api_options(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, dict[str, Any]]:
    from evotok.service.app import default_runtime_factory

    calls = _capture(monkeypatch)
    with pytest.raises(_Recorded):
        default_runtime_factory(settings)()
    return calls[-1]


def _worker_options(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, dict[str, Any]]:
    from evotok.service.worker import build_runtime
    from evotok.service.worker.main import worker_settings

    calls = _capture(monkeypatch)
    with pytest.raises(_Recorded):
        build_runtime(worker_settings(settings), False, 0.0)
    return calls[-1]


@pytest.mark.parametrize("lanes", [1, 0])
@pytest.mark.parametrize(
    ("backend", "device", "precision", "threads"),
    [
        ("onnxruntime", "cpu", "fp32", 0),
        ("onnxruntime", "cpu", "fp32", 2),
        ("onnxruntime", "cuda", "fp32", 0),
        ("torch", "cpu", "fp32", 0),
        ("torch", "cuda", "bf16", 0),
        ("tensorrt", "cuda", "fp32", 0),
        ("tensorrt", "cuda", "fp16", 0),
    ],
)
def test_api_and_worker_build_the_same_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, backend: str,
                                               device: str, precision: str, threads: int, lanes: int) -> None:
    """Identical options, except the one deliberate difference: a worker is one lane, so where the API process
    runs several lanes (auto on ONNX Runtime CPU) it shares the cores out between them (threads per lane)."""
    from evotok.service.runtime_setup import planned_lanes, usable_cores

    settings = Settings(backend=backend, device=device, precision=precision, threads=threads,  # type: ignore[arg-type]
                        weights=tmp_path / "w", cache_dir=tmp_path / "cache", runtime_lanes=lanes)
    api = _api_options(settings, monkeypatch)
    worker = _worker_options(settings, monkeypatch)
    api_lanes = planned_lanes(settings)
    if api_lanes > 1 and not threads:
        assert api[2].pop("threads") == max(1, usable_cores() // api_lanes)
    assert api == worker
    if backend in ("tensorrt", "torch"):
        assert api[2].get("precision") == precision  # the TensorRT drift: fp16 ran while fp32 was asked
