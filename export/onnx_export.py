"""Export a model folder to four ONNX graphs plus ``manifest.json``.

Layout written by ``export_onnx(weights_dir, out_dir)``::

    out_dir/encoder.onnx            images (B,H,W,3) uint8 -> latent (B,h,w,C) float32
    out_dir/quantizer.onnx          latent -> codes (B,h,w,D) int64 (fp32 always)
    out_dir/decoder.onnx            codes (B,h,w,pixel_depth) int64 -> images (B,H,W,3) uint8
    out_dir/semantic_decoder.onnx   codes (B,h,w,semantic_depth) int64 -> features (B,h*w,C) float32
    out_dir/<graph>.<fp16|bf16>.onnx  (only with ``half_precision``) the same graphs computing in half
                                    precision inside (boundaries unchanged), for TensorRT strongly typed builds
    out_dir/manifest.json           see ``Manifest``

Files are single self-contained ``.onnx`` files (no external data). The default exporter is the legacy
TorchScript one: on the shipped model it exports all four graphs in ~1.5 s against ~17 s for the dynamo
exporter, with identical codes in ONNX Runtime (measured with torch 2.13, onnxruntime 1.32); the dynamo
exporter is the fallback if the legacy one is unavailable or fails, and can be forced.

The folder is written to a temporary sibling and renamed into place, so readers never see a half-written
folder, and ``ensure_exported`` serialises concurrent exporters with a file lock.

A model folder may carry its own export in ``<weights>/onnx/`` (the shipped model does, so the wheel serves
without torch; ``scripts/ship_engines.sh`` writes it). ``ensure_exported`` reads it in place, never writes
there, and only when its manifest names these weights' hash and every graph file matches its recorded
SHA-256; a stale one is ignored. Exporting needs torch (the ``torch`` extra): without it ``ensure_exported``
raises ``ExporterUnavailableError``, whose message names the extra to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "evotok-onnx/1"
DEFAULT_OPSET = 17
BUNDLED_EXPORT_DIR = "onnx"  # <weights>/onnx/: an export that ships with the model folder (read-only)
Exporter = Literal["legacy", "dynamo"]
HalfPrecision = Literal["fp16", "bf16"]


@dataclass
class GraphEntry:
    """One exported graph: file name, content hash and its boundary tensors."""

    file: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    precision: str = "fp32"  # compute precision inside the graph
    variants: dict[str, str] = field(default_factory=dict)  # precision -> file of half-precision variants
    variant_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    format: str
    model_name: str
    weights_hash: str
    opset: int
    exporter: str
    precision: str  # precision of the default graphs (always fp32); the quantizer is fp32 in every variant
    image_size: int
    grid: int
    num_depths: int
    codebook_size: int
    pixel_depth: int
    semantic_depth: int
    semantic_dim: int
    image_layout: str
    codes_layout: str
    graphs: dict[str, GraphEntry]
    versions: dict[str, str]
    export_seconds: float
    parity: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        d = dict(data)
        d["graphs"] = {k: GraphEntry(**v) for k, v in d["graphs"].items()}
        return cls(**d)

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(folder / MANIFEST_FILE)


def read_manifest(folder: Path | str) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return Manifest.from_dict(data)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - the cpu/gpu extra is always installed with export
        pass
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _export_one(graph: Any, example: Any, path: Path, in_name: str, out_name: str, opset: int, exporter: Exporter) -> str:
    """Write one single-file ONNX graph; returns the exporter that succeeded."""
    import torch

    if exporter == "legacy":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # legacy-exporter deprecation notice
                torch.onnx.export(
                    graph, (example,), str(path), dynamo=False, opset_version=opset,
                    input_names=[in_name], output_names=[out_name],
                    dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}},
                )
            return "legacy"
        except Exception as e:
            log.warning("legacy ONNX export of %s failed (%s); retrying with the dynamo exporter", path.name, e)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        graph, (example,), dynamo=True, opset_version=max(opset, 18), input_names=[in_name],
        output_names=[out_name], dynamic_shapes=({0: batch},), verbose=False,
    )
    if program is None:  # pragma: no cover - only when f= is given
        raise RuntimeError(f"dynamo export of {path.name} returned no program")
    program.save(str(path), external_data=False)
    return "dynamo"


def export_onnx(
    weights_dir: Path | str,
    out_dir: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "legacy",
    half_precision: tuple[HalfPrecision, ...] = (),
) -> Manifest:
    """Export the four graphs of ``weights_dir`` into ``out_dir`` (replaced atomically) and write the manifest."""
    import torch

    from evotok.export.graphs import GRAPH_NAMES, build_graph, example_input, graph_specs
    from evotok.model.checkpoint import load_model

    t0 = time.perf_counter()
    model, loaded = load_model(weights_dir)
    cfg = loaded.config
    specs = graph_specs(cfg)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is a shared cache
    try:
        used: set[str] = set()
        entries: dict[str, GraphEntry] = {}
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
        for name in GRAPH_NAMES:
            spec = specs[name]
            in_name, out_name = spec.inputs[0].name, spec.outputs[0].name
            example = example_input(name, cfg)
            path = tmp / f"{name}.onnx"
            with torch.no_grad():
                used.add(_export_one(build_graph(name, model), example, path, in_name, out_name, opset, exporter))
            entry = GraphEntry(
                file=path.name, sha256=file_sha256(path),
                inputs=[t.to_dict() for t in spec.inputs], outputs=[t.to_dict() for t in spec.outputs],
            )
            if name != "quantizer":  # the quantizer stays fp32 in every variant
                for prec in half_precision:
                    vpath = tmp / f"{name}.{prec}.onnx"
                    with torch.no_grad():
                        graph = build_graph(name, model, dtypes[prec])
                        used.add(_export_one(graph, example, vpath, in_name, out_name, opset, exporter))
                    entry.variants[prec] = vpath.name
                    entry.variant_sha256[prec] = file_sha256(vpath)
            entries[name] = entry
        manifest = Manifest(
            format=MANIFEST_FORMAT, model_name=cfg.name, weights_hash=loaded.hash, opset=opset,
            exporter="+".join(sorted(used)), precision="fp32", image_size=cfg.image_size, grid=cfg.grid,
            num_depths=cfg.num_depths, codebook_size=cfg.codebook_size, pixel_depth=cfg.pixel_depth,
            semantic_depth=cfg.semantic_depth, semantic_dim=cfg.semantic_decoder.out_dim,
            image_layout="(B, H, W, 3) uint8 RGB in [0, 255]; inside the encoder x / 127.5 - 1 in [-1, 1]",
            codes_layout="(B, h, w, d) int64, depth last, row-major positions; value K is the null code (zero row)",
            graphs=entries, versions=_versions(), export_seconds=round(time.perf_counter() - t0, 3),
        )
        manifest.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s in %.1f s", cfg.name, loaded.hash[:12], out, manifest.export_seconds)
    return manifest


def default_export_dir(weights_dir: Path | str, cache_dir: Path | str | None = None) -> Path:
    """``<cache>/<model-name>-<hash12>/`` from the model card (cheap: no tensors are read)."""
    from evotok.model.card import read_card
    from evotok.paths import default_cache_dir

    card = read_card(weights_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"{card['name']}-{str(card['hash'])[:12]}"


def is_current(folder: Path, weights_hash: str) -> bool:
    """True when ``folder`` holds a readable manifest for ``weights_hash`` and every graph file it lists."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if manifest.weights_hash != weights_hash:
        return False
    files = [e.file for e in manifest.graphs.values()] + [f for e in manifest.graphs.values() for f in e.variants.values()]
    return all((folder / f).is_file() for f in files)


