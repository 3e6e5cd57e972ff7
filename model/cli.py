"""``evotok info``: print a model folder's config, hash and card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def info_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok info")
    p.add_argument("weights", type=Path, nargs="?", default=None)
    p.add_argument("--no-verify", action="store_true", help="skip the content-hash check")
    args = p.parse_args(argv)
    from evotok.model.checkpoint import CheckpointError, load_weights
    from evotok.paths import default_weights_dir

    try:
        loaded = load_weights(args.weights or default_weights_dir(), verify=not args.no_verify)
    except CheckpointError as e:
        sys.stderr.write(f"evotok info: {e}\n")
        return 1
    n = sum(t.numel() for t in loaded.state.values())
    sys.stdout.write(json.dumps({"name": loaded.config.name, "hash": loaded.hash, "values": n,
                                 "config": loaded.config.to_dict(), "provenance": loaded.card.get("provenance", {}),
                                 "metrics": loaded.card.get("metrics", {})}, indent=2) + "\n")
    return 0
