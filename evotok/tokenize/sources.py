"""Where images come from: a folder, WebDataset tar shards, or Parquet files (a Hugging Face dataset folder).

A source is *scanned* once into a fixed, ordered list of samples (the run's plan), then *read* by position.
Scanning never decodes images; reading returns the encoded bytes exactly as stored, or an ``ImageFailure``.

- ``folder``: image files under a directory (recursive, hidden entries skipped), sorted by relative POSIX
  path. Key: the relative path without its last suffix (``people/astronaut.jpg`` -> ``people/astronaut``).
- ``webdataset``: ``.tar`` shards (files, a directory searched recursively, or a brace pattern such as
  ``data/{00000..00009}.tar``), in sorted order, members in tar order. Members are grouped into samples the way
  ``webdataset`` groups them (key = the member path up to the first dot of its base name, consecutive members
  with one key form a sample); a sample's image is its first member whose extension is an image suffix
  (``jpg``, ``png``, ``webp``, ...). Key: the WebDataset ``__key__``.
- ``parquet``: ``.parquet`` files (files, a directory searched recursively as a Hub dataset is laid out, or a
  brace pattern), sorted, rows in file order. ``image_column`` holds the encoded bytes, either as a binary
  column or as the ``{bytes, path}`` struct that ``datasets.Image`` writes; default: the first of ``image``,
  ``jpg``, ``jpeg``, ``png``, ``webp`` present. Key: ``key_column`` (default ``key`` or ``__key__`` when
  present), else ``<file stem>_<row:08d>``.

A key seen a second time is a per-sample failure (``duplicate_key``), not an error: every key in the output
names exactly one sample.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evotok.tools.backends import ImageFailure

SourceKind = Literal["folder", "webdataset", "parquet"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("folder", "webdataset", "parquet")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
IMAGE_EXTS = frozenset(s[1:] for s in IMAGE_SUFFIXES)
DEFAULT_IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")
DEFAULT_KEY_COLUMNS = ("key", "__key__")


@dataclass(frozen=True)
class Sample:
    """One planned sample. ``file`` indexes ``Source.files``; ``loc``/``length`` locate the bytes in it:
    a tar member's data offset and size, a Parquet row number (length 0), nothing for a folder file."""

    key: str
    file: int
    loc: int = 0
    length: int = 0
    member: str = ""  # the tar member name (for messages)

    def to_list(self) -> list[Any]:
        return [self.key, self.file, self.loc, self.length, self.member]

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> Sample:
        return cls(str(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]))


