"""``evotok tokenize SOURCE... --out DIR``: images from a folder, WebDataset or Parquet -> resumable code shards.

Usage::

    evotok tokenize photos/ --out tokens/                                   # folder -> .npy shards
    evotok tokenize 'cc12m/{00000..00099}.tar' --out tokens/ --format parquet
    evotok tokenize hf_dataset/ --image-column image --out tokens/ --format webdataset
    torchrun --nproc-per-node 8 -m evotok.cli tokenize cc12m/ --out tokens/ --engine torchrun
    evotok tokenize cc12m/ --out tokens/ --engine ray --address auto --num-gpus 1

See docs/datasets.md for the guide, ``evotok.tokenize.rundir`` for the output folder and
``evotok.tokenize.sinks`` for the three formats.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evotok.tokenize.local import TokenizeConfig, tokenize
from evotok.tokenize.report import RunReport
from evotok.tokenize.sinks import FORMATS
from evotok.tokenize.sources import SOURCE_KINDS
from evotok.tools.backends import CodesBackend, LocalBackend, RemoteBackend

ENGINES = ("local", "torchrun", "ray")


@dataclass(frozen=True)
class BackendSpec:
    """A picklable recipe for a backend, built where it runs (this process, or each Ray actor)."""

    server: str | None = None
    api_key: str | None = None
    concurrency: int = 16
    weights: str | None = None
    backend: str = "onnxruntime"
    device: str = "cpu"  # "cuda" on GPU actors
    threads: int | None = None

    def __call__(self) -> CodesBackend:
        if self.server:
            return RemoteBackend(self.server, api_key=self.api_key, concurrency=self.concurrency)
        from evotok.export.runtime import load_runtime

        options: dict[str, object] = {}
        if self.backend == "onnxruntime":
            options["providers"] = ("cuda", "cpu") if self.device == "cuda" else ("cpu",)
            if self.threads:
                options["threads"] = self.threads
        elif self.backend == "torch":
            options["device"] = self.device
            if self.threads:
                options["threads"] = self.threads
        backend: Any = self.backend  # one of load_runtime's names; it refuses others with the valid list
        return LocalBackend(load_runtime(self.weights, backend, **options))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evotok tokenize", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "source", nargs="+", help="a folder of images, or .tar / .parquet files, folders or brace patterns"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (resumes if it holds the same run)")
    src = p.add_argument_group("source")
    src.add_argument("--source", dest="kind", default="auto", choices=["auto", *SOURCE_KINDS])
    src.add_argument("--image-column", help="Parquet column with the image bytes or {bytes, path} struct")
    src.add_argument("--key-column", help="Parquet column with the sample key (default: key or __key__)")
    out = p.add_argument_group("output")
    out.add_argument("--format", default="npy", choices=FORMATS, help="shard format (default: npy)")
    out.add_argument("--shard-size", type=int, default=1024, help="images per shard (fixed for a run)")
    out.add_argument(
        "--chunk-size", type=int, default=64, help="images per persisted chunk (resume granularity)"
    )
    model = p.add_argument_group("model")
    model.add_argument("--server", help="EvoTok server URL (default: the model in process / in each actor)")
    model.add_argument("--concurrency", type=int, default=16, help="requests in flight with --server")
    model.add_argument(
        "--api-key", default=os.environ.get("EVOTOK_API_KEY"), help="bearer token (env EVOTOK_API_KEY)"
    )
    model.add_argument("--weights", help="model folder (default: the shipped model)")
    model.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    model.add_argument(
        "--device", default=None, choices=["cpu", "cuda"], help="default: cuda with --num-gpus > 0"
    )
    model.add_argument(
        "--threads", type=int, help="runtime threads (default: the runtime's own; ray CPU actors: --num-cpus)"
    )
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--engine", default="local", choices=ENGINES, help="default: local (RANK/WORLD_SIZE honoured)"
    )
    eng.add_argument("--address", help="ray: cluster address (default: start a local one)")
    eng.add_argument("--num-gpus", type=float, default=0.0, help="ray: GPUs per actor")
    eng.add_argument("--num-cpus", type=float, default=1.0, help="ray: CPUs per actor")
    eng.add_argument("--actors", type=int, help="ray: at most this many actors (default: as many as fit)")
    p.add_argument("--no-progress", action="store_true")
    return p


BackendFactory = Callable[[], CodesBackend]


def main(argv: list[str], backend_factory: BackendFactory | None = None) -> int:
    """The CLI; ``backend_factory`` replaces the backend from the model options (tests pass a fake one)."""
    p = parser()
    args = p.parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.engine == "torchrun" and "WORLD_SIZE" not in os.environ:
        p.error("--engine torchrun runs under torchrun (RANK / WORLD_SIZE unset)")
    if args.engine == "ray" and world > 1:
        p.error("--engine ray runs as one driver, not under torchrun")
    cfg = TokenizeConfig(
        args.source,
        args.out,
        shard_size=args.shard_size,
        chunk_size=args.chunk_size,
        rank=rank,
        world_size=world,
        progress=not args.no_progress,
        out_format=args.format,
        source_kind=args.kind,
        image_column=args.image_column,
        key_column=args.key_column,
    )
    factory = backend_factory or BackendSpec(
        server=args.server,
        api_key=args.api_key,
        concurrency=args.concurrency,
        weights=args.weights,
        backend=args.backend,
        device=factory_device(args),
        threads=args.threads
        or (max(1, int(args.num_cpus)) if args.engine == "ray" and args.num_gpus == 0 else None),
    )
    if args.engine == "torchrun" and factory_device(args) == "cuda":
        pin_local_gpu()
    from evotok.client import EvoTokError

    try:
        if args.engine == "ray":
            from evotok.tokenize.ray_engine import tokenize_ray

            report = tokenize_ray(
                cfg,
                factory,
                address=args.address,
                num_cpus=args.num_cpus,
                num_gpus=args.num_gpus,
                actors=args.actors,
            )
        else:
            report = _run_local(cfg, factory)
    except (OSError, ValueError, RuntimeError, EvoTokError) as exc:
        sys.stderr.write(f"evotok tokenize: {exc}\n")
        return 1
    prefix = f"rank {rank}/{world}" if report.engine == "torchrun" else report.engine
    if args.server:  # the codes came from a server, not from a model in this process
        prefix = f"server {args.server} ({prefix})"
    sys.stdout.write(f"{prefix}: {report.summary()}\n")
    return 0


def factory_device(args: argparse.Namespace) -> str:
    return str(args.device or ("cuda" if args.num_gpus > 0 else "cpu"))


def pin_local_gpu() -> None:
    """Under torchrun, give each rank its own GPU (``LOCAL_RANK``-th visible device) before CUDA starts;
    the runtimes then use device 0 of what they see. Ray does this for its actors itself."""
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        return
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(local) % len(visible)] if visible else local


def _run_local(cfg: TokenizeConfig, factory: BackendFactory) -> RunReport:
    backend = factory()
    try:
        return tokenize(cfg, backend)
    finally:
        backend.close()
