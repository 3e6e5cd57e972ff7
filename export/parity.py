"""Parity of an exported backend against the PyTorch fp32 CPU reference on fixed images.

Measured (``ParityReport``):

- codes: fraction of identical indices per depth, overall, and the first (1-based) depth with a mismatch;
  with the reference's torch model given, compared as the golden self-test compares them (``golden.compare_codes`` with the
  reference's margins: a position whose first difference is an fp32 near-tie is not counted from there on, and
  ``code_near_ties`` says how many there were);
- pixels: max-abs error and PSNR between the two backends' decodes of the *reference* codes (uint8 images),
  for the full pixel depth and for the depth-1 prefix (null-code padding path);
- semantic features: cosine per token between the two backends' features of the reference codes (min, mean).

Images: the golden images stored beside the weights when present, else the scikit-image sample photos,
plus deterministic synthetic images (gradients + noise) so that at least 8 images are checked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.golden import GOLDEN_FILE, code_margins, compare_codes, load_golden, sample_images
from evotok.export.runtime import Runtime

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0  # reported when the decodes are identical


@dataclass(frozen=True)
class ParityLimits:
    min_code_agreement: float = 1.0
    max_pixel_abs: int = 2  # uint8 levels
    min_cosine: float = 0.999


@dataclass(frozen=True)
class ParityReport:
    backend: str
    providers: list[str]
    num_images: int
    code_agreement: float
    code_agreement_by_depth: list[float]
    first_mismatch_depth: int | None
    code_near_ties: int
    pixel_max_abs: int
    pixel_psnr_db: float
    prefix1_pixel_max_abs: int
    semantic_cosine_min: float
    semantic_cosine_mean: float
    limits: dict[str, Any]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0.0 else min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def synthetic_images(n: int, size: int, seed: int = 1234) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255))
    return np.stack(out).astype(np.uint8)


def parity_images(weights_dir: Path, size: int, minimum: int = 8) -> npt.NDArray[np.uint8]:
    golden = weights_dir / GOLDEN_FILE
    if golden.is_file():
        images = load_golden(golden).images
    else:
        try:
            images = sample_images(size)[0]
        except ImportError:  # scikit-image is a training extra
            images = np.zeros((0, size, size, 3), np.uint8)
    extra = max(0, minimum - len(images))
    return np.concatenate([images, synthetic_images(extra, size)]) if extra else images


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    out: npt.NDArray[np.float64] = (a64 * b64).sum(-1) / np.maximum(den, 1e-30)
    return out


def compare_runtimes(
    reference: Runtime, candidate: Runtime, images: npt.NDArray[np.uint8], limits: ParityLimits | None = None,
    reference_model: Any = None,
) -> ParityReport:
    """``reference_model``: the fp32 torch model (``EvoTok``) that ``reference`` runs, when it is one; its
    margins let an fp32 near-tie differ (``golden.compare_codes``)."""
    lim = limits or ParityLimits()
    ref_codes = reference.encode(images)
    margins = code_margins(reference_model, images, ref_codes) if reference_model is not None else None
    agreement = compare_codes(candidate.encode(images), ref_codes, margins)
    ref_img, cand_img = reference.decode(ref_codes), candidate.decode(ref_codes)
    pix = int(np.abs(ref_img.astype(np.int16) - cand_img.astype(np.int16)).max())
    pre = ref_codes[..., :1]
    pre_pix = int(np.abs(reference.decode(pre).astype(np.int16) - candidate.decode(pre).astype(np.int16)).max())
    cos = cosine(reference.embed_codes(ref_codes), candidate.embed_codes(ref_codes))
    passed = (agreement.agreement >= lim.min_code_agreement and max(pix, pre_pix) <= lim.max_pixel_abs
              and float(cos.min()) >= lim.min_cosine)
    return ParityReport(
        backend=candidate.info.backend, providers=list(candidate.info.providers), num_images=len(images),
        code_agreement=agreement.agreement, code_agreement_by_depth=list(agreement.by_depth),
        first_mismatch_depth=agreement.first_mismatch_depth, code_near_ties=agreement.near_ties, pixel_max_abs=pix,
        pixel_psnr_db=round(psnr(ref_img, cand_img), 3), prefix1_pixel_max_abs=pre_pix,
        semantic_cosine_min=float(cos.min()), semantic_cosine_mean=float(cos.mean()),
        limits=asdict(lim), passed=passed,
    )


def check_export(weights_dir: Path | str, export_dir: Path | str, *, threads: int | None = None,
                 limits: ParityLimits | None = None, record: bool = True) -> ParityReport:
    """ONNX Runtime CPU on ``export_dir`` vs torch fp32 CPU; stores the report in the manifest if ``record``."""
    from evotok.export.onnx_export import read_manifest
    from evotok.export.ort_runtime import OrtRuntime
    from evotok.export.torch_runtime import TorchRuntime

    wdir = Path(weights_dir)
    ref = TorchRuntime(wdir, device="cpu", precision="fp32", threads=threads)
    cand = OrtRuntime(wdir, providers=("cpu",), export_dir=export_dir, threads=threads)
    report = compare_runtimes(ref, cand, parity_images(wdir, ref.info.image_size), limits, reference_model=ref.model)
    if record:
        manifest = read_manifest(export_dir)
        manifest.parity = {"onnxruntime-cpu": report.to_dict()}
        manifest.save(Path(export_dir))
    level = logging.INFO if report.passed else logging.WARNING
    log.log(level, "parity %s: codes %.6f (first mismatch depth %s), pixels max-abs %d / PSNR %.1f dB, cosine min %.6f",
            "passed" if report.passed else "FAILED", report.code_agreement, report.first_mismatch_depth,
            report.pixel_max_abs, report.pixel_psnr_db, report.semantic_cosine_min)
    return report
