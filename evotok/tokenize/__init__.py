"""Dataset tokenization: images from a folder, WebDataset tars or Parquet -> resumable code shards.

One concept per module:

- ``sources``: folder / WebDataset / Parquet sources, scanned into a fixed, keyed plan and read by position;
- ``sinks``: the ``npy`` / ``parquet`` / ``webdataset`` shard formats;
- ``rundir``: the output folder (plan, persisted chunks, shards, manifests): atomic, resumable, deterministic;
- ``work``: the per-chunk read and encode steps every engine runs;
- ``local``: the ``local`` and ``torchrun`` engines; ``ray_engine``: the ``ray`` engine (Ray imported lazily);
- ``report``: counts, progress bar and the summary line; ``cli``: ``evotok tokenize``.
"""

from evotok.tokenize.cli import BackendSpec, main
from evotok.tokenize.local import TokenizeConfig, tokenize
from evotok.tokenize.report import RunReport
from evotok.tokenize.rundir import FORMAT_VERSION
from evotok.tokenize.sources import list_images

__all__ = ["FORMAT_VERSION", "BackendSpec", "RunReport", "TokenizeConfig", "list_images", "main", "tokenize"]
