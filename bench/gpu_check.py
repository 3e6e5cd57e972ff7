"""GPU host check: every GPU backend against the PyTorch fp32 CPU reference, plus throughput.

Run on a GPU host from a checkout with the ``gpu`` (and optionally ``trt``) extras and a CUDA torch::

    python bench/gpu_check.py [--weights DIR] [--out DIR] [--precision fp16|bf16] [--batch 32] [--json r.json]

Steps: export the ONNX graphs (with half-precision variants), compute reference codes with torch fp32 on CPU,
then for each backend that can start here -- torch CUDA fp32 and bf16, ONNX Runtime CUDA EP (fp32),
ONNX Runtime TensorRT EP (fp16 encoder/decoders, fp32 quantizer) and native TensorRT engines (fp32, and
``--precision`` for encoder/decoders) when ``import tensorrt`` works -- print code agreement per depth (and the first mismatching depth), decoded-pixel
max-abs error and PSNR, semantic cosine, and encode/decode images/s at ``--batch``. A backend that cannot
start (no provider, no TensorRT) is reported with its error, never silently replaced by another.
Exit status 0 when at least one backend ran and every fp32 backend has 100% code agreement, else 1
(half-precision backends are reported, not required to match exactly).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _throughput(fn: Callable[[], Any], batch: int, reps: int = 10) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="export folder (default: the cache folder)")
    p.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from evotok.export.onnx_export import default_export_dir, export_onnx
    from evotok.export.parity import ParityLimits, compare_runtimes, parity_images
    from evotok.export.torch_runtime import TorchRuntime
    from evotok.paths import default_weights_dir

    weights = args.weights or default_weights_dir()
    out = args.out or default_export_dir(weights)
    t0 = time.perf_counter()
    export_onnx(weights, out, half_precision=(args.precision,))
    export_s = time.perf_counter() - t0
    reference = TorchRuntime(weights, device="cpu", precision="fp32")
    images = parity_images(weights, reference.info.image_size, minimum=16)
    size = reference.info.image_size
    bench_images = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    bench_codes = reference.encode(bench_images[:1]).repeat(args.batch, axis=0)

    def make_trt(precision: str) -> Callable[[], Any]:
        def make() -> Any:
            from evotok.export.tensorrt import build_engines
            from evotok.export.trt_runtime import TensorRTRuntime

            build_engines(out, precision)
            return TensorRTRuntime(weights, precision=precision, export_dir=out)

        return make

    def make_ort(providers: tuple[str, ...], precision: str = "fp32") -> Callable[[], Any]:
        from evotok.export.ort_runtime import OrtRuntime

        return lambda: OrtRuntime(weights, providers=providers, export_dir=out, precision=precision,
                                  engine_dir=out / "ort-trt-cache")

    candidates: dict[str, tuple[Callable[[], Any], bool]] = {  # name -> (factory, exact codes required)
        "torch-cuda-fp32": (lambda: TorchRuntime(weights, device="cuda", precision="fp32"), True),
        "torch-cuda-bf16": (lambda: TorchRuntime(weights, device="cuda", precision="bf16"), False),
        "ort-cuda-fp32": (make_ort(("cuda",)), True),
        "ort-tensorrt-ep-fp16": (make_ort(("tensorrt", "cuda"), "fp16"), False),
        "tensorrt-fp32": (make_trt("fp32"), True),
        f"tensorrt-{args.precision}": (make_trt(args.precision), False),
    }
    results: dict[str, Any] = {"export_seconds": export_s, "batch": args.batch, "num_images": len(images)}
    ok, ran = True, 0
    lenient = ParityLimits(min_code_agreement=0.0, max_pixel_abs=255, min_cosine=0.0)
    for name, (factory, exact) in candidates.items():
        try:
            t = time.perf_counter()
            rt = factory()
            start_s = time.perf_counter() - t
            report = compare_runtimes(reference, rt, images, None if exact else lenient)
            enc = _throughput(lambda rt=rt: rt.encode(bench_images), args.batch)
            dec = _throughput(lambda rt=rt: rt.decode(bench_codes), args.batch)
            results[name] = {"parity": report.to_dict(), "encode_images_per_s": enc, "decode_images_per_s": dec,
                             "startup_s": start_s, "providers": list(rt.info.providers)}
            ran += 1
            if exact and not report.passed:
                ok = False
            print(f"{name:24s} codes {100 * report.code_agreement:8.4f}% (first mismatch depth "
                  f"{report.first_mismatch_depth}), pixels max-abs {report.pixel_max_abs} / PSNR "
                  f"{report.pixel_psnr_db:.1f} dB, cosine min {report.semantic_cosine_min:.5f}; "
                  f"encode {enc:.1f} img/s, decode {dec:.1f} img/s @ batch {args.batch}; {rt.info.providers}")
            rt.close()
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name:24s} NOT RUN: {type(e).__name__}: {e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not ran:
        print("no GPU backend could start on this host")
    return 0 if ok and ran else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
