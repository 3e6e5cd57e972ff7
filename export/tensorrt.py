"""TensorRT engines from the exported ONNX graphs (TensorRT Python API; ``import tensorrt`` only lazily).

Build rules:

- strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the precision of every layer
  comes from the ONNX graph, so no FP16/BF16 builder flag is set. Encoder and decoders are built from the
  half-precision ONNX variants (``<graph>.fp16.onnx`` / ``.bf16.onnx``, exported with ``--trt``), whose
  boundaries are unchanged (uint8 images, int64 codes, float32 latents/features); the quantizer is always
  built from the fp32 ``quantizer.onnx``. ``fp32`` builds every graph from the fp32 ONNX files. TF32 is
  switched off in every engine (TensorRT enables it by default, and TF32 matmuls would change the codes).
- one optimization profile per batch range (``BatchProfile``; default ranges 1-4, 5-16, 17-64, each tuned
  at its upper end); the runtime picks the profile whose range holds the batch.
- one timing cache per engine folder (``timing.cache``), loaded before and saved after each build.
- engine folders are keyed by GPU model, compute capability, TensorRT version and the ONNX files' hash::

      <export>/trt/<gpu-slug>-sm<cc>-trt<version>-<precision>-<onnx12>/<graph>.engine (+ <graph>.engine.json)

  and ``check_engine`` refuses an engine whose metadata names another GPU model, compute capability,
  TensorRT version, ONNX file or precision, with a message saying what differs and how to rebuild.

Everything except ``build_engine``'s TensorRT calls and ``current_device`` is pure Python and unit-tested
against a fake ``tensorrt`` module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
META_SUFFIX = ".engine.json"
TIMING_CACHE = "timing.cache"
DEFAULT_RANGES: tuple[tuple[int, int], ...] = ((1, 4), (5, 16), (17, 64))
PRECISIONS = ("fp32", "fp16", "bf16")


class TensorRTUnavailableError(RuntimeError):
    """``import tensorrt`` failed (not installed, or its libraries/driver are missing)."""


class EngineMismatchError(RuntimeError):
    """An engine file was built for another GPU, TensorRT version, ONNX file or precision."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except Exception as e:  # ImportError, or OSError from missing libnvinfer
        raise TensorRTUnavailableError(
            f"TensorRT is not usable here ({type(e).__name__}: {e}). Install the `trt` extra on a GPU host "
            "(pip install 'evotok-serve[gpu,trt]'), or use the onnxruntime/torch backends."
        ) from e
    return tensorrt


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def holds(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def make_profiles(ranges: Sequence[tuple[int, int]] = DEFAULT_RANGES) -> tuple[BatchProfile, ...]:
    """One profile per inclusive batch range; ranges must start at 1, be sorted and contiguous."""
    if not ranges:
        raise ValueError("at least one batch range is required")
    profiles = []
    expected = 1
    for lo, hi in ranges:
        if lo != expected or hi < lo:
            raise ValueError(f"batch ranges must be contiguous from 1 with lo <= hi, got {list(ranges)}")
        profiles.append(BatchProfile(lo, hi, hi))
        expected = hi + 1
    return tuple(profiles)


def select_profile(profiles: Sequence[BatchProfile], batch: int) -> int:
    """Index of the profile whose range holds ``batch`` (callers split batches above the largest max)."""
    for i, p in enumerate(profiles):
        if p.holds(batch):
            return i
    raise ValueError(f"batch {batch} is outside every profile {[(p.min, p.max) for p in profiles]}")


def profile_shapes(shape: Sequence[int | str], profile: BatchProfile) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes for an input shaped ``("batch", ...)`` from the manifest."""
    if not shape or shape[0] != "batch" or not all(isinstance(s, int) for s in shape[1:]):
        raise ValueError(f"expected a shape ('batch', fixed dims...), got {list(shape)}")
    tail = tuple(int(s) for s in shape[1:])
    return tuple((b, *tail) for b in (profile.min, profile.opt, profile.max))


@dataclass(frozen=True)
class DeviceIdentity:
    gpu_name: str
    compute_capability: str  # "9.0"
    trt_version: str


def current_device(device_index: int = 0) -> DeviceIdentity:
    """This host's GPU (via torch.cuda) and TensorRT version."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT engines need a CUDA GPU; torch.cuda.is_available() is False")
    major, minor = torch.cuda.get_device_capability(device_index)
    return DeviceIdentity(torch.cuda.get_device_name(device_index), f"{major}.{minor}", str(trt.__version__))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def onnx_set_hash(hashes: Sequence[str]) -> str:
    """One hash over the ONNX files an engine folder is built from (order-independent)."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


def engine_dir_name(device: DeviceIdentity, precision: str, onnx_hash: str) -> str:
    cc = device.compute_capability.replace(".", "")
    return f"{_slug(device.gpu_name)}-sm{cc}-trt{device.trt_version}-{precision}-{onnx_hash[:12]}"


@dataclass(frozen=True)
class EngineMeta:
    """Written beside each engine as ``<graph>.engine.json``."""

    graph: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str  # compute precision of the graph (the quantizer is fp32)
    onnx_file: str
    onnx_sha256: str
    input_name: str
    input_shape: list[int | str]
    profiles: list[list[int]]  # [[min, opt, max], ...]
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> EngineMeta:
        return cls(**json.loads(path.read_text()))

    def batch_profiles(self) -> tuple[BatchProfile, ...]:
        return tuple(BatchProfile(*p) for p in self.profiles)


def check_engine(meta: EngineMeta, device: DeviceIdentity, onnx_sha256: str, precision: str) -> None:
    """Refuse an engine built for something else; the message lists every difference."""
    want = {"GPU model": device.gpu_name, "compute capability": device.compute_capability,
            "TensorRT version": device.trt_version, "ONNX sha256": onnx_sha256, "precision": precision}
    have = {"GPU model": meta.gpu_name, "compute capability": meta.compute_capability,
            "TensorRT version": meta.trt_version, "ONNX sha256": meta.onnx_sha256, "precision": meta.precision}
    if meta.graph == "quantizer":
        want["precision"] = "fp32"
    diffs = [f"{k}: engine {have[k]!r}, here {want[k]!r}" for k in want if have[k] != want[k]]
    if diffs:
        raise EngineMismatchError(
            f"refusing TensorRT engine for {meta.graph!r}: it was built for something else ("
            + "; ".join(diffs) + "). Rebuild on this host with `evotok export --trt`."
        )


def build_engine(
    onnx_path: Path, engine_path: Path, *, graph: str, input_name: str, input_shape: Sequence[int | str],
    precision: str, onnx_sha256: str, profiles: Sequence[BatchProfile], device: DeviceIdentity,
    timing_cache: Path, workspace_bytes: int = 4 << 30, trt: Any = None,
) -> EngineMeta:
    """Build and write one engine (+ metadata); load and save the shared timing cache."""
    trt = trt if trt is not None else import_tensorrt()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 layers (the quantizer) must really be fp32
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    for p in profiles:
        prof = builder.create_optimization_profile()
        prof.set_shape(input_name, *profile_shapes(input_shape, p))
        config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = EngineMeta(
        graph=graph, gpu_name=device.gpu_name, compute_capability=device.compute_capability,
        trt_version=device.trt_version, precision="fp32" if graph == "quantizer" else precision,
        onnx_file=onnx_path.name, onnx_sha256=onnx_sha256, input_name=input_name, input_shape=list(input_shape),
        profiles=[[p.min, p.opt, p.max] for p in profiles], build_seconds=round(time.perf_counter() - t0, 2),
    )
    engine_path.with_name(engine_path.name[: -len(ENGINE_SUFFIX)] + META_SUFFIX).write_text(
        json.dumps(meta.to_dict(), indent=2) + "\n"
    )
    log.info("built %s (%s) in %.1f s", engine_path, meta.precision, meta.build_seconds)
    return meta


@dataclass(frozen=True)
class EnginePlan:
    """Which ONNX file each graph's engine is built from, and where engines go."""

    folder: Path
    sources: dict[str, tuple[str, str]]  # graph -> (onnx file, sha256)


def plan_engines(export_dir: Path, manifest: Any, device: DeviceIdentity, precision: str) -> EnginePlan:
    """Engine folder and ONNX sources for ``precision``; fp16/bf16 need the half variants from ``export --trt``."""
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, got {precision!r}")
    sources: dict[str, tuple[str, str]] = {}
    for name, entry in manifest.graphs.items():
        if name == "quantizer" or precision == "fp32":
            sources[name] = (entry.file, entry.sha256)
        elif precision in entry.variants:
            sources[name] = (entry.variants[precision], entry.variant_sha256[precision])
        else:
            raise ValueError(f"{export_dir} has no {precision} variant of {name}; run `evotok export --trt "
                             f"--precision {precision}` first")
    folder = export_dir / "trt" / engine_dir_name(device, precision, onnx_set_hash([s for _, s in sources.values()]))
    return EnginePlan(folder, sources)


def build_engines(
    export_dir: Path | str, precision: str = "fp16", ranges: Sequence[tuple[int, int]] = DEFAULT_RANGES,
    *, device: DeviceIdentity | None = None, trt: Any = None, force: bool = False,
) -> Path:
    """Build every graph's engine for this GPU into its keyed folder (existing matching engines are kept)."""
    from evotok.export.onnx_export import read_manifest

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    dev = device or current_device()
    plan = plan_engines(export_dir, manifest, dev, precision)
    profiles = make_profiles(ranges)
    for name, (file, sha) in plan.sources.items():
        engine = plan.folder / f"{name}{ENGINE_SUFFIX}"
        meta_path = plan.folder / f"{name}{META_SUFFIX}"
        if engine.is_file() and meta_path.is_file() and not force:
            meta = EngineMeta.load(meta_path)
            try:
                check_engine(meta, dev, sha, precision)
                if meta.profiles == [[p.min, p.opt, p.max] for p in profiles]:
                    continue
            except EngineMismatchError:
                pass
        spec = manifest.graphs[name].inputs[0]
        build_engine(export_dir / file, engine, graph=name, input_name=spec["name"], input_shape=spec["shape"],
                     precision=precision, onnx_sha256=sha, profiles=profiles, device=dev,
                     timing_cache=plan.folder / TIMING_CACHE, trt=trt)
    return plan.folder