class ExporterUnavailableError(RuntimeError):
    """An ONNX export is needed but torch (the ``torch`` extra) is not installed; the message says what to do."""


def bundled_export(weights_dir: Path | str, weights_hash: str) -> Path | None:
    """``<weights>/onnx/`` when it is an export of exactly these weights: the manifest's weights hash is
    ``weights_hash`` and every graph file has the SHA-256 the manifest records. Otherwise None (a stale or
    altered folder is logged and never served)."""
    folder = Path(weights_dir) / BUNDLED_EXPORT_DIR
    if not (folder / MANIFEST_FILE).is_file():
        return None
    if not is_current(folder, weights_hash):
        log.warning("%s is not an export of these weights (%s); ignoring it", folder, weights_hash[:12])
        return None
    manifest = read_manifest(folder)
    for entry in manifest.graphs.values():
        expected = {entry.file: entry.sha256} | {entry.variants[p]: s for p, s in entry.variant_sha256.items()}
        for file, sha in expected.items():
            if file_sha256(folder / file) != sha:
                log.warning("%s: %s does not match its manifest; ignoring the bundled export", folder, file)
                return None
    return folder


def require_exporter(weights_dir: Path | str, folder: Path) -> None:
    """Raise ``ExporterUnavailableError`` unless torch and onnx can be imported (what ``export_onnx`` needs)."""
    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExporterUnavailableError(
            f"no ONNX engines for the model at {weights_dir} (in {folder} or {Path(weights_dir) / BUNDLED_EXPORT_DIR}), "
            f"and exporting them needs PyTorch ({', '.join(missing)} not installed). Install the export extra: "
            "pip install 'evotok-serve[cpu,torch]' ([gpu,torch] on GPU hosts). On a machine without a GPU let pip "
            "take torch's CPU build (--extra-index-url https://download.pytorch.org/whl/cpu, or "
            "-c constraints-cpu.txt in a checkout); otherwise it pulls a multi-GB CUDA build. "
            f"Then run `evotok export --weights {weights_dir}` or start again."
        )


def ensure_exported(weights_dir: Path | str, cache_dir: Path | str | None = None) -> Path:
    """The export folder for ``weights_dir``: the cache's, else the model folder's own ``onnx/`` export
    (``bundled_export``), else the cache's after exporting (needs torch: ``ExporterUnavailableError``).

    Processes starting together (API replicas, workers) serialise on ``<folder>.lock`` (``flock``): the first
    exports, the others wait and then find the folder current.
    """
    import fcntl

    from evotok.model.card import read_card

    folder = default_export_dir(weights_dir, cache_dir)
    weights_hash = str(read_card(weights_dir)["hash"])
    if is_current(folder, weights_hash):
        return folder
    bundled = bundled_export(weights_dir, weights_hash)
    if bundled is not None:
        return bundled
    require_exporter(weights_dir, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_current(folder, weights_hash):
                log.info("no current ONNX export at %s; exporting", folder)
                export_onnx(weights_dir, folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder
