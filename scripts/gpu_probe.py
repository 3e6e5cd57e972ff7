"""Where does held-out PSNR go with more compute than 2 CPU cores have? A scaling probe for one GPU.

Trains several ``evotok-small`` variants side by side on one CUDA device, each in its own process for a fixed
wall time, and evaluates each on the held-out crops every ``--eval-every`` steps with ``evotok eval``'s ``evaluate`` (same
crops, uint8 reconstructions, fp32; no FID): PSNR at prefix depth 1..4, the unquantized latent's PSNR (the
pixel decoder's ceiling), the colour error at depth 4 and the semantic cosine at depth 16. (The rows in
``docs/eval/gpu-probe/`` came from a copy of those formulas run on the GPU before the probe called
``evaluate`` itself.) One JSON line
per evaluation goes to ``OUT/probe.jsonl``; ``OUT/probe.md`` holds the table (``docs/eval/ablation.md``).

The objective is the shipped stage 2's (MSE + perceptual x0.1 + cell colour x50 + semantic + commitment,
stratified prefix depths, 128px crops), from scratch, lr 4e-4 with 100 warm-up steps, then a cosine to 0.05x
over the *wall time* (each variant ends fully decayed whatever its step rate; earlier points saw a higher lr).
Not part of the shipped recipe and not deterministic across devices: it answers "is the 2-core budget or the
design the limit", nothing more.

    python scripts/gpu_probe.py --data data/split.json --minutes 6 --out OUT
    python scripts/gpu_probe.py --plot docs/eval/gpu-probe.png OUT1/probe.jsonl OUT2/probe.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# name -> (TrainConfig overrides, model config overrides)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "b8": ({"batch_size": 8}, {}),  # the CPU recipe's batch: a curve in the CPU run's steps
    "b64": ({"batch_size": 64}, {}),  # 8x the crops per step
    "b128": ({"batch_size": 128}, {}),  # alone on the GPU: the most crops in the time
    "b64-encoder-all": ({"batch_size": 64}, {"trainable_from_block": 0}),  # every encoder block trained
    "b64-decoder-v1": ({"batch_size": 64}, {"decoder": "v1"}),  # the 12 GFLOP decoder of the first model
}


def train_config(name: str, data: str, out: Path) -> Any:
    from evotok.model.train.trainer import RECIPES, TrainConfig

    fields = dict(RECIPES["evotok-small-colour"])
    fields.update(
        out=str(out / name), data=data, steps=10**7, max_minutes=10**6, crop=128, final_crop=0, init_from="",
        lr=4e-4, warmup_steps=100, refit_output=False, threads=2, seed=0,
        ckpt_every=10**9, sample_every=10**9, log_every=100, amp=False,
    )
    fields.update(VARIANTS[name][0])
    return TrainConfig.from_dict(fields)


def model_config(name: str) -> Any:
    from evotok.model.config import get_preset

    cfg = get_preset("evotok-small")
    over = VARIANTS[name][1]
    if "trainable_from_block" in over:
        cfg = cfg.replace(encoder=dataclasses.replace(cfg.encoder, trainable_from_block=over["trainable_from_block"]))
    if over.get("decoder") == "v1":
        cfg = cfg.replace(pixel_decoder=get_preset("evotok-small-v1").pixel_decoder)
    return cfg


def evaluate_row(trainer: Any, crops: Any) -> dict[str, float]:
    """``evotok eval``'s own ``evaluate`` on the trainer's device (no FID): PSNR@1..pd, unquantized, colour@pd,
    semantic cosine at the last depth."""
    from evotok.model.train.evaluate import evaluate

    result = evaluate(trainer.model, "", crops, trainer.teacher, fid=False, batch=26)
    trainer.model.train()
    pd = result.pixel_depth
    out = {f"psnr@{d}": round(v, 3) for d, v in enumerate(result.psnr_by_depth, start=1)}
    out["psnr_unquantized"] = round(float(result.psnr_unquantized or 0.0), 3)
    out[f"colour@{pd}"] = round(result.colour_error_by_depth[pd - 1], 3)
    out[f"sem_cos@{len(result.semantic_cos_by_depth)}"] = round(result.semantic_cos_by_depth[-1], 4)
    return out


def run_variant(name: str, args: argparse.Namespace, results: Any) -> None:
    import torch

    from evotok.model.evotok import images_to_tensor
    from evotok.model.train.data import CropSampler, held_out_crops
    from evotok.model.train.photos import load_split
    from evotok.model.train.trainer import Trainer, load_train_images

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tcfg = train_config(name, args.data, Path(args.out))
    trainer = Trainer(tcfg, model_config(name))
    clock = {"start": time.monotonic()}

    def lr_at(step: int) -> float:  # warm-up by steps, then a cosine over the wall-time budget
        if step < tcfg.warmup_steps:
            return tcfg.lr * (step + 1) / tcfg.warmup_steps
        frac = min(1.0, (time.monotonic() - clock["start"]) / 60 / args.minutes)
        return tcfg.lr * (tcfg.lr_min_ratio + (1 - tcfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    trainer.lr_at = lr_at
    trainer.sampler = CropSampler(load_train_images(tcfg.data), tcfg.crop)
    crops = held_out_crops(load_split(Path(tcfg.data)).held_out, 256)
    # crops are a pure function of the step: sample ahead in threads while the GPU runs
    pool = ThreadPoolExecutor(args.loader_threads)
    ahead: dict[int, Future[Any]] = {}
    start = clock["start"] = time.monotonic()
    step = 0
    while True:
        for s in range(step, step + 2 * args.loader_threads):
            if s not in ahead:
                seed = tcfg.seed * 1_000_003 + s
                ahead[s] = pool.submit(trainer.sampler.batch, tcfg.batch_size, seed, tcfg.crop)
        batch = images_to_tensor(ahead.pop(step).result()).to(trainer.device)
        trainer.step = step
        last = trainer.train_step(batch)
        step += 1
        minutes = (time.monotonic() - start) / 60
        out_of_time = minutes >= args.minutes
        if step % args.eval_every == 0 or out_of_time:
            row = {"variant": name, "step": step, "images": step * tcfg.batch_size, "minutes": round(minutes, 2),
                   "lr": trainer.lr_at(step), "loss": round(last["loss"], 4), **evaluate_row(trainer, crops)}
            results.put(row)
        if out_of_time or not math.isfinite(last["loss"]):
            break
    pool.shutdown(cancel_futures=True)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """PSNR@4 (solid) and the unquantized latent's PSNR (dotted) against training crops seen, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, name in enumerate(sorted({r["variant"] for r in rows})):
        pts = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["images"])
        x = [r["images"] / 1000 for r in pts]
        axes[0].plot(x, [r["psnr@4"] for r in pts], "o-", color=f"C{i}", label=f"{name} depth 4")
        axes[0].plot(x, [r["psnr_unquantized"] for r in pts], ":", color=f"C{i}")
        axes[1].plot(x, [r["psnr@4"] - r["psnr@1"] for r in pts], "o-", color=f"C{i}", label=name)
    axes[0].axhline(23.0, color="k", lw=0.8, ls="--", label="target 23 dB")
    axes[0].set(xlabel="128px training crops seen (thousands)", ylabel="held-out PSNR (dB)",
                title="Depth 4 (solid) and unquantized latent (dotted)")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.5, color="k", lw=0.8, ls="--", label="target 1.5 dB")
    axes[1].set(xlabel="128px training crops seen (thousands)", ylabel="PSNR@4 - PSNR@1 (dB)",
                title="What depths 2-4 add")
    axes[1].legend(fontsize=7)
    fig.suptitle("evotok-small from scratch on one H200 (scripts/gpu_probe.py; 78 held-out crops)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/split.json")
    ap.add_argument("--out", default="runs/gpu-probe")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time of each variant (they run side by side)")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--loader-threads", type=int, default=3)
    ap.add_argument("--plot", type=Path, help="only draw this figure from the JSONL files given")
    ap.add_argument("jsonl", nargs="*", type=Path)
    args = ap.parse_args()
    if args.plot:
        plot([json.loads(line) for f in args.jsonl for line in f.read_text().splitlines() if line], args.plot)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=run_variant, args=(n, args, results)) for n in args.variants.split(",")]
    for p in procs:
        p.start()
    rows: list[dict[str, Any]] = []
    with (out / "probe.jsonl").open("a") as fh:
        while any(p.is_alive() for p in procs) or not results.empty():
            try:
                row = results.get(timeout=1.0)
            except Exception:  # queue.Empty
                continue
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(json.dumps(row), flush=True)
    for p in procs:
        p.join()
    lines = ["| variant | step | crops | min | psnr@1 | psnr@4 | @4-@1 | unquantized | colour@4 | cos@16 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["variant"], r["step"])):
        lines.append(f"| {r['variant']} | {r['step']} | {r['images']} | {r['minutes']} | {r['psnr@1']:.2f} | "
                     f"{r['psnr@4']:.2f} | {r['psnr@4'] - r['psnr@1']:.2f} | {r['psnr_unquantized']:.2f} | "
                     f"{r['colour@4']:.2f} | {r['sem_cos@16']:.3f} |")
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
