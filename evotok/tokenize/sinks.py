"""Output formats for one shard of codes: ``npy``, ``parquet``, ``webdataset`` (``--format``).

Each writer gets the shard's codes ``(N, h, w, D)`` uint16 in plan order and one entry per row
(``key``, ``source``, ``size`` = original ``[W, H]``), and returns the bytes of the shard's data file. The bytes
depend only on their inputs (no timestamps, fixed compression), so a resumed or distributed run writes the same
file as a straight one.

- ``npy``: ``shard-NNNNN.npy``, the ``(N, h, w, D)`` array; keys and sizes are in the shard's ``.json``.
- ``parquet``: ``shard-NNNNN.parquet``, one row per image: ``key`` (string), ``codes``
  (fixed-size list of uint16, ``h*w*D`` long, row-major ``(h, w, D)``), ``shape`` ([h, w, D]), ``width`` and
  ``height`` (original size); the schema metadata key ``evotok`` holds JSON with the model name, weights
  hash, preprocessing and layout. Loads with ``pyarrow.parquet`` and ``datasets.load_dataset("parquet")``.
- ``webdataset``: ``shard-NNNNN.tar`` with ``<key>.codes.npy`` (``(h, w, D)`` uint16) and ``<key>.json``
  (key, source, original size, shape, model name and weights hash) per image; readable by
  ``webdataset.WebDataset``. A dot or ``%`` in a key's base name would end WebDataset's key early, so the tar
  member name escapes them as ``%2E`` / ``%25``; the ``.json`` always holds the key unchanged.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

OutputFormat = Literal["npy", "parquet", "webdataset"]
FORMATS: tuple[OutputFormat, ...] = ("npy", "parquet", "webdataset")
SUFFIX: dict[str, str] = {"npy": ".npy", "parquet": ".parquet", "webdataset": ".tar"}
LAYOUT = "(N, h, w, depth): row n = images[n]; depth d means the first d codes per position"

Codes = npt.NDArray[np.uint16]
Writer = Callable[[Codes, Sequence[dict[str, Any]], dict[str, Any]], bytes]


def npy_bytes(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_npy(codes: Codes, entries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    return npy_bytes(codes)


def write_parquet(codes: Codes, entries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, h, w, d = codes.shape
    flat = pa.array(np.ascontiguousarray(codes).reshape(-1), pa.uint16())
    sizes = [e["size"] or [None, None] for e in entries]
    table = pa.table(
        {
            "key": pa.array([e["key"] for e in entries], pa.string()),
            "codes": pa.FixedSizeListArray.from_arrays(flat, h * w * d),
            "shape": pa.array([[h, w, d]] * n, pa.list_(pa.int32(), 3)),
            "width": pa.array([s[0] for s in sizes], pa.int32()),
            "height": pa.array([s[1] for s in sizes], pa.int32()),
        }
    )
    table = table.replace_schema_metadata(
        {"evotok": json.dumps({**meta, "layout": "codes: row-major (h, w, D)"}, sort_keys=True)}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=max(n, 1))
    return buf.getvalue()


def webdataset_member_key(key: str) -> str:
    """The tar member key for ``key``: dots and ``%`` in its base name escaped (see the module docstring)."""
    head, sep, base = key.rpartition("/")
    return head + sep + base.replace("%", "%25").replace(".", "%2E")


def write_webdataset(codes: Codes, entries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    import webdataset as wds

    model = meta["model"]
    buf = io.BytesIO()
    # fixed owner, mode and mtime: the tar bytes depend only on the samples
    writer = wds.TarWriter(buf, user="evotok", group="evotok", mode=0o644, encoder=False, mtime=0.0)
    for row, entry in zip(codes, entries, strict=True):
        info = {
            "key": entry["key"],
            "source": entry["source"],
            "size": entry["size"],
            "shape": list(row.shape),
            "dtype": "uint16",
            "model": model["name"],
            "weights_hash": model["weights_hash"],
        }
        writer.write(
            {
                "__key__": webdataset_member_key(entry["key"]),
                "codes.npy": npy_bytes(row),
                "json": (json.dumps(info, sort_keys=True) + "\n").encode(),
            }
        )
    writer.close()
    return buf.getvalue()


WRITERS: dict[str, Writer] = {"npy": write_npy, "parquet": write_parquet, "webdataset": write_webdataset}
