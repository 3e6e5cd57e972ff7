"""ONNX Runtime backend: the four exported graphs in four sessions.

Providers are chosen explicitly from ``("cpu", "cuda", "tensorrt")``. After each session is created the
runtime checks ``session.get_providers()`` and refuses (``ProviderUnavailableError``) when a requested
provider did not really load: ONNX Runtime silently falls back to CPU when CUDA or TensorRT libraries or the
driver are missing, and ``get_available_providers()`` lists GPU providers even on machines without a GPU.
``info.providers`` reports what the sessions really run on.

Options: ``providers`` (default ``("cpu",)``), ``threads`` (intra-op threads; default all cores),
``export_dir`` (an export folder; default ``ensure_exported(weights_dir, cache_dir)``), ``cache_dir``,
``engine_dir`` (TensorRT EP engine cache), ``precision`` ("fp32", or "fp16" for the TensorRT EP's encoder
and decoders; the quantizer is always fp32), ``warmup_batches`` (batch sizes to run once at start),
``session_factory`` (tests inject fakes here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.boundary import check_images, model_info, prepare_codes
from evotok.export.golden import GOLDEN_FILE
from evotok.export.runtime import F32, U8, Codes, Runtime

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
SessionFactory = Callable[[str, Any, list[Any]], Any]


class ProviderUnavailableError(RuntimeError):
    """A requested execution provider did not load in the session (ONNX Runtime fell back silently)."""


def provider_list(requested: Sequence[str], graph: str, *, precision: str, engine_dir: Path | None) -> list[Any]:
    """ORT ``providers=`` argument for one graph: the requested ones in order, with their options."""
    if not requested:
        raise ValueError("at least one provider is required")
    out: list[Any] = []
    for p in requested:
        if p not in PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; choose from {sorted(PROVIDERS)}")
        if p == "tensorrt":
            opts: dict[str, Any] = {"trt_fp16_enable": precision == "fp16" and graph != "quantizer"}
            if engine_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_dir / graph),
                            trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_dir))
            out.append((PROVIDERS[p], opts))
        elif p == "cuda":
            out.append((PROVIDERS[p], {"use_tf32": "0"}))  # TF32 convs/matmuls would change the codes
        else:
            out.append(PROVIDERS[p])
    return out


def verify_providers(requested: Sequence[str], got: Sequence[str], graph: str) -> None:
    """Raise unless every requested provider is among the session's real providers."""
    missing = [p for p in requested if PROVIDERS[p] not in got]
    if missing:
        raise ProviderUnavailableError(
            f"{graph}: requested provider(s) {missing} did not load; the session runs on {list(got)}. "
            "ONNX Runtime falls back to CPU when the GPU, driver, CUDA/cuDNN or TensorRT libraries are missing "
            "(see its log above); fix the host or request providers=('cpu',)."
        )


def _default_factory(path: str, options: Any, providers: list[Any]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(path, sess_options=options, providers=providers)


class OrtRuntime(Runtime):
    def __init__(
        self,
        weights_dir: Path | str,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        export_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        engine_dir: Path | str | None = None,
        precision: str = "fp32",
        warmup_batches: Sequence[int] = (),
        session_factory: SessionFactory | None = None,
    ) -> None:
        import onnxruntime as ort

        from evotok.export.onnx_export import ensure_exported, read_manifest
        from evotok.model.card import read_card
        from evotok.model.config import EvoTokConfig

        if precision not in ("fp32", "fp16"):
            raise ValueError(f"onnxruntime precision must be 'fp32' or 'fp16', got {precision!r}")
        if precision == "fp16" and "tensorrt" not in providers:
            raise ValueError("precision='fp16' is only available with the 'tensorrt' provider")
        self.weights_dir = Path(weights_dir)
        self.golden_path = self.weights_dir / GOLDEN_FILE
        folder = Path(export_dir) if export_dir is not None else ensure_exported(self.weights_dir, cache_dir)
        manifest = read_manifest(folder)
        card = read_card(self.weights_dir)
        if manifest.weights_hash != card["hash"]:
            raise ValueError(f"{folder} was exported from weights {manifest.weights_hash[:12]}, "
                             f"but {self.weights_dir} holds {str(card['hash'])[:12]}; re-export")
        self.export_dir = folder
        self.manifest = manifest
        factory = session_factory or _default_factory
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shares cores with other work
        self.sessions: dict[str, Any] = {}
        real: list[str] = []
        edir = Path(engine_dir) if engine_dir is not None else None
        if edir is not None and "tensorrt" in providers:
            for name in manifest.graphs:
                (edir / name).mkdir(parents=True, exist_ok=True)
        for name, entry in manifest.graphs.items():
            plist = provider_list(providers, name, precision=precision, engine_dir=edir)
            sess = factory(str(folder / entry.file), so, plist)
            got = list(sess.get_providers())
            verify_providers(providers, got, name)
            self.sessions[name] = sess
            real += [p for p in got if p not in real]
        self._in = {n: s.get_inputs()[0].name for n, s in self.sessions.items()}
        cfg = EvoTokConfig.from_dict(card["config"])
        self.info = model_info(card, cfg, manifest.weights_hash, backend="onnxruntime", precision=precision,
                               providers=tuple(real))
        log.info("onnxruntime %s on %s (%s)", cfg.name, real, folder)
        if warmup_batches:
            self.warmup(warmup_batches)

    def concurrent_calls(self) -> bool:
        """``InferenceSession.run`` is thread-safe and this class keeps no state between calls; on the CPU
        provider alone, concurrent calls are what lets a small model use every core (``docs/benchmarks.md``)."""
        return set(self.info.providers) <= {"CPUExecutionProvider"}

    def _run(self, graph: str, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out: npt.NDArray[Any] = self.sessions[graph].run(None, {self._in[graph]: x})[0]
        return out

    def encode_latent(self, images: U8) -> F32:
        """``(B, H, W, 3)`` uint8 -> ``(B, h, w, C)`` float32 latent (the encoder graph alone)."""
        return self._run("encoder", check_images(images, self.info))

    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        latent = self.encode_latent(images)
        return self._run("quantizer", latent).astype(np.uint16)

    def decode(self, codes: Codes) -> U8:
        return self._run("decoder", prepare_codes(codes, self.info, self.info.pixel_depth))

    def embed_codes(self, codes: Codes) -> F32:
        return self._run("semantic_decoder", prepare_codes(codes, self.info, self.info.semantic_depth))

    def close(self) -> None:
        self.sessions.clear()
