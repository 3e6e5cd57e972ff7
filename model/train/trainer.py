"""The training loop: one process or many (``torchrun``; gloo on CPU, nccl on GPU).

Recipe (docs/reference/model.md section 7, scaled down where the CPU forces it, each deviation a named option):
Adam(betas 0.9/0.95), constant lr, grad clip 1.0 for generator and discriminator separately, bf16 autocast on
GPU, codebook EMA with warm-up and dead-code restart (inside the quantizer), PatchGAN hinge loss from
``disc_start``. Loss = mse + perceptual + adv + commit + semantic (cos + fold), weights in ``TrainConfig``.

Optional (off in the reference), for a CPU budget (``evotok-small``'s recipe, ablated in ``docs/eval/``):

- depth-aware pixel training: ``depth_mode="prefix_prob"`` lets a sample read a random shorter prefix depth with
  probability ``pixel_prefix_prob``; ``"stratified"`` gives every depth 1..pixel_depth an equal share of each
  batch (sample i of step s reads depth ``1 + (i + s) % pixel_depth``), so each residual depth must add detail;
- a crop schedule: ``crop`` / ``batch_size`` until ``final_crop_from``, then ``final_crop`` / ``final_batch_size``
  (the model is fully convolutional; the semantic ViT interpolates its position table on smaller grids);
- a loss schedule: the perceptual term from ``perceptual_start``, the adversarial term from ``disc_start``;
- ``lr_schedule="cosine"``: linear warm-up over ``warmup_steps``, then cosine decay to ``lr_min_ratio`` x lr.
- a cell colour loss (``w_colour``, ``losses.cell_colour_loss``): the mean colour of every token cell;
- a fine-tuning stage (``init_from``): a run with no checkpoint yet starts from a model folder's weights with
  fresh optimisers (``make train-small``'s stage 2 starts from stage 1's folder).

Resume is bit-for-bit: the checkpoint holds model, discriminator, both optimisers, the step, elapsed time and
the torch RNG state; batches are a pure function of (seed, step, rank).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from evotok.model.config import EvoTokConfig, get_preset
from evotok.model.encoder import EfficientNetBackbone, SemanticBackbone, build_backbone, freeze
from evotok.model.evotok import EvoTok, images_to_tensor, tensor_to_images
from evotok.model.train.discriminator import PatchDiscriminator
from evotok.model.train.losses import (
    FeatureDistance,
    cell_colour_loss,
    hinge_d_loss,
    hinge_g_loss,
    semantic_loss,
    teacher_features,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "evotok-small"
    out: str = "runs/evotok-small"
    data: str = "data/split.json"  # a split manifest, or a folder of images (recursive)
    steps: int = 2600
    max_minutes: float = 105.0  # wall-time budget over all resumes; saves and stops when spent
    batch_size: int = 4  # per process
    crop: int = 256
    lr: float = 3e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    w_mse: float = 1.0
    w_perceptual: float = 0.1  # our feature distance is ~10x LPIPS in scale (4 taps of unit vectors)
    w_adv: float = 0.1
    disc_start: int = 1500
    disc_ndf: int = 16
    w_colour: float = 0.0  # cell colour loss (losses.cell_colour_loss): mean colour per token cell
    hue_jitter: float = 0.0  # probability that a training crop's hue is rotated (data.rotate_hue)
    w_commit: float = 1.0
    w_semantic: float = 1.0
    pixel_prefix_prob: float = 0.25
    depth_mode: str = "prefix_prob"  # or "stratified"
    final_crop: int = 0  # 0 = one crop size for the whole run
    final_crop_from: int = 0
    final_batch_size: int = 0  # 0 = batch_size
    perceptual_start: int = 0
    lr_schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 0
    lr_min_ratio: float = 0.1
    lr_decay_steps: int = 0  # cosine decays over warm-up..this step (0 = steps); held at the floor after it
    lr_after_decay: float = 0.0  # lr after lr_decay_steps (0 = lr_min_ratio x lr), e.g. for an adversarial phase
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 250
    threads: int = 0  # torch intra-op threads (0 = default)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    init_from: str = ""  # a model folder to start from when the run has no checkpoint yet (a fine-tuning stage)
    refit_output: bool = False  # at export: least-squares refit of the pixel decoder's output bias (refit.py)
    refit_stride: int = 2  # ... on the fixed crops of every refit_stride-th training photo

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


# Named recipes: `evotok train --recipe NAME` starts from these fields (explicit flags still override).
# evotok-small: MSE fidelity first at 128px crops (4x cheaper steps; the model is fully convolutional), every
# prefix depth 1..4 an equal share of each batch, cosine lr; 256px crops (the semantic ViT's native 16x16 grid)
# from step 2040, the perceptual term from 1680; no adversarial term: 400 more steps with the PatchGAN term
# (lr_decay_steps / lr_after_decay / disc_start) cost 2.2 dB and brought a systematic colour cast back
# (docs/eval/ablation.md). At export the pixel decoder's output bias is refitted in closed form on training
# crops (refit.py: the colour cast; +0.14 dB held-out PSNR@4, colour error 5.48 -> 4.71 on the v3 weights).
RECIPES: dict[str, dict[str, Any]] = {
    # The shipped recipe: 10000 steps, 128px crops for 85% of them, perceptual term from 60%.
    "evotok-small": {
        "preset": "evotok-small", "steps": 10000, "max_minutes": 150.0, "batch_size": 8, "crop": 128,
        "final_crop": 256, "final_crop_from": 8500, "final_batch_size": 2, "lr": 4e-4, "lr_schedule": "cosine",
        "warmup_steps": 100, "lr_min_ratio": 0.05, "w_perceptual": 0.1, "perceptual_start": 6000, "w_adv": 0.0,
        "depth_mode": "stratified", "threads": 2, "refit_output": True,
    },
    # Stage 2 of `make train-small`: 2000 steps from the stage-1 folder with the cell colour loss x50 (fresh Adam,
    # lr 1e-4; 128px crops, then 256px from step 1200 so that the semantic decoder ends on its 16x16 grid), half
    # the crops hue-rotated (the photos hold few magentas; without it the bee photo kept a 7.9/255 cast).
    # Held-out PSNR@4 / colour error with the weight at 5, 20, 50: 21.10 / 3.96, 21.34 / 3.45, 21.46 / 3.24;
    # x50 with hue_jitter 0.5: 21.77 / 2.16 (docs/eval/ablation.md).
    "evotok-small-colour": {
        "preset": "evotok-small", "steps": 2000, "max_minutes": 60.0, "batch_size": 8, "crop": 128,
        "final_crop": 256, "final_crop_from": 1200, "final_batch_size": 2, "lr": 1e-4, "lr_schedule": "cosine",
        "warmup_steps": 50, "lr_min_ratio": 0.05, "w_perceptual": 0.1, "perceptual_start": 0, "w_adv": 0.0,
        "w_colour": 50.0, "hue_jitter": 0.5, "depth_mode": "stratified", "threads": 2, "seed": 1,
        "refit_output": True, "init_from": "runs/evotok-small/stage1",
    },
    # The same design at 2400 steps (the v2 weights, docs/eval/ablation.md): about 40% of the time.
    "evotok-small-short": {
        "preset": "evotok-small", "steps": 2400, "max_minutes": 150.0, "batch_size": 8, "crop": 128,
        "final_crop": 256, "final_crop_from": 2040, "final_batch_size": 2, "lr": 4e-4, "lr_schedule": "cosine",
        "warmup_steps": 100, "lr_min_ratio": 0.05, "w_perceptual": 0.05, "perceptual_start": 1680, "w_adv": 0.0,
        "depth_mode": "stratified", "threads": 2,
    },
}


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def build_teacher(cfg: EvoTokConfig) -> SemanticBackbone:
    """The frozen twin of the encoder backbone (ImageNet weights for EfficientNet; for SigLIP2 the caller
    must load the original tower's weights into it)."""
    backbone = build_backbone(cfg.encoder, cfg.image_size, pretrained=True)
    freeze(backbone)
    return backbone


def load_train_images(spec: str) -> list[Path]:
    """The training photos of a split manifest (its ``train`` list) or of an image folder (all of it)."""
    from evotok.model.train.data import find_images
    from evotok.model.train.photos import load_split

    path = Path(spec)
    if path.is_file():
        return load_split(path).train
    return find_images(path)


class Trainer:
    def __init__(self, tcfg: TrainConfig, model_cfg: EvoTokConfig | None = None) -> None:
        self.tcfg = tcfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        # denormal floats (e.g. in gradients of unit-normalised features) slow x86 CPUs down several-fold
        torch.set_flush_denormal(True)
        torch.manual_seed(tcfg.seed)
        self.cfg = model_cfg or get_preset(tcfg.preset)
        self.model = EvoTok(self.cfg).to(self.device)
        self.teacher = build_teacher(self.cfg).to(self.device)
        perceptual_backbone = self.teacher if isinstance(self.teacher, EfficientNetBackbone) else None
        self.perceptual = FeatureDistance(perceptual_backbone) if perceptual_backbone is not None else None
        self.disc = PatchDiscriminator(tcfg.disc_ndf).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=tcfg.lr, betas=tcfg.betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=tcfg.disc_lr, betas=tcfg.betas)
        if self.dist.world > 1:
            # the generator's gradients are all-reduced by hand in train_step (its quantizer already all-reduces
            # codebook statistics inside forward); start every rank from rank 0's parameters and buffers
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(tensor.data, src=0)
            self.ddp_d: nn.Module = nn.parallel.DistributedDataParallel(
                self.disc, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp_d = self.disc
        self.step = 0
        self.elapsed_s = 0.0
        self.out = Path(tcfg.out)
        self.sampler: Any = None
        self.sample_images: Tensor | None = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state(self) -> dict[str, Any]:
        return {
            "format": "evotok-train/1",
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict(),
            "opt": self.opt.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "rng": torch.get_rng_state(),
            "model_config": json.dumps(self.cfg.to_dict()),
            "train_config": json.dumps(dataclasses.asdict(self.tcfg)),
        }

    def save(self) -> None:
        if not self.dist.main:
            return
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.ckpt_path)

    def load(self, path: Path) -> None:
        # our own file, but still no arbitrary unpickling: weights_only keeps it to tensors and plain data
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("format") != "evotok-train/1":
            raise RuntimeError(f"{path}: not an EvoTok training checkpoint")
        saved_cfg = EvoTokConfig.from_dict(json.loads(state["model_config"]))
        if saved_cfg != self.cfg:
            raise RuntimeError(f"{path}: checkpoint model config differs from {self.cfg.name!r}")
        self.model.load_state_dict(state["model"])
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        torch.set_rng_state(state["rng"].cpu())

    def init_weights(self, folder: Path) -> None:
        """Start from a model folder's weights (fresh optimisers): the first step of a fine-tuning stage."""
        from evotok.model.checkpoint import load_model

        model, loaded = load_model(folder)
        if model.cfg != self.cfg:
            raise RuntimeError(f"{folder}: model config {model.cfg.name!r} differs from {self.cfg.name!r}")
        self.model.load_state_dict(model.state_dict())
        log.info("initialised from %s (weights %s)", folder, loaded.hash[:12])

    # ------------------------------------------------------------------ one step
    def crop_and_batch(self, step: int) -> tuple[int, int]:
        t = self.tcfg
        if t.final_crop and step >= t.final_crop_from:
            return t.final_crop, t.final_batch_size or t.batch_size
        return t.crop, t.batch_size

    def lr_at(self, step: int) -> float:
        t = self.tcfg
        if t.lr_schedule == "constant":
            return t.lr
        if t.lr_schedule != "cosine":
            raise ValueError(f"unknown lr_schedule {t.lr_schedule!r}")
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        decay_end = t.lr_decay_steps or t.steps
        if step >= decay_end and t.lr_after_decay:
            return t.lr_after_decay
        frac = min(1.0, (step - t.warmup_steps) / max(1, decay_end - t.warmup_steps))
        return t.lr * (t.lr_min_ratio + (1 - t.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def batch(self, step: int) -> Tensor:
        seed = (self.tcfg.seed * 1_000_003 + step) * max(1, self.dist.world) + self.dist.rank
        crop, size = self.crop_and_batch(step)
        return images_to_tensor(self.sampler.batch(size, seed, crop, self.tcfg.hue_jitter)).to(self.device)

    def pixel_depths(self, n: int, device: torch.device) -> Tensor:
        """``(n,)`` prefix depth (1..pixel_depth) each sample's pixel decoder reads this step."""
        t, pd = self.tcfg, self.cfg.pixel_depth
        if t.depth_mode == "stratified":
            return 1 + (torch.arange(n, device=device) + self.step) % pd
        if t.depth_mode != "prefix_prob":
            raise ValueError(f"unknown depth_mode {t.depth_mode!r}")
        depth = torch.full((n,), pd, device=device)
        if t.pixel_prefix_prob > 0:
            short = torch.rand(n, device=device) < t.pixel_prefix_prob
            depth = torch.where(short, torch.randint(1, pd + 1, (n,), device=device), depth)
        return depth

    def train_step(self, x: Tensor) -> dict[str, float]:
        t, cfg = self.tcfg, self.cfg
        self.model.train()
        amp = self.device.type == "cuda" and t.amp
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            target = teacher_features(self.teacher, x)
            latent = self.model.encode_latent(x)
            quant = self.model.quantize(latent)
            depth = self.pixel_depths(x.shape[0], x.device)
            q_pix = quant.cumulative[depth - 1, torch.arange(x.shape[0], device=x.device)]  # (B, h, w, C)
            z_pix = latent + (q_pix.to(latent.dtype) - latent).detach()
            recon = self.model.decode_latent(z_pix)
            sem = self.model.semantic_latent(quant.straight_through(latent, cfg.semantic_depth))
            mse = ((recon.float() - x) ** 2).mean()
            perc_on = t.w_perceptual > 0 and self.step >= t.perceptual_start
            perc = self.perceptual(recon.float(), x) if self.perceptual is not None and perc_on else x.new_zeros(())
            cos, fold = semantic_loss(sem.float(), target)
            stride = cfg.image_size // cfg.grid
            colour = cell_colour_loss(recon.float(), x, stride) if t.w_colour > 0 else x.new_zeros(())
            gan_on = self.step >= t.disc_start
            adv = hinge_g_loss(self.ddp_d(recon)) if gan_on and t.w_adv > 0 else x.new_zeros(())
            loss = (
                t.w_mse * mse
                + t.w_perceptual * perc
                + t.w_colour * colour
                + (t.w_adv * adv if gan_on else 0.0)
                + t.w_commit * quant.commit_loss
                + t.w_semantic * (cos + fold)
            )
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        if self.dist.world > 1:
            loss.backward()
            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.dist.world)
        else:
            loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        d_loss = x.new_zeros(())
        if gan_on and t.w_adv > 0:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                d_loss = hinge_d_loss(self.ddp_d(x), self.ddp_d(recon.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), t.grad_clip)
            self.opt_d.step()
        return {
            "loss": float(loss.detach()),
            "mse": float(mse.detach()),
            "perceptual": float(perc.detach()),
            "colour": float(colour.detach()),
            "commit": float(quant.commit_loss.detach()),
            "sem_cos": float(cos.detach()),
            "sem_fold": float(fold.detach()),
            "adv": float(adv.detach()),
            "disc": float(d_loss.detach()),
            "grad_norm": float(gnorm),
            "psnr_train": float(10 * math.log10(4.0 / max(float(mse.detach()), 1e-10))),
        }

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True, progress: bool = True) -> dict[str, float]:
        from tqdm import tqdm

        from evotok.model.train.data import CropSampler, held_out_crops
        from evotok.model.train.photos import load_split

        t = self.tcfg
        if resume and self.ckpt_path.exists():
            self.load(self.ckpt_path)
            log.info("resumed from %s at step %d (%.1f min spent)", self.ckpt_path, self.step, self.elapsed_s / 60)
        elif t.init_from:
            self.init_weights(Path(t.init_from))
        self.sampler = CropSampler(load_train_images(t.data), max(t.crop, t.final_crop))
        data_path = Path(t.data)
        if data_path.is_file() and self.dist.main:
            held = held_out_crops(load_split(data_path).held_out[:4], self.cfg.image_size, grid_sides=())
            self.sample_images = images_to_tensor(held).to(self.device)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(dataclasses.asdict(t), indent=2))
        metrics_file = self.out / "metrics.csv"
        writer = None
        last: dict[str, float] = {}
        bar = tqdm(total=t.steps, initial=self.step, disable=not (progress and self.dist.main), dynamic_ncols=True)
        start = time.monotonic() - self.elapsed_s
        stop = {"flag": False}

        def _graceful(signum: int, frame: Any) -> None:  # SIGTERM: finish the step, save, exit
            stop["flag"] = True

        previous = signal.signal(signal.SIGTERM, _graceful) if threading_is_main() else None
        try:
            while self.step < t.steps and not stop["flag"]:
                if (time.monotonic() - start) / 60 >= t.max_minutes:
                    log.info("time budget of %.0f min spent at step %d", t.max_minutes, self.step)
                    break
                last = self.train_step(self.batch(self.step))
                self.step += 1
                self.elapsed_s = time.monotonic() - start
                bar.update(1)
                if self.step % t.log_every == 0 and self.dist.main:
                    usage = (self.model.quantize.usage > 0).float().mean(dim=1)
                    row = {"step": self.step, "minutes": round(self.elapsed_s / 60, 3), **last,
                           "usage_min": float(usage.min()), "usage_mean": float(usage.mean())}
                    self.model.quantize.reset_usage()
                    if writer is None:
                        new = not metrics_file.exists() or metrics_file.stat().st_size == 0
                        # a run resumed across a code change keeps its file's columns (new ones are dropped)
                        header = list(row) if new else metrics_file.read_text().splitlines()[0].split(",")
                        fh = metrics_file.open("a", newline="")
                        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore", restval="")
                        if new:
                            writer.writeheader()
                    writer.writerow(row)
                    fh.flush()
                    bar.set_postfix(loss=f"{last['loss']:.3f}", psnr=f"{last['psnr_train']:.1f}",
                                    sem=f"{1 - last['sem_cos']:.3f}", use=f"{row['usage_mean']:.2f}")
                if self.step % t.sample_every == 0:
                    self.write_samples()
                if self.step % t.ckpt_every == 0:
                    self.save()
        finally:
            self.save()
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return last

    @torch.no_grad()
    def write_samples(self) -> None:
        """PNG grid: rows = held-out crops, columns = input, then reconstructions at depth 1..pixel_depth."""
        if self.sample_images is None or not self.dist.main:
            return
        from PIL import Image

        self.model.eval()
        codes = self.model.encode(self.sample_images)
        cols = [self.sample_images] + [self.model.decode(codes[..., :d]) for d in range(1, self.cfg.pixel_depth + 1)]
        rows = [np.concatenate([tensor_to_images(c)[i].cpu().numpy() for c in cols], axis=1) for i in range(codes.shape[0])]
        path = self.out / "samples" / f"step{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        self.model.train()
