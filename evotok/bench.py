"""``evotok bench <name>``: benchmark dispatcher; each benchmark is a script in ``bench/`` with ``main(argv)``.

Usage::

    evotok bench service [--backend onnxruntime] [--concurrency 1,2,4,8,16,32] [--json out.json]
    evotok bench runtime | quantizer | queue ...

Benchmarks live in the checkout's ``bench/`` folder; the wheel carries the same scripts as
``evotok/benchmarks/`` (pyproject.toml maps the folder), so ``evotok bench`` works from an installed package too.
They are loaded by path (the checkout's first, else the installed copy) so they can import the package but
never the other way round. A benchmark whose optional dependency is missing stops with one line naming the
extra to install (exit status 2).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from evotok.paths import PACKAGE_DIR, REPO_ROOT, in_checkout

# name -> (file in bench/, one-line help). Other benchmarks register here.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "service": ("service_bench.py", "HTTP API: batching off vs on, concurrency sweep, vs the runtime's own limit"),
    "runtime": ("runtime_bench.py", "encode/decode images/s: torch eager vs ONNX Runtime CPU, vs the matmul rate"),
    "quantizer": ("quantizer_bench.py", "residual quantizer alone vs vector-quantize-pytorch ResidualVQ"),
    "queue": ("queue_bench.py", "batching path: in-process vs Redis Streams with 1 and 2 workers"),
    "tokenize": ("tokenize_bench.py", "evotok tokenize: local vs ray engine img/s on the same shards"),
}


# top-level module a benchmark may import -> the extra that installs it
EXTRAS = {
    "torch": "cpu,torch", "onnx": "cpu,torch", "vector_quantize_pytorch": "cpu,torch,bench", "ray": "ray",
    "webdataset": "data", "pyarrow": "data", "onnxruntime": "cpu", "tensorrt": "gpu,torch,trt",
}


def bench_dir() -> Path:
    """``bench/`` in the source checkout, else the copy installed with the package (``evotok/benchmarks``)."""
    checkout = REPO_ROOT / "bench"
    return checkout if in_checkout() and checkout.is_dir() else PACKAGE_DIR / "benchmarks"


def _load(filename: str) -> ModuleType:
    path = bench_dir() / filename
    if not path.is_file():
        raise SystemExit(f"evotok bench: {path} not found")
    spec = importlib.util.spec_from_file_location(f"evotok_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in BENCHMARKS:
        width = max(len(n) for n in BENCHMARKS)
        lines = ["usage: evotok bench <name> [options]", "", "benchmarks:"]
        lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in BENCHMARKS.items()]
        sys.stdout.write("\n".join(lines) + "\n")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    try:
        fn: Callable[[list[str]], int] = _load(BENCHMARKS[argv[0]][0]).main
        return int(fn(argv[1:]) or 0)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        sys.stderr.write(f"evotok bench {argv[0]}: needs {top}, which is not installed; "
                         f"pip install 'evotok-serve[{EXTRAS[top]}]' (see docs/install.md)\n")
        return 2
