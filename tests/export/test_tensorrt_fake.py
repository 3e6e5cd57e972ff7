"""TensorRT pure-Python parts against a fake ``tensorrt`` module (TensorRT cannot be installed here)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from evotok.export import tensorrt as T
from evotok.export.onnx_export import export_onnx, read_manifest


class FakeTRT(types.ModuleType):
    """Records what the builder was asked to do; ``build_serialized_network`` returns fake bytes."""

    def __init__(self, parse_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.8.0"
        self.calls: list[tuple[str, Any]] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                fake.calls.append(("logger", level))

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class BuilderFlag:
            TF32 = "tf32"

        class Profile:
            def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
                fake.calls.append(("set_shape", (name, mn, opt, mx)))

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return b"cache:" + self.data

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("pool", (pool, size)))

            def set_flag(self, flag: Any) -> None:  # a strongly typed build must never call this
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag: Any) -> None:
                fake.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data: bytes) -> Cache:
                fake.calls.append(("timing_cache_in", data))
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                self.cache = cache

            def get_timing_cache(self) -> Cache:
                return self.cache

            def add_optimization_profile(self, p: Profile) -> None:
                fake.calls.append(("add_profile", p))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> str:
                fake.calls.append(("network_flags", flags))
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes:
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: str, logger: Logger) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                fake.calls.append(("parse", len(data)))
                return parse_ok

            def get_error(self, i: int) -> str:
                return "unsupported op Foo"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType
        self.BuilderFlag = BuilderFlag


DEVICE = T.DeviceIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.8.0")


@pytest.fixture(scope="module")
def trt_export(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "x"
    export_onnx(tiny_dir, out, half_precision=("fp16",))
    return out


def test_import_is_lazy_and_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "tensorrt" not in sys.modules or isinstance(sys.modules["tensorrt"], FakeTRT)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like on this machine
    with pytest.raises(T.TensorRTUnavailableError, match="trt` extra"):
        T.import_tensorrt()


def test_profiles() -> None:
    profiles = T.make_profiles()
    assert profiles == (T.BatchProfile(1, 4, 4), T.BatchProfile(5, 16, 16), T.BatchProfile(17, 64, 64))
    assert [T.select_profile(profiles, b) for b in (1, 4, 5, 8, 16, 17, 64)] == [0, 0, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="outside"):
        T.select_profile(profiles, 65)
    for bad in ([(2, 4)], [(1, 4), (6, 8)], [(1, 4), (5, 3)], []):
        with pytest.raises(ValueError):
            T.make_profiles(bad)
    assert T.profile_shapes(["batch", 16, 16, 32], T.BatchProfile(5, 16, 16)) == (
        (5, 16, 16, 32), (16, 16, 16, 32), (16, 16, 16, 32))
    with pytest.raises(ValueError):
        T.profile_shapes([8, 16, 16, 32], profiles[0])


def test_engine_dir_key() -> None:
    name = T.engine_dir_name(DEVICE, "fp16", "ab" * 32)
    assert name == "nvidia-h100-80gb-hbm3-sm90-trt10.8.0-fp16-abababababab"
    assert T.onnx_set_hash(["a", "b"]) == T.onnx_set_hash(["b", "a"]) != T.onnx_set_hash(["a", "c"])


def _meta(**changes: Any) -> T.EngineMeta:
    base = dict(graph="encoder", gpu_name=DEVICE.gpu_name, compute_capability="9.0", trt_version="10.8.0",
                precision="fp16", onnx_file="encoder.fp16.onnx", onnx_sha256="s" * 64, input_name="images",
                input_shape=["batch", 32, 32, 3], profiles=[[1, 4, 4]])
    base.update(changes)
    return T.EngineMeta(**base)  # type: ignore[arg-type]


def test_check_engine_refusals() -> None:
    T.check_engine(_meta(), DEVICE, "s" * 64, "fp16")
    cases = {
        "GPU model": _meta(gpu_name="NVIDIA A100-SXM4-80GB"),
        "compute capability": _meta(compute_capability="8.0"),
        "TensorRT version": _meta(trt_version="10.7.0"),
        "ONNX sha256": _meta(onnx_sha256="t" * 64),
        "precision": _meta(precision="bf16"),
    }
    for what, meta in cases.items():
        with pytest.raises(T.EngineMismatchError, match=f"{what}.*evotok export --trt"):
            T.check_engine(meta, DEVICE, "s" * 64, "fp16")
    # the quantizer is fp32 whatever the requested precision
    T.check_engine(_meta(graph="quantizer", precision="fp32"), DEVICE, "s" * 64, "fp16")
    with pytest.raises(T.EngineMismatchError):
        T.check_engine(_meta(graph="quantizer", precision="fp16"), DEVICE, "s" * 64, "fp16")


def test_build_engines_with_fake_trt(trt_export: Path) -> None:
    fake = FakeTRT()
    folder = T.build_engines(trt_export, "fp16", ((1, 2), (3, 8)), device=DEVICE, trt=fake)
    assert folder.parent == trt_export / "trt" and folder.name.startswith("nvidia-h100-80gb-hbm3-sm90-trt10.8.0-fp16-")
    flags = [c[1] for c in fake.calls if c[0] == "network_flags"]
    assert flags == [1 << 5] * 4  # strongly typed, every graph
    assert not [c for c in fake.calls if c[0] == "set_flag"]  # no FP16 builder flag: types come from ONNX
    assert [c[1] for c in fake.calls if c[0] == "clear_flag"] == ["tf32"] * 4  # fp32 stays fp32 (no TF32)
    shapes = [c[1] for c in fake.calls if c[0] == "set_shape"]
    assert ("images", (1, 32, 32, 3), (2, 32, 32, 3), (2, 32, 32, 3)) in shapes
    assert ("codes", (3, 4, 4, 2), (8, 4, 4, 2), (8, 4, 4, 2)) in shapes  # decoder, pixel depth 2
    assert len(shapes) == 8  # 2 profiles x 4 graphs
    caches = [c[1] for c in fake.calls if c[0] == "timing_cache_in"]
    assert caches[0] == b"" and caches[1].startswith(b"cache:")  # loaded after the first build
    for g in ("encoder", "quantizer", "decoder", "semantic_decoder"):
        assert (folder / f"{g}.engine").read_bytes() == b"ENGINE"
        meta = json.loads((folder / f"{g}.engine.json").read_text())
        assert meta["profiles"] == [[1, 2, 2], [3, 8, 8]]
        assert meta["precision"] == ("fp32" if g == "quantizer" else "fp16")
        assert meta["onnx_file"] == ("quantizer.onnx" if g == "quantizer" else f"{g}.fp16.onnx")
    # a second build with the same key reuses the engines
    fake2 = FakeTRT()
    assert T.build_engines(trt_export, "fp16", ((1, 2), (3, 8)), device=DEVICE, trt=fake2) == folder
    assert not [c for c in fake2.calls if c[0] == "parse"]
    # another GPU gets another folder
    other = T.DeviceIdentity("NVIDIA A100-SXM4-80GB", "8.0", "10.8.0")
    assert T.build_engines(trt_export, "fp16", device=other, trt=FakeTRT()) != folder


def test_fp32_engines_use_the_fp32_graphs(tiny_export: Path) -> None:
    folder = T.build_engines(tiny_export, "fp32", device=DEVICE, trt=FakeTRT())
    assert "-fp32-" in folder.name
    for g in ("encoder", "quantizer", "decoder", "semantic_decoder"):
        meta = json.loads((folder / f"{g}.engine.json").read_text())
        assert meta["onnx_file"] == f"{g}.onnx" and meta["precision"] == "fp32"


def test_build_needs_half_variants_and_reports_parse_errors(tiny_export: Path, trt_export: Path) -> None:
    with pytest.raises(ValueError, match="no bf16 variant"):
        T.build_engines(trt_export, "bf16", device=DEVICE, trt=FakeTRT())
    with pytest.raises(ValueError, match="no fp16 variant"):
        T.build_engines(tiny_export, "fp16", device=DEVICE, trt=FakeTRT())
    with pytest.raises(RuntimeError, match="unsupported op Foo"):
        T.build_engines(trt_export, "fp16", device=DEVICE, trt=FakeTRT(parse_ok=False), force=True)


def test_runtime_refuses_engine_for_other_gpu(tiny_dir: Path, trt_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evotok.export import trt_runtime

    folder = T.build_engines(trt_export, "fp16", device=DEVICE, trt=FakeTRT(), force=True)
    # pretend this host is an A100 whose engines were copied from the H100 folder
    here = T.DeviceIdentity("NVIDIA A100-SXM4-80GB", "8.0", "10.8.0")
    plan = T.plan_engines(trt_export, read_manifest(trt_export), here, "fp16")
    plan.folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        (plan.folder / f.name).write_bytes(f.read_bytes())
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    monkeypatch.setattr(trt_runtime, "current_device", lambda index=0: here)
    with pytest.raises(T.EngineMismatchError, match="GPU model: engine 'NVIDIA H100 80GB HBM3', here 'NVIDIA A100"):
        trt_runtime.TensorRTRuntime(tiny_dir, export_dir=trt_export)
    # engines really built for this host, but one missing: a clear error before anything is deserialised
    for name, (_file, sha) in plan.sources.items():
        meta = _meta(graph=name, gpu_name=here.gpu_name, compute_capability="8.0", onnx_sha256=sha,
                     precision="fp32" if name == "quantizer" else "fp16")
        (plan.folder / f"{name}.engine.json").write_text(json.dumps(meta.to_dict()))
    (plan.folder / "decoder.engine").unlink()
    with pytest.raises(FileNotFoundError, match="no TensorRT engine for decoder"):
        trt_runtime.TensorRTRuntime(tiny_dir, export_dir=trt_export)
