"""The ``ray`` engine: Ray Data read tasks -> an actor pool running the model -> shards written by the driver.

Pipeline (``pip install 'evotok-serve[ray]'``; Ray is imported only here)::

    from_items(chunks still to do)                       one item per chunk of the plan
      .map_batches(read_chunk_batch)                     CPU read tasks: the chunk's bytes + original sizes
      .map_batches(ChunkEncoder, concurrency=N, ...)     actor pool, each actor holds one backend (model / client)
      .iter_batches()                                    the driver persists each complete chunk, then shards

Reading uses the same ``Source`` readers as the local engine, per chunk of the plan, so keys, order and
failures are identical by construction; the driver writes every file through the same ``RunDir``, so the
output is byte-identical to ``--engine local`` whatever order chunks finish in, and a killed run resumes from
its persisted chunks (read tasks are only created for chunks not yet persisted). Only the driver touches the
output folder; codes are ~8 KB per image, far smaller than the images, so funnelling them through the driver
is cheap. The source must be readable at the same path from every node (a shared or network file system).

Pool size: ``N`` actors of ``num_cpus`` CPUs and ``num_gpus`` GPUs each, as many as the cluster's resources
allow after keeping ``reserve_cpus`` (default 1) for the read tasks: an actor pool holding every CPU leaves
none for reads, and the pipeline stalls.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from evotok.tokenize.local import TokenizeConfig
from evotok.tokenize.report import Progress, RunReport
from evotok.tokenize.rundir import Chunk, RunDir, model_record
from evotok.tokenize.sources import Sample, Source
from evotok.tokenize.work import Input, encode_inputs, read_chunk
from evotok.tools.backends import CodesBackend, ImageFailure

log = logging.getLogger(__name__)

BackendFactory = Callable[[], CodesBackend]
READ_TASK_CPUS = 0.5


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError(
            "--engine ray needs Ray Data: pip install 'evotok-serve[ray]' (or 'ray[data]')"
        ) from exc
    return ray


def pool_size(
    resources: dict[str, float],
    num_cpus: float,
    num_gpus: float,
    reserve_cpus: float = 1.0,
    cap: int | None = None,
) -> int:
    """Actors that fit in the cluster's ``resources`` with ``reserve_cpus`` CPUs left for read tasks."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    limits = []
    if num_cpus > 0:
        limits.append(math.floor((cpus - reserve_cpus) / num_cpus + 1e-9))
    if num_gpus > 0:
        limits.append(math.floor(gpus / num_gpus + 1e-9))
    n = min(limits) if limits else 1
    if cap is not None:
        n = min(n, cap)
    if n < 1:
        raise ValueError(
            f"the cluster has {cpus:g} CPUs and {gpus:g} GPUs: no room for one actor of {num_cpus:g} CPUs and "
            f"{num_gpus:g} GPUs while keeping {reserve_cpus:g} CPUs for read tasks; lower --num-cpus/--num-gpus"
        )
    return n


def _model_info(factory: BackendFactory) -> Any:
    backend = factory()
    try:
        return backend.info
    finally:
        backend.close()


def read_chunk_batch(batch: Any, source: Source) -> Iterator[Any]:
    """Ray read task: one table per chunk item (positions, bytes or failure, original size)."""
    import pyarrow as pa

    for item in batch.to_pylist():
        samples = [Sample.from_list(s) for s in json.loads(item["samples"])]
        pre = [None if p is None else ImageFailure(*p) for p in json.loads(item["pre"])]
        inputs = read_chunk(source, samples, pre)
        source.close()
        yield _inputs_table(pa, item["start"], inputs)


def _inputs_table(pa: Any, start: int, inputs: list[Input]) -> Any:
    data = [None if isinstance(d, ImageFailure) else d for d, _ in inputs]
    fails = [d if isinstance(d, ImageFailure) else None for d, _ in inputs]
    return pa.table(
        {
            "pos": pa.array(range(start, start + len(inputs)), pa.int64()),
            "data": pa.array(data, pa.large_binary()),
            "err_code": pa.array([f.code if f else None for f in fails], pa.string()),
            "err_msg": pa.array([f.message if f else None for f in fails], pa.string()),
            "width": pa.array([s[0] if s else None for _, s in inputs], pa.int32()),
            "height": pa.array([s[1] if s else None for _, s in inputs], pa.int32()),
        }
    )


class ChunkEncoder:
    """Ray actor: builds one backend at start, then encodes batches of read rows."""

    def __init__(self, factory: BackendFactory) -> None:
        self.backend = factory()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        inputs: list[Input] = [
            (
                ImageFailure(r["err_code"], r["err_msg"]) if r["err_code"] is not None else r["data"],
                None if r["width"] is None else [r["width"], r["height"]],
            )
            for r in rows
        ]
        results = encode_inputs(self.backend, inputs)
        codes = [
            None if isinstance(c, ImageFailure) else np.ascontiguousarray(c, np.uint16).tobytes()
            for c, _ in results
        ]
        fails = [c if isinstance(c, ImageFailure) else None for c, _ in results]
        return pa.table(
            {
                "pos": pa.array([r["pos"] for r in rows], pa.int64()),
                "codes": pa.array(codes, pa.binary()),
                "err_code": pa.array([f.code if f else None for f in fails], pa.string()),
                "err_msg": pa.array([f.message if f else None for f in fails], pa.string()),
                "width": batch.column("width"),
                "height": batch.column("height"),
            }
        )


