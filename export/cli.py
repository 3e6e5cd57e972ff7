"""``evotok export``: ONNX graphs + manifest, optional parity check and TensorRT engines.

    evotok export [--weights DIR] [--out DIR] [--check] [--trt [--precision fp16|bf16]] [--force]

Without ``--out`` the folder is ``<cache>/<model-name>-<hash12>/`` (what ``evotok serve`` uses); an existing
current export there is reused unless ``--force``. ``--check`` compares ONNX Runtime CPU with PyTorch fp32
and records the result in the manifest (exit status 1 when it fails). ``--trt`` also exports half-precision
variants and builds TensorRT engines for this host's GPU (needs the ``trt`` extra and a GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evotok export", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="model folder (default: the shipped model)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <cache>/<name>-<hash12>)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root for the default --out")
    p.add_argument("--check", action="store_true", help="parity vs PyTorch fp32; recorded in the manifest")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines (GPU host with TensorRT)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16",
                   help="TensorRT precision of encoder and decoders (the quantizer is always fp32); fp32 gives "
                        "the reference codes, fp16/bf16 flip a fraction of them (see docs/export.md)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    p.add_argument("--force", action="store_true", help="export even if a current export exists")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for --check")
    p.add_argument("--golden", action="store_true",
                   help="only (re)write <weights>/golden.npz: fp32 torch reference codes of the sample photos")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from evotok.export.onnx_export import default_export_dir, export_onnx, is_current, read_manifest
    from evotok.model.card import read_card
    from evotok.paths import default_weights_dir

    weights = args.weights or default_weights_dir()
    if args.golden:
        from evotok.export.golden import write_golden

        write_golden(weights)
        return 0
    out = args.out or default_export_dir(weights, args.cache_dir)
    half = (args.precision,) if args.trt and args.precision != "fp32" else ()
    t0 = time.perf_counter()
    current = is_current(out, str(read_card(weights)["hash"]))
    if current and half and any(args.precision not in g.variants for n, g in read_manifest(out).graphs.items()
                                if n != "quantizer"):
        current = False
    if current and not args.force:
        log.info("%s is current for these weights; not re-exporting (use --force)", out)
    else:
        export_onnx(weights, out, opset=args.opset, exporter=args.exporter, half_precision=half)
    status = 0
    if args.check:
        from evotok.export.parity import check_export

        report = check_export(weights, out, threads=args.threads)
        sys.stdout.write(json.dumps({"parity": report.to_dict()}, indent=2) + "\n")
        status = 0 if report.passed else 1
    if args.trt:
        from evotok.export.tensorrt import TensorRTUnavailableError, build_engines

        try:
            folder = build_engines(out, args.precision)
        except TensorRTUnavailableError as e:
            log.error("%s", e)
            return 3
        log.info("TensorRT engines in %s", folder)
    sys.stdout.write(f"{out}\n")
    log.info("done in %.1f s", time.perf_counter() - t0)
    return status
