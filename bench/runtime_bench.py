"""``evotok bench runtime``: torch eager vs ONNX Runtime CPU, encode and decode, against the machine's matmul rate.

In one process and one run:

1. the machine's float32 matrix-multiply rate (``torch.mm`` of n x n fp32, best of several, same thread
   count): the "limit" every achieved FLOP rate is divided by;
2. FLOPs per image of encode (encoder + quantizer) and decode (code lookup + pixel decoder), counted with
   ``torch.utils.flop_counter`` on the PyTorch model (multiply-add = 2 FLOPs; matmuls and convolutions);
3. for each batch size, torch eager (``TorchRuntime`` fp32) and ONNX Runtime CPU (``OrtRuntime``) calls are
   *interleaved* (torch, ort, torch, ort, ...) so both see the same background load; the median seconds per
   call gives images/s.

Every time is taken twice: wall clock (``perf_counter``) and process CPU time (``process_time``, all threads).
On a machine shared with other jobs the wall clock measures the share of the CPU the process got; CPU time
measures the work. The FLOP-rate fractions therefore compare *FLOP per CPU-second* of each backend with the
matmul's FLOP per CPU-second (both include time threads spend spinning); images/s are reported both ways.

Usage::

    evotok bench runtime [--weights DIR] [--batches 1,8,32] [--threads N] [--budget-s 6] [--json out.json]
                         [--baseline-weights DIR]

``--baseline-weights`` adds a model-vs-model table: ONNX Runtime CPU decode of ``--weights`` interleaved with
ONNX Runtime CPU decode of the baseline folder (same batch, same thread count, same run), with both models'
decode GFLOP per image.

Without shipped weights it benchmarks an untrained ``evotok-small`` (same graphs, same cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def matmul_rate(threads: int, n: int = 1024, seconds: float = 2.0) -> tuple[float, float]:
    """Best fp32 GFLOP/s of ``torch.mm`` (n x n) over about ``seconds``: (per wall second, per CPU second)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best_wall = best_cpu = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t, c = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    flop = 2.0 * n**3
    return flop / best_wall / 1e9, flop / max(best_cpu, 1e-9) / 1e9


def flops_per_image(model: Any, image_size: int, grid: int, pixel_depth: int) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size)
    codes = torch.zeros(1, grid, grid, pixel_depth, dtype=torch.long)
    out = {}
    for name, fn in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(codes))):
        with FlopCounterMode(display=False) as fc:
            fn()
        out[name] = float(fc.get_total_flops())
    return out


def interleaved(
    fns: dict[str, Callable[[], Any]], budget_s: float, min_reps: int = 3, max_reps: int = 50
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call of each function, calls alternated round-robin."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    end = time.perf_counter() + budget_s
    reps = 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() < end):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[k].append((time.perf_counter() - t, time.process_time() - c))
        reps += 1
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def _weights(arg: Path | None) -> Path:
    from evotok.paths import default_weights_dir

    path = arg or default_weights_dir()
    if (path / "model.safetensors").is_file():
        return path
    from evotok.model.checkpoint import save_weights
    from evotok.model.config import get_preset
    from evotok.model.evotok import EvoTok

    tmp = Path(tempfile.mkdtemp(prefix="evotok-bench-"))
    sys.stderr.write(f"no weights at {path}; benchmarking an untrained evotok-small in {tmp}\n")
    save_weights(EvoTok(get_preset("evotok-small"), pretrained_backbone=False).eval(), tmp)
    return tmp


def run(weights: Path, batches: list[int], threads: int, budget_s: float,
        baseline: Path | None = None) -> dict[str, Any]:
    import onnxruntime
    import torch

    from evotok.export.ort_runtime import OrtRuntime
    from evotok.export.torch_runtime import TorchRuntime

    load_before = os.getloadavg()
    torch.set_num_threads(threads)
    tr = TorchRuntime(weights, threads=threads)
    with tempfile.TemporaryDirectory() as cache:
        ort_rt = OrtRuntime(weights, threads=threads, cache_dir=cache)
        info = tr.info
        flops = flops_per_image(tr.model, info.image_size, info.grid, info.pixel_depth)
        limit = matmul_rate(threads)
        rng = np.random.default_rng(0)
        rows = []
        codes_by_batch: dict[int, Any] = {}
        for b in batches:
            images = rng.integers(0, 256, (b, info.image_size, info.image_size, 3), dtype=np.uint8)
            codes = tr.encode(images)
            codes_by_batch[b] = codes
            enc = interleaved({"torch": lambda x=images: tr.encode(x), "ort": lambda x=images: ort_rt.encode(x)},
                              budget_s)
            dec = interleaved({"torch": lambda c=codes: tr.decode(c), "ort": lambda c=codes: ort_rt.decode(c)},
                              budget_s)
            for op, t in (("encode", enc), ("decode", dec)):
                row: dict[str, Any] = {"op": op, "batch": b, "reps_budget_s": budget_s}
                for k in ("torch", "ort"):
                    wall, cpu = t[k]
                    row[f"{k}_images_per_s"] = b / wall
                    row[f"{k}_images_per_cpu_s"] = b / cpu
                    row[f"{k}_gflop_per_cpu_s"] = b * flops[op] / cpu / 1e9
                    row[f"{k}_frac_of_matmul"] = row[f"{k}_gflop_per_cpu_s"] / limit[1]
                row["ort_over_torch"] = t["torch"][0] / t["ort"][0]
                row["ort_over_torch_cpu"] = t["torch"][1] / t["ort"][1]
                rows.append(row)
                sys.stderr.write(f"{op} b={b}: torch {row['torch_images_per_s']:.2f} img/s, ort "
                                 f"{row['ort_images_per_s']:.2f} img/s ({row['ort_over_torch']:.2f}x wall, "
                                 f"{row['ort_over_torch_cpu']:.2f}x CPU time)\n")
        compare = _compare_decode(ort_rt, codes_by_batch, baseline, threads, cache, budget_s) if baseline else None
        limit_after = matmul_rate(threads)
    return {
        "baseline": compare,
        "model": info.name, "weights_hash": info.weights_hash[:12], "threads": threads,
        "matmul_gflops_wall": limit[0], "matmul_gflops_cpu": limit[1], "matmul_gflops_cpu_after": limit_after[1],
        "gflops_per_image": {k: v / 1e9 for k, v in flops.items()}, "rows": rows,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
    }


