"""The ``evotok`` command: one entry point, subcommands imported lazily.

Usage::

    evotok serve --host 127.0.0.1 --port 8000     # HTTP API (embedded batcher unless EVOTOK_QUEUE=redis)
    evotok worker                                 # Redis Streams inference worker
    evotok export --out DIR [--check] [--trt]     # ONNX (and TensorRT) engines + manifest
    evotok data                                   # offline photo set + split manifest
    evotok train --recipe evotok-small --out runs/evotok-small --resume --export-weights DIR
    evotok refit --weights DIR                    # closed-form pixel output bias (the colour cast)
    evotok eval --weights weights/evotok-small
    evotok convert official.pt --out weights/evotok-official
    evotok info weights/evotok-small              # config and content hash of a model folder
    evotok encode IMG... -o codes.npy [--server URL]
    evotok decode codes.npy -o out.png [--server URL]
    evotok tokenize SOURCE... --out DIR [--format npy|parquet|webdataset] [--engine local|torchrun|ray]
    evotok bench {service,runtime,quantizer,queue,tokenize}

Each subcommand lives in its own area and owns its argument parsing (``main(argv) -> int``), so
``evotok encode`` never imports FastAPI and ``evotok serve`` never imports the training code.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("evotok.service.cli", "serve_main", "run the HTTP API"),
    "worker": ("evotok.service.cli", "worker_main", "run a Redis Streams inference worker"),
    "export": ("evotok.export.cli", "main", "export ONNX/TensorRT engines and check parity"),
    "train": ("evotok.model.train.cli", "train_main", "train a model (one process or torchrun)"),
    "refit": ("evotok.model.train.cli", "refit_main", "refit a model folder's pixel output bias (the colour cast)"),
    "eval": ("evotok.model.train.cli", "eval_main", "evaluate a checkpoint on the held-out split"),
    "data": ("evotok.model.train.cli", "data_main", "install the offline photo set and write the split"),
    "convert": ("evotok.model.convert", "main", "convert an official EvoTok checkpoint"),
    "info": ("evotok.model.cli", "info_main", "print a checkpoint's config and hash"),
    "encode": ("evotok.tools.codes_cli", "encode_main", "encode images to codes (.npy/.json)"),
    "decode": ("evotok.tools.codes_cli", "decode_main", "decode codes to a PNG"),
    "tokenize": ("evotok.tokenize", "main", "tokenize a folder, WebDataset or Parquet into code shards"),
    "bench": ("evotok.bench", "main", "benchmarks (service, runtime, quantizer, queue, tokenize)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: evotok <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `evotok <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        sys.stdout.write(_usage() + "\n")
        return 0
    if args[0] in {"-V", "--version"}:
        from evotok import __version__

        sys.stdout.write(f"evotok {__version__}\n")
        return 0
    name = args[0]
    if name not in COMMANDS:
        sys.stderr.write(f"evotok: unknown command {name!r}\n\n{_usage()}\n")
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
