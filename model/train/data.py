"""Training crops and the fixed held-out evaluation crops.

Training: photos are decoded once (short side capped at ``max_side`` with a BOX reduction) and kept in
memory as uint8; each step draws crops from a generator seeded by (seed, step, rank), so a resumed run sees
exactly the crops an uninterrupted run would (no sampler state to save). A crop is a random square of side
``s`` (log-uniform between ``crop`` and the short side), resized to ``crop`` (bicubic), random horizontal
flip: the offline set has only ~50 scenes, so scale jitter is where diversity comes from. Optionally
(``hue_jitter`` > 0) a crop's colours are rotated about the grey axis by a random angle: the scenes are mostly
greens, browns and blues, and a decoder that never sees magenta shifts it toward them.

Evaluation: ``held_out_crops`` returns fixed 256x256 crops of the held-out photos: the ADM center crop
(short side to 256) plus a non-overlapping grid at short side 512 and 768. Same pixels every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def find_images(folder: Path) -> list[Path]:
    """All images under ``folder`` (recursive), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: Path, max_side: int | None = None) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` uint8; if ``max_side`` is set, the *short* side is reduced to at most ``max_side``."""
    with Image.open(path) as f:
        im: Image.Image = f.convert("RGB")
        if max_side is not None and min(im.size) > max_side:
            scale = max_side / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.uint8).copy()


def center_crop_arr(im: Image.Image, size: int) -> Image.Image:
    """ADM center crop: BOX-halve while the short side >= 2*size, bicubic to short side = size, center crop."""
    while min(im.size) >= 2 * size:
        im = im.resize((im.width // 2, im.height // 2), Image.Resampling.BOX)
    scale = size / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


class CropSampler:
    """Deterministic random crops from an in-memory photo list."""

    def __init__(self, paths: Sequence[Path], crop: int, max_side: int = 1024, min_scale_side: int | None = None) -> None:
        if not paths:
            raise ValueError("no training images")
        self.images = [load_rgb(p, max_side) for p in paths]
        self.images = [im for im in self.images if min(im.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no training image has a short side >= {crop}")
        self.crop = crop
        self.min_side = min_scale_side or crop

    def batch(self, batch_size: int, seed: int, crop: int | None = None, hue_jitter: float = 0.0) -> npt.NDArray[np.uint8]:
        """``(B, crop, crop, 3)`` uint8, a pure function of ``(seed, crop, hue_jitter)``; ``crop`` <= the
        sampler's crop. ``hue_jitter``: probability that a crop's hue is rotated (``rotate_hue``) by a uniform
        angle; at 0 no extra random numbers are drawn, so the crop stream is the same as without it."""
        crop = crop or self.crop
        if crop > self.crop:
            raise ValueError(f"crop {crop} > the sampler's largest crop {self.crop}")
        rng = np.random.default_rng(seed)
        out = np.empty((batch_size, crop, crop, 3), np.uint8)
        for i in range(batch_size):
            im = self.images[rng.integers(len(self.images))]
            h, w = im.shape[:2]
            short = min(h, w)
            lo, hi = np.log(min(self.min_side, crop)), np.log(short)
            side = round(float(np.exp(rng.uniform(lo, hi)))) if hi > lo else short
            side = min(max(side, crop), short)
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            patch = Image.fromarray(im[y : y + side, x : x + side])
            if side != crop:
                patch = patch.resize((crop, crop), Image.Resampling.BICUBIC)
            arr = np.asarray(patch)
            if rng.random() < 0.5:
                arr = arr[:, ::-1]
            if hue_jitter > 0 and rng.random() < hue_jitter:
                arr = rotate_hue(arr, float(rng.uniform(-np.pi, np.pi)))
            out[i] = arr
        return out


def rotate_hue(image: npt.NDArray[np.uint8], angle: float) -> npt.NDArray[np.uint8]:
    """``(..., 3)`` uint8 -> the same shape, colours rotated by ``angle`` radians about the grey axis (R = G = B):
    grey stays grey, each pixel keeps its channel mean (up to clipping to 0..255)."""
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(k, k)
    out = image.astype(np.float32) @ rot.T.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def held_out_crops(paths: Sequence[Path], size: int = 256, grid_sides: Sequence[int] = (512, 768)) -> npt.NDArray[np.uint8]:
    """``(N, size, size, 3)`` uint8 fixed evaluation crops (order: photo, then center, then grids)."""
    crops: list[npt.NDArray[np.uint8]] = []
    for path in paths:
        with Image.open(path) as f:
            im: Image.Image = f.convert("RGB")
            crops.append(np.asarray(center_crop_arr(im, size)))
            for short in grid_sides:
                if min(im.size) < short:
                    continue
                scale = short / min(im.size)
                scaled = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
                for top in range(0, scaled.height - size + 1, size):
                    for left in range(0, scaled.width - size + 1, size):
                        crops.append(np.asarray(scaled.crop((left, top, left + size, top + size))))
    return np.stack(crops).astype(np.uint8)
