"""The ``local`` and ``torchrun`` engines: chunks read and encoded in this process, one after another.

With ``rank``/``world_size`` (``torchrun`` sets ``RANK``/``WORLD_SIZE``), rank ``r`` takes shards
``i % world_size == r``; all ranks write into the same folder, and whichever finishes last writes
``manifest.json``. The backend is the model in this process or an EvoTok server (``--server``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evotok.export.types import ModelInfo
from evotok.tokenize.report import Progress, RunReport
from evotok.tokenize.rundir import RunDir, model_record
from evotok.tokenize.sources import open_source
from evotok.tokenize.work import encode_inputs, read_chunk
from evotok.tools.backends import CodesBackend, preprocessing_record

# Called after each persisted chunk with (shard index, samples processed so far by this process).
ChunkHook = Callable[[int, int], None]


@dataclass(frozen=True)
class TokenizeConfig:
    dataset: Path | str | Sequence[Path | str]  # a folder, or tar / parquet files, folders or brace patterns
    out: Path
    shard_size: int = 1024
    chunk_size: int = 64
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    out_format: str = "npy"
    source_kind: str = "auto"  # auto, folder, webdataset, parquet
    image_column: str | None = None
    key_column: str | None = None


def open_run(cfg: TokenizeConfig, info: ModelInfo) -> RunDir:
    """Scan the source, then create ``cfg.out`` with the plan or check it holds the same run."""
    specs = [cfg.dataset] if isinstance(cfg.dataset, (str, Path)) else list(cfg.dataset)
    source = open_source(
        specs,
        cfg.source_kind,
        image_column=cfg.image_column,
        key_column=cfg.key_column,
    )
    run = RunDir(
        cfg.out,
        source,
        source.scan(),
        out_format=cfg.out_format,
        shard_size=cfg.shard_size,
        chunk_size=cfg.chunk_size,
        model=model_record(info),
        preprocessing=preprocessing_record(info),
    )
    run.open()
    return run


def tokenize(cfg: TokenizeConfig, backend: CodesBackend, on_chunk: ChunkHook | None = None) -> RunReport:
    """Run (or resume) a tokenization in this process; see ``evotok.tokenize.rundir`` for the output."""
    if not 0 <= cfg.rank < cfg.world_size:
        raise ValueError(f"rank {cfg.rank} outside world size {cfg.world_size}")
    run = open_run(cfg, backend.info)
    report = RunReport(engine="local" if cfg.world_size == 1 else "torchrun", shards_total=run.num_shards)
    mine = [i for i in range(run.num_shards) if i % cfg.world_size == cfg.rank]
    todo = [i for i in mine if not run.shard_done(i)]
    report.shards_skipped = [i for i in mine if i not in todo]
    for i in report.shards_skipped:
        run.clean_finished(i)
    total = sum(run.shard_images(i) for i in mine)
    done = total - sum(run.shard_images(i) for i in todo)
    progress = Progress(total, done, f"tokenize rank {cfg.rank}", cfg.progress)
    try:
        for i in todo:
            for chunk in run.chunks(i):
                if run.chunk_done(chunk):  # persisted before an interruption
                    progress.update(len(chunk))
                    continue
                positions = range(chunk.start, chunk.stop)
                inputs = read_chunk(
                    run.source,
                    [run.samples[p] for p in positions],
                    [run.duplicate_failure(p) for p in positions],
                )
                report.failures += run.write_chunk(chunk, encode_inputs(backend, inputs))
                report.samples_processed += len(chunk)
                progress.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(i, report.samples_processed)
            run.assemble_shard(i)
            report.shards_written.append(i)
    finally:
        report.seconds = progress.close()
        run.source.close()
    report.manifest_written = run.maybe_write_manifest()
    return report