@dataclass
class Source:
    """A scanned-or-to-be-scanned source: ``root`` + ``files`` relative to it (POSIX), plus reading options.

    Picklable and cheap to copy (Ray read tasks receive it)."""

    kind: SourceKind
    root: Path
    files: list[str]
    image_column: str | None = None
    key_column: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # open files and row groups stay in the process that opened them
        return state

    def record(self) -> dict[str, Any]:
        """What identifies the source in ``plan.json`` (relative names only: the folder may move)."""
        return {
            "kind": self.kind,
            "files": self.files,
            "image_column": self.image_column,
            "key_column": self.key_column,
        }

    # --- scan --------------------------------------------------------------------------------------------
    def scan(self) -> list[Sample]:
        if self.kind == "folder":
            return [Sample(_strip_suffix(name), i) for i, name in enumerate(self.files)]
        if self.kind == "webdataset":
            return [s for i in range(len(self.files)) for s in self._scan_tar(i)]
        return [s for i in range(len(self.files)) for s in self._scan_parquet(i)]

    def _scan_tar(self, i: int) -> list[Sample]:
        from webdataset.tariterators import base_plus_ext

        samples: list[Sample] = []
        current: str | None = None
        has_image = False
        with tarfile.open(self.root / self.files[i], "r:") as tf:  # uncompressed: members are seekable
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = base_plus_ext(m.name)
                if key is None:
                    continue
                if key != current:
                    if current is not None and not has_image:
                        samples.append(Sample(current, i, -1, 0, ""))  # a sample without an image member
                    current, has_image = key, False
                if not has_image and ext is not None and ext.lower() in IMAGE_EXTS:
                    samples.append(Sample(key, i, m.offset_data, m.size, m.name))
                    has_image = True
            if current is not None and not has_image:
                samples.append(Sample(current, i, -1, 0, ""))
        return samples

    def _scan_parquet(self, i: int) -> list[Sample]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.root / self.files[i])
        names = pf.schema_arrow.names
        if self.image_column is None:
            self.image_column = next((c for c in DEFAULT_IMAGE_COLUMNS if c in names), None)
            if self.image_column is None:
                raise ValueError(
                    f"{self.files[i]}: no image column among {list(DEFAULT_IMAGE_COLUMNS)}; "
                    f"pass --image-column (columns: {names})"
                )
        if self.image_column not in names:
            raise ValueError(f"{self.files[i]}: no column {self.image_column!r} (columns: {names})")
        _image_bytes_field(pf.schema_arrow.field(self.image_column).type, self.image_column)  # validates
        if self.key_column is None:
            self.key_column = next((c for c in DEFAULT_KEY_COLUMNS if c in names), "")
        stem = _strip_suffix(self.files[i])
        if not self.key_column:
            return [Sample(f"{stem}_{r:08d}", i, r) for r in range(pf.metadata.num_rows)]
        if self.key_column not in names:
            raise ValueError(f"{self.files[i]}: no key column {self.key_column!r} (columns: {names})")
        keys = pf.read(columns=[self.key_column]).column(0).to_pylist()
        return [Sample(f"{stem}_{r:08d}" if k is None else str(k), i, r) for r, k in enumerate(keys)]

    # --- read --------------------------------------------------------------------------------------------
    def locator(self, s: Sample) -> str:
        """A human-readable, relative place of the sample (for manifests and failures)."""
        if self.kind == "webdataset":
            return f"{self.files[s.file]}:{s.member or s.key}"
        if self.kind == "parquet":
            return f"{self.files[s.file]}#{s.loc}"
        return self.files[s.file]

    def read(self, samples: Sequence[Sample]) -> list[bytes | ImageFailure]:
        """The encoded bytes of each sample, in order; unreadable ones as ``ImageFailure``."""
        out: list[bytes | ImageFailure] = []
        for s in samples:
            try:
                out.append(self._read_one(s))
            except (OSError, ValueError, KeyError, IndexError) as exc:
                out.append(ImageFailure("unreadable_file", f"{type(exc).__name__}: {exc}"))
        return out

    def _read_one(self, s: Sample) -> bytes | ImageFailure:
        if self.kind == "folder":
            return (self.root / self.files[s.file]).read_bytes()
        if self.kind == "webdataset":
            if s.loc < 0:
                return ImageFailure(
                    "no_image", f"sample has no member with an image suffix {sorted(IMAGE_EXTS)}"
                )
            f = self._open_file(s.file)
            f.seek(s.loc)
            data: bytes = f.read(s.length)
            if len(data) != s.length:
                raise OSError(f"{self.files[s.file]} is shorter than when it was scanned")
            return data
        value = self._parquet_value(s.file, s.loc)
        if value is None:
            return ImageFailure("missing_image", f"{self.image_column} is null")
        return value

    def _open_file(self, i: int) -> Any:
        name = f"file:{i}"
        if self._cache.get("open_name") != name:
            if "open" in self._cache:
                self._cache["open"].close()
            self._cache["open"] = open(self.root / self.files[i], "rb")  # noqa: SIM115 - kept across reads
            self._cache["open_name"] = name
        return self._cache["open"]

    def _parquet_value(self, i: int, row: int) -> bytes | None:
        """Row ``row`` of the image column; keeps the last row group read (chunks read rows in order)."""
        import pyarrow.parquet as pq

        pf_key = f"pq:{i}"
        if pf_key not in self._cache:
            self._cache.clear()
            pf = pq.ParquetFile(self.root / self.files[i])
            starts = [0]
            for g in range(pf.metadata.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
            self._cache[pf_key] = (pf, starts)
        pf, starts = self._cache[pf_key]
        g = next(g for g in range(len(starts) - 1) if starts[g] <= row < starts[g + 1])
        group_key = f"pq:{i}:{g}"
        if self._cache.get("group_key") != group_key:
            assert self.image_column is not None, "scan() sets the image column"
            col = pf.read_row_group(g, columns=[self.image_column]).column(0)
            self._cache["group"] = _image_bytes_field(col.type, self.image_column)(col.combine_chunks())
            self._cache["group_key"] = group_key
        value = self._cache["group"][row - starts[g]].as_py()
        return None if value is None else bytes(value)

    def close(self) -> None:
        if "open" in self._cache:
            self._cache["open"].close()
        self._cache.clear()


def _image_bytes_field(typ: Any, column: str) -> Any:
    """A function mapping the image column to its bytes array: binary as is, ``{bytes, path}`` struct's field."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return lambda arr: arr
    if pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0:
        return lambda arr: pc.struct_field(arr, "bytes")
    raise ValueError(f"column {column!r} is {typ}; expected binary image bytes or a {{bytes, path}} struct")


def _strip_suffix(name: str) -> str:
    stem, _ = os.path.splitext(name)
    return stem


def list_images(dataset: Path) -> list[str]:
    """Relative POSIX paths of image files under ``dataset``, sorted (the folder source's fixed order)."""
    found = []
    for root, dirs, files in os.walk(dataset):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(root) / name).relative_to(dataset).as_posix())
    return sorted(found)