def tokenize_ray(
    cfg: TokenizeConfig,
    factory: BackendFactory,
    *,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    actors: int | None = None,
    reserve_cpus: float = 1.0,
) -> RunReport:
    """Run (or resume) a tokenization on a Ray cluster (``address``; none: the one this process is connected
    to, else a new local one). ``factory`` builds the backend inside each actor, so it must be picklable."""
    from evotok.tokenize.local import open_run

    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        started = True
    try:
        info = ray.get(ray.remote(_model_info).options(num_cpus=num_cpus, num_gpus=num_gpus).remote(factory))
        run = open_run(cfg, info)
        return _run(ray, cfg, run, factory, num_cpus, num_gpus, actors, reserve_cpus, model_record(info))
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    cfg: TokenizeConfig,
    run: RunDir,
    factory: BackendFactory,
    num_cpus: float,
    num_gpus: float,
    actors: int | None,
    reserve_cpus: float,
    model: dict[str, Any],
) -> RunReport:
    report = RunReport(engine="ray", shards_total=run.num_shards)
    todo_shards = [i for i in range(run.num_shards) if not run.shard_done(i)]
    report.shards_skipped = [i for i in range(run.num_shards) if i not in todo_shards]
    for i in report.shards_skipped:
        run.clean_finished(i)
    chunks_left: dict[int, int] = {}
    todo: list[Chunk] = []
    for i in todo_shards:
        pending = [c for c in run.chunks(i) if not run.chunk_done(c)]
        chunks_left[i] = len(pending)
        todo += pending
    total = len(run.samples)
    progress = Progress(total, total - sum(len(c) for c in todo), "tokenize ray", cfg.progress)
    try:
        for i in [
            i for i, n in chunks_left.items() if n == 0
        ]:  # killed after its last chunk, before assembly
            run.assemble_shard(i)
            report.shards_written.append(i)
        if todo:
            n = pool_size(ray.cluster_resources(), num_cpus, num_gpus, reserve_cpus, actors)
            log.info("ray engine: %d chunks, %d actors of %g CPU / %g GPU", len(todo), n, num_cpus, num_gpus)
            by_start = {c.start: c for c in todo}
            results: dict[int, dict[int, Any]] = {c.start: {} for c in todo}
            grid = run.grid_shape
            for batch in _pipeline(ray, run, todo, factory, n, num_cpus, num_gpus).iter_batches(
                batch_format="pyarrow", batch_size=None
            ):
                for row in batch.to_pylist():
                    pos = row["pos"]
                    start = run.chunk_start(pos)
                    size = None if row["width"] is None else [row["width"], row["height"]]
                    if row["codes"] is None:
                        results[start][pos] = (ImageFailure(row["err_code"], row["err_msg"]), size)
                    else:
                        results[start][pos] = (np.frombuffer(row["codes"], np.uint16).reshape(grid), size)
                    chunk = by_start[start]
                    if len(results[start]) < len(chunk):
                        continue
                    done = results.pop(start)
                    report.failures += run.write_chunk(
                        chunk, [done[p] for p in range(chunk.start, chunk.stop)]
                    )
                    report.samples_processed += len(chunk)
                    progress.update(len(chunk))
                    chunks_left[chunk.shard] -= 1
                    if chunks_left[chunk.shard] == 0:
                        run.assemble_shard(chunk.shard)
                        report.shards_written.append(chunk.shard)
            if results:
                raise RuntimeError(f"the pipeline ended with {len(results)} chunks incomplete; this is a bug")
    finally:
        report.seconds = progress.close()
    report.shards_written.sort()
    report.manifest_written = run.maybe_write_manifest()
    return report


def _pipeline(
    ray: Any,
    run: RunDir,
    todo: list[Chunk],
    factory: BackendFactory,
    n: int,
    num_cpus: float,
    num_gpus: float,
) -> Any:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver's own tqdm bar counts persisted samples
    ctx.enable_operator_progress_bars = False
    items = []
    for c in todo:
        positions = range(c.start, c.stop)
        pre = [run.duplicate_failure(p) for p in positions]
        items.append(
            {
                "start": c.start,
                "samples": json.dumps([run.samples[p].to_list() for p in positions]),
                "pre": json.dumps([None if f is None else [f.code, f.message] for f in pre]),
            }
        )
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Read tasks ask for less than an actor, so Ray keeps them a separate stage (not fused into the actors)
    # and runs up to 1 / READ_TASK_CPUS of them in each reserved CPU while the actors encode.
    ds = ds.map_batches(
        read_chunk_batch,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"source": run.source},
        num_cpus=READ_TASK_CPUS,
    )
    return ds.map_batches(
        ChunkEncoder,
        fn_constructor_args=(factory,),
        batch_size=run.chunk_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
