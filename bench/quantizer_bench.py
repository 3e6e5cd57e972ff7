"""``evotok bench quantizer``: the residual quantizer alone, ours vs ``vector-quantize-pytorch``'s ResidualVQ.

Same codebooks in every contender (copied into ResidualVQ's layers), shipped sizes by default (16 depths x
1024 codes x 32 dims, 256 positions per image), batches of 1/8/32 images:

- ``ours-torch``: ``ResidualQuantizer.forward`` in eval mode (what the torch runtime runs);
- ``ours-ort``: the exported ``quantizer.onnx`` graph in ONNX Runtime CPU (what the service runs);
- ``residualvq``: ``vector_quantize_pytorch.ResidualVQ`` in eval mode.

Calls are interleaved; wall and CPU time are both measured (see ``runtime_bench``). Codes of every contender
are compared with ``ours-torch`` (fraction identical).

Usage::

    evotok bench quantizer [--weights DIR] [--batches 1,8,32] [--threads 1] [--json out.json]

Without weights the codebooks are seeded from Gaussian latents (k-means-style initialisation).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np


def _sibling(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"evotok_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quantizer_and_latents(weights: Path | None, n_max: int) -> tuple[Any, Any, str]:
    import torch

    from evotok.model.config import get_preset
    from evotok.model.quantizer import ResidualQuantizer

    gen = torch.Generator().manual_seed(0)
    if weights is not None and (weights / "model.safetensors").is_file():
        from evotok.model.checkpoint import load_model
        from evotok.model.evotok import images_to_tensor

        model, loaded = load_model(weights)
        cfg = loaded.config
        imgs = np.random.default_rng(0).integers(0, 256, (max(1, n_max // cfg.grid**2), cfg.image_size,
                                                            cfg.image_size, 3), dtype=np.uint8)
        with torch.inference_mode():
            latent = model.encode_latent(images_to_tensor(imgs)).reshape(-1, cfg.latent_dim)
        return model.quantize, latent, f"{cfg.name} ({loaded.hash[:12]}), latents of random images"
    qcfg = get_preset("evotok-small").quantizer
    rq = ResidualQuantizer(qcfg).eval()
    latent = torch.randn(n_max, qcfg.dim, generator=gen)
    residual = latent.clone()
    with torch.no_grad():
        for book in rq.codebooks:
            pick = residual[torch.randint(0, residual.shape[0], (book.size,), generator=gen)]
            book.weight[: book.size] = pick
            residual = residual - book.weight[book.nearest(residual)]
    return rq, latent, "evotok-small sizes, codebooks seeded from Gaussian latents"


def _residualvq(rq: Any) -> Any:
    import torch
    from vector_quantize_pytorch import ResidualVQ

    cfg = rq.cfg
    rvq = ResidualVQ(dim=cfg.dim, num_quantizers=cfg.num_depths, codebook_size=cfg.codebook_size).eval()
    with torch.no_grad():
        for layer, book in zip(rvq.layers, rq.codebooks, strict=True):
            layer._codebook.embed.copy_(book.codes.unsqueeze(0))
            if hasattr(layer._codebook, "initted"):
                layer._codebook.initted.fill_(True)
    return rvq


def _ort_session(rq: Any, folder: Path, threads: int) -> Any:
    import onnxruntime as ort
    import torch

    from evotok.export.graphs import QuantizerGraph

    graph = QuantizerGraph(SimpleNamespace(quantize=rq)).eval()
    path = folder / "quantizer.onnx"
    with torch.no_grad():
        torch.onnx.export(graph, (torch.zeros(2, 16, 16, rq.cfg.dim),), str(path), dynamo=False, opset_version=17,
                          input_names=["latent"], output_names=["codes"],
                          dynamic_axes={"latent": {0: "batch"}, "codes": {0: "batch"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(weights: Path | None, batches: list[int], threads: int, budget_s: float, positions: int) -> dict[str, Any]:
    import torch
    import vector_quantize_pytorch

    rb = _sibling("runtime_bench")
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    rq, latent, source = _quantizer_and_latents(weights, max(batches) * positions)
    rq.eval()
    rvq = _residualvq(rq)
    side = round(positions**0.5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sess = _ort_session(rq, Path(tmp), threads)
        for b in batches:
            x = latent[: b * positions].reshape(b, side, side, -1).contiguous()
            flat = x.reshape(b, positions, -1)
            xn = x.numpy()

            def ours(x: Any = x) -> Any:
                with torch.inference_mode():
                    return rq(x).codes

            def theirs(flat: Any = flat) -> Any:
                with torch.inference_mode():
                    return rvq(flat)[1]

            def onnx(xn: Any = xn) -> Any:
                return sess.run(None, {"latent": xn})[0]

            ref = ours().reshape(b, positions, -1)
            same_rvq = float((theirs() == ref).float().mean())
            same_ort = float((torch.from_numpy(onnx()).reshape(b, positions, -1) == ref).float().mean())
            t = rb.interleaved({"ours-torch": ours, "ours-ort": onnx, "residualvq": theirs}, budget_s)
            row: dict[str, Any] = {"batch": b, "positions": b * positions, "codes_identical_residualvq": same_rvq,
                                   "codes_identical_ort": same_ort}
            for k, (wall, cpu) in t.items():
                row[f"{k}_ms"] = 1000 * wall
                row[f"{k}_cpu_ms"] = 1000 * cpu
            for k in ("ours-torch", "ours-ort"):
                row[f"{k}_speedup"] = t["residualvq"][0] / t[k][0]
                row[f"{k}_speedup_cpu"] = t["residualvq"][1] / t[k][1]
            rows.append(row)
            sys.stderr.write(f"b={b}: ours-torch {row['ours-torch_ms']:.1f} ms, ours-ort {row['ours-ort_ms']:.1f} ms, "
                             f"ResidualVQ {row['residualvq_ms']:.1f} ms; identical {same_rvq:.6f}/{same_ort:.6f}\n")
    cfg = rq.cfg
    return {
        "source": source, "depths": cfg.num_depths, "codebook_size": cfg.codebook_size, "dim": cfg.dim,
        "positions_per_image": positions, "threads": threads, "rows": rows,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "versions": {"torch": torch.__version__,
                     "vector_quantize_pytorch": getattr(vector_quantize_pytorch, "__version__", "")
                     or _dist_version("vector-quantize-pytorch")},
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"{r['depths']} depths x {r['codebook_size']} codes x {r['dim']} dims, {r['positions_per_image']} positions "
        f"per image; {r['source']}; {r['threads']} thread(s); load average {r['loadavg_before'][0]:.1f} -> "
        f"{r['loadavg_after'][0]:.1f}; GLIBC_TUNABLES {'set' if r['glibc_tunables'] else 'unset'}; torch "
        f"{r['versions']['torch']}, vector-quantize-pytorch {r['versions']['vector_quantize_pytorch']}",
        "",
        "| batch (images) | ours torch ms | ours ORT ms | ResidualVQ ms | speedup torch (wall / CPU) "
        "| speedup ORT (wall / CPU) | identical codes vs ResidualVQ | identical codes ORT |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in r["rows"]:
        lines.append(
            f"| {w['batch']} | {w['ours-torch_ms']:.1f} | {w['ours-ort_ms']:.1f} | {w['residualvq_ms']:.1f} | "
            f"{w['ours-torch_speedup']:.2f}x / {w['ours-torch_speedup_cpu']:.2f}x | "
            f"{w['ours-ort_speedup']:.2f}x / {w['ours-ort_speedup_cpu']:.2f}x | "
            f"{100 * w['codes_identical_residualvq']:.4f}% | {100 * w['codes_identical_ort']:.4f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok bench quantizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="model folder (default: the shipped model if present)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--positions", type=int, default=256, help="positions per image (16 x 16)")
    p.add_argument("--budget-s", type=float, default=4.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    weights = args.weights
    if weights is None:
        from evotok.paths import default_weights_dir

        weights = default_weights_dir()
    result = run(weights, [int(b) for b in args.batches.split(",")], args.threads, args.budget_s, args.positions)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
