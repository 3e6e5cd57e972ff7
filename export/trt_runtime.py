"""TensorRT backend: deserialises the engines built by ``evotok export --trt`` and runs them on one GPU.

Before deserialising, every engine's metadata is checked against this host (GPU model, compute capability,
TensorRT version), the ONNX file it must come from and the precision (``check_engine``); a mismatch is an
``EngineMismatchError`` naming the differences. CUDA buffers are torch tensors (the ``torch`` extra with a
CUDA build is required on TensorRT hosts). One execution context per optimization profile; a batch uses the
profile whose range holds it, and batches above the largest range are split.

Options: ``precision`` ("fp32", "fp16" or "bf16"), ``export_dir`` (the ONNX folder) or ``cache_dir`` / ``engine_dir``
(synonyms: the cache root holding ``<model>-<hash12>/``, engines under its ``trt/``), ``build`` (build missing
engines instead of refusing), ``device_index``.

Not run on a GPU in this repository's CI: see ``bench/gpu_check.py`` and the README.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.boundary import check_images, model_info, prepare_codes
from evotok.export.golden import GOLDEN_FILE
from evotok.export.runtime import F32, U8, Codes, Runtime
from evotok.export.tensorrt import (
    ENGINE_SUFFIX,
    META_SUFFIX,
    EngineMeta,
    build_engines,
    check_engine,
    current_device,
    import_tensorrt,
    plan_engines,
    select_profile,
)

log = logging.getLogger(__name__)


class _Engine:
    """One engine: a context per profile, torch CUDA tensors as I/O."""

    def __init__(self, trt: Any, runtime: Any, path: Path, meta: EngineMeta, device: Any) -> None:
        import torch

        self.meta = meta
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self.profiles = meta.batch_profiles()
        self.device = device
        self.stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        self.contexts = []
        for i in range(len(self.profiles)):
            ctx = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(i, self.stream.cuda_stream)
            self.contexts.append(ctx)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int64: torch.int64, trt.uint8: torch.uint8}
        self.out_dtype = dtypes[self.engine.get_tensor_dtype(self.output)]

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        import torch

        top = self.profiles[-1].max
        if x.shape[0] > top:
            return np.concatenate([self.run(x[i : i + top]) for i in range(0, x.shape[0], top)])
        ctx = self.contexts[select_profile(self.profiles, x.shape[0])]
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
            ctx.set_input_shape(self.input, tuple(inp.shape))
            out = torch.empty(tuple(ctx.get_tensor_shape(self.output)), dtype=self.out_dtype, device=self.device)
            ctx.set_tensor_address(self.input, inp.data_ptr())
            ctx.set_tensor_address(self.output, out.data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.meta.graph} failed")
            result = out.cpu()
        self.stream.synchronize()
        arr: npt.NDArray[Any] = result.numpy()
        return arr


class TensorRTRuntime(Runtime):
    def __init__(
        self,
        weights_dir: Path | str,
        precision: str = "fp16",
        export_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        build: bool = False,
        device_index: int = 0,
        engine_dir: Path | str | None = None,
    ) -> None:
        import torch

        from evotok.export.onnx_export import ensure_exported, read_manifest
        from evotok.model.card import read_card
        from evotok.model.config import EvoTokConfig

        trt = import_tensorrt()
        cache_dir = cache_dir if cache_dir is not None else engine_dir
        self.weights_dir = Path(weights_dir)
        self.golden_path = self.weights_dir / GOLDEN_FILE
        folder = Path(export_dir) if export_dir is not None else ensure_exported(self.weights_dir, cache_dir)
        manifest = read_manifest(folder)
        card = read_card(self.weights_dir)
        if manifest.weights_hash != card["hash"]:
            raise ValueError(f"{folder} was exported from other weights ({manifest.weights_hash[:12]}); re-export")
        dev = current_device(device_index)
        plan = plan_engines(folder, manifest, dev, precision)
        if build:
            build_engines(folder, precision, device=dev)
        checked: list[tuple[str, Path, EngineMeta]] = []
        for name, (_file, sha) in plan.sources.items():  # check every engine before deserialising any
            path = plan.folder / f"{name}{ENGINE_SUFFIX}"
            meta_path = plan.folder / f"{name}{META_SUFFIX}"
            if not path.is_file() or not meta_path.is_file():
                raise FileNotFoundError(f"no TensorRT engine for {name} at {path}; build it with `evotok export --trt`")
            meta = EngineMeta.load(meta_path)
            check_engine(meta, dev, sha, precision)
            checked.append((name, path, meta))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        cuda = torch.device("cuda", device_index)
        self.engines = {name: _Engine(trt, runtime, path, meta, cuda) for name, path, meta in checked}
        cfg = EvoTokConfig.from_dict(card["config"])
        label = (f"tensorrt-{dev.trt_version}", dev.gpu_name, f"sm{dev.compute_capability}")
        self.info = model_info(card, cfg, manifest.weights_hash, backend="tensorrt", precision=precision,
                               providers=label)

    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        latent = self.engines["encoder"].run(check_images(images, self.info))
        return self.engines["quantizer"].run(latent.astype(np.float32)).astype(np.uint16)

    def decode(self, codes: Codes) -> U8:
        out: U8 = self.engines["decoder"].run(prepare_codes(codes, self.info, self.info.pixel_depth))
        return out

    def embed_codes(self, codes: Codes) -> F32:
        out = self.engines["semantic_decoder"].run(prepare_codes(codes, self.info, self.info.semantic_depth))
        return out.astype(np.float32)

    def close(self) -> None:
        self.engines.clear()