def _compare_decode(ort_rt: Any, codes_by_batch: dict[int, Any], baseline: Path, threads: int, cache: str,
                    budget_s: float) -> dict[str, Any]:
    """ORT decode of this model vs ORT decode of ``baseline``, interleaved per batch size."""
    from evotok.export.ort_runtime import OrtRuntime
    from evotok.export.torch_runtime import TorchRuntime

    base_torch = TorchRuntime(baseline, threads=threads)
    info = base_torch.info
    base_flops = flops_per_image(base_torch.model, info.image_size, info.grid, info.pixel_depth)["decode"]
    base_ort = OrtRuntime(baseline, threads=threads, cache_dir=str(Path(cache) / "baseline"))
    rows = []
    for b, codes in codes_by_batch.items():
        t = interleaved({"model": lambda c=codes: ort_rt.decode(c), "baseline": lambda c=codes: base_ort.decode(c)},
                        budget_s)
        row = {"batch": b, "model_images_per_s": b / t["model"][0], "baseline_images_per_s": b / t["baseline"][0],
               "speedup_wall": t["baseline"][0] / t["model"][0], "speedup_cpu": t["baseline"][1] / t["model"][1]}
        rows.append(row)
        sys.stderr.write(f"decode b={b}: model {row['model_images_per_s']:.2f} img/s, baseline "
                         f"{row['baseline_images_per_s']:.2f} img/s ({row['speedup_wall']:.2f}x)\n")
    return {"baseline_hash": info.weights_hash[:12], "baseline_decode_gflops": base_flops / 1e9, "rows": rows}


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"model `{r['model']}` ({r['weights_hash']}), {r['threads']} thread(s); fp32 matmul limit "
        f"{r['matmul_gflops_cpu']:.1f} GFLOP per CPU-s (after the run: {r['matmul_gflops_cpu_after']:.1f}; "
        f"per wall-s {r['matmul_gflops_wall']:.1f}); GFLOP per image: encode {r['gflops_per_image']['encode']:.3f}, "
        f"decode {r['gflops_per_image']['decode']:.3f}; load average {r['loadavg_before'][0]:.1f} -> "
        f"{r['loadavg_after'][0]:.1f} on {r['cpu_count']} cores; GLIBC_TUNABLES "
        f"{'set (Makefile)' if r['glibc_tunables'] else 'unset'}; torch {r['versions']['torch']}, onnxruntime "
        f"{r['versions']['onnxruntime']}",
        "",
        "| op | batch | torch img/s (wall) | ORT img/s (wall) | ORT / torch (wall) | ORT / torch (CPU time) "
        "| torch % of matmul | ORT % of matmul |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['op']} | {row['batch']} | {row['torch_images_per_s']:.2f} | {row['ort_images_per_s']:.2f} | "
            f"{row['ort_over_torch']:.2f}x | {row['ort_over_torch_cpu']:.2f}x | "
            f"{100 * row['torch_frac_of_matmul']:.0f}% | {100 * row['ort_frac_of_matmul']:.0f}% |"
        )
    if r.get("baseline"):
        c = r["baseline"]
        lines += [
            "",
            f"ONNX Runtime CPU decode, this model ({r['gflops_per_image']['decode']:.2f} GFLOP/image) vs baseline "
            f"`{c['baseline_hash']}` ({c['baseline_decode_gflops']:.2f} GFLOP/image), interleaved in the same run:",
            "",
            "| batch | model img/s | baseline img/s | speed-up (wall) | speed-up (CPU time) |",
            "|---:|---:|---:|---:|---:|",
            *[f"| {x['batch']} | {x['model_images_per_s']:.2f} | {x['baseline_images_per_s']:.2f} | "
              f"{x['speedup_wall']:.2f}x | {x['speedup_cpu']:.2f}x |" for x in c["rows"]],
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok bench runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for torch, ORT and the matmul (1 is robust on a shared machine)")
    p.add_argument("--budget-s", type=float, default=6.0, help="time per (op, batch) cell, both backends")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--baseline-weights", type=Path, default=None,
                   help="also time ORT decode of this model folder against --weights, interleaved")
    args = p.parse_args(argv)
    result = run(_weights(args.weights), [int(b) for b in args.batches.split(",")], args.threads, args.budget_s,
                 args.baseline_weights)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
