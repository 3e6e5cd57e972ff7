"""The one inference interface the service uses, whatever runs underneath (torch, ONNX Runtime, TensorRT).

A Runtime is built from a model folder (``model.safetensors`` + ``config.json`` + ``golden.npz``) and is a
pure function of (weights, inputs): it keeps no per-call state, so one instance may serve batches from
one thread at a time (the batcher's worker thread). See ``evotok.export.types`` for array conventions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import Backend, ModelInfo, SelfTestResult

U8 = npt.NDArray[np.uint8]
Codes = npt.NDArray[np.integer[Any]]
F32 = npt.NDArray[np.float32]


class Runtime(ABC):
    """encode / decode / embed over numpy batches."""

    info: ModelInfo

    @abstractmethod
    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        """``(B, H, W, 3)`` uint8 -> ``(B, h, w, D)`` uint16 codes (all depths)."""

    @abstractmethod
    def decode(self, codes: Codes) -> U8:
        """``(B, h, w, d)`` int codes, any ``1 <= d <= D`` -> ``(B, H, W, 3)`` uint8.

        The first ``min(d, pixel_depth)`` depths are summed; a shorter prefix decodes a coarser image.
        """

    @abstractmethod
    def embed_codes(self, codes: Codes) -> F32:
        """``(B, h, w, d)`` codes -> ``(B, h*w, C)`` float32 semantic features from the first
        ``min(d, semantic_depth)`` depths."""

    def concurrent_calls(self) -> bool:
        """True when two threads may call this Runtime at once (lanes, ``service/runtime_setup.py``). Off by
        default: a TensorRT execution context or a compiled torch module is not shared between threads."""
        return False

    def embed_images(self, images: U8) -> F32:
        """``(B, H, W, 3)`` uint8 -> ``(B, h*w, C)`` float32: encode, then the semantic decoder."""
        return self.embed_codes(self.encode(images))

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run every graph once per batch size so the first request pays no compile/alloc cost."""
        size, grid, depth = self.info.image_size, self.info.grid, self.info.num_depths
        for b in batch_sizes:
            images = np.zeros((b, size, size, 3), np.uint8)
            codes = np.zeros((b, grid, grid, depth), np.uint16)
            self.encode(images)
            self.decode(codes)
            self.embed_codes(codes)

    def self_test(self, golden_path: Path | None = None, threshold: float = 1.0) -> SelfTestResult:
        """Compare this backend's codes of the golden images with the stored fp32 reference codes."""
        from evotok.export.golden import run_self_test

        return run_self_test(self, golden_path, threshold)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/engines."""


def load_runtime(
    weights_dir: Path | str | None = None,
    backend: Backend = "onnxruntime",
    **options: Any,
) -> Runtime:
    """Build a Runtime for a model folder (default: the shipped model).

    backend: ``torch`` (options: device, precision=fp32|bf16, compile), ``onnxruntime`` (options:
    providers=("cpu"|"cuda"|"tensorrt", ...), engine_dir, threads), ``tensorrt`` (options: engine_dir).
    """
    from evotok.paths import default_weights_dir

    path = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    if backend == "torch":
        from evotok.export.torch_runtime import TorchRuntime

        return TorchRuntime(path, **options)
    if backend == "onnxruntime":
        from evotok.export.ort_runtime import OrtRuntime

        return OrtRuntime(path, **options)
    if backend == "tensorrt":
        from evotok.export.trt_runtime import TensorRTRuntime

        return TensorRTRuntime(path, **options)
    raise ValueError(f"unknown backend {backend!r}; choose one of 'torch', 'onnxruntime', 'tensorrt'")