def _expand(spec: str) -> list[Path]:
    """A path, or a brace pattern (``{00000..00009}``) and/or shell glob, as existing paths."""
    from braceexpand import braceexpand

    out: list[Path] = []
    for pattern in braceexpand(spec):
        if glob.has_magic(pattern):
            out += [Path(p) for p in sorted(glob.glob(pattern))]
        else:
            out.append(Path(pattern))
    return out


def _files_under(folder: Path, suffix: str) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob(f"*{suffix}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def open_source(
    specs: Sequence[str | Path],
    kind: str = "auto",
    *,
    image_column: str | None = None,
    key_column: str | None = None,
) -> Source:
    """Resolve command-line inputs to a ``Source``: one folder, or tar/parquet files, folders and patterns.

    ``auto``: ``.tar`` / ``.parquet`` files by suffix; a folder holding ``.tar`` files is WebDataset (an
    ``img2dataset`` output also holds ``.parquet`` metadata), else one holding ``.parquet`` files is Parquet,
    else it is a folder of images."""
    if kind not in ("auto", *SOURCE_KINDS):
        raise ValueError(f"unknown source kind {kind!r}; choose one of auto, {', '.join(SOURCE_KINDS)}")
    if not specs:
        raise ValueError("no source given")
    paths = [p for spec in specs for p in _expand(str(spec))]
    missing = [str(p) for p in paths if not p.exists()]
    if missing or not paths:
        raise ValueError(f"source not found: {', '.join(missing) or ', '.join(map(str, specs))}")
    dirs = [p for p in paths if p.is_dir()]
    if kind == "auto":
        kind = _detect(paths)
    assert kind in SOURCE_KINDS
    if kind == "folder":
        if len(paths) != 1 or not dirs:
            raise ValueError("a folder source is exactly one directory")
        return Source(
            "folder", paths[0].resolve(), list_images(paths[0])
        )  # absolute: Ray tasks run elsewhere
    suffix = ".tar" if kind == "webdataset" else ".parquet"
    files: list[Path] = []
    for p in paths:
        files += _files_under(p, suffix) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"no {suffix} files in {', '.join(map(str, specs))}")
    resolved = [f.resolve() for f in files]
    root = (
        dirs[0].resolve()
        if len(paths) == 1 and dirs
        else Path(os.path.commonpath([f.parent for f in resolved]))
    )
    rel = sorted({f.relative_to(root).as_posix() for f in resolved})
    return Source(kind, root, rel, image_column=image_column, key_column=key_column)


def _detect(paths: list[Path]) -> SourceKind:
    suffixes = {p.suffix.lower() for p in paths if p.is_file()}
    if suffixes == {".tar"}:
        return "webdataset"
    if suffixes == {".parquet"}:
        return "parquet"
    if suffixes:
        raise ValueError(f"cannot tell the source kind of {sorted(suffixes)} files; pass --source")
    if any(_files_under(p, ".tar") for p in paths):
        return "webdataset"
    if any(_files_under(p, ".parquet") for p in paths):
        return "parquet"
    if any(_files_under(p, ".arrow") for p in paths):
        raise ValueError(
            "this looks like a `datasets` save_to_disk folder (.arrow files); write it as Parquet first: "
            "`ds.to_parquet('data/train.parquet')`, or point at the Hub's Parquet files"
        )
    return "folder"
