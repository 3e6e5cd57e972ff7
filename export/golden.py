"""Golden codes: fixed images and their fp32 PyTorch reference codes, stored beside the weights.

``golden.npz`` (written once per model by ``write_golden``; read with numpy only)::

    images        (N, H, W, 3) uint8   scikit-image sample photos, centre-cropped and resized to image_size
    codes         (N, h, w, D) uint16  codes from the fp32 torch model on CPU
    margins       (N, h, w, D) float32 per code, the second-nearest minus the nearest code's distance
                                       (``||e||^2 - 2 r.e``, fp32) relative to the terms' size (``code_margins``);
                                       absent in files written before it existed
    names         (N,) str             which photo each image is
    weights_hash  () str               content hash of the weights the codes belong to

``run_self_test`` encodes the images with any Runtime and compares the codes: the service's readiness
probe uses it, so a backend that silently changes tokens never takes traffic.

Near-ties: two fp32 backends (torch, ONNX Runtime) sum ``r.e`` in different orders, so where the two nearest
codes are closer than fp32 rounding (relative margin below ``TIE_TOLERANCE``, about 100 fp32 ulps) either choice is correct, and every
deeper code at that position follows from it. ``compare_codes`` with margins does not count such a position
from its first differing depth on (``near_ties`` says how many); any other difference counts. Without margins
the comparison is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import SelfTestResult

if TYPE_CHECKING:
    from evotok.export.runtime import Runtime

log = logging.getLogger(__name__)

GOLDEN_FILE = "golden.npz"
TIE_TOLERANCE = 1e-5  # relative distance gap under which fp32 kernels may pick either of the two nearest codes
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass(frozen=True)
class Golden:
    images: npt.NDArray[np.uint8]
    codes: npt.NDArray[np.uint16]
    names: tuple[str, ...]
    weights_hash: str
    margins: npt.NDArray[np.float32] | None = None  # (N, h, w, D); None in older files: exact comparison


@dataclass(frozen=True)
class CodeAgreement:
    """Per-depth comparison of two ``(N, h, w, D)`` code arrays."""

    agreement: float  # fraction of identical indices among the counted ones (all, without margins)
    by_depth: tuple[float, ...]  # the same at depth 1..D
    first_mismatch_depth: int | None  # 1-based, None when every counted index agrees
    mismatches: int  # counted indices that differ
    near_ties: int = 0  # positions not counted from their first differing depth on (reference margin < tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "by_depth": list(self.by_depth),
                "first_mismatch_depth": self.first_mismatch_depth, "mismatches": self.mismatches,
                "near_ties": self.near_ties}


def compare_codes(codes: npt.NDArray[Any], reference: npt.NDArray[Any], margins: npt.NDArray[Any] | None = None,
                  tie_tolerance: float = TIE_TOLERANCE) -> CodeAgreement:
    """``(N, h, w, D)`` codes vs the reference codes; with the reference's ``margins`` (same shape), a position
    whose first differing depth is a near-tie is not counted from that depth on."""
    if codes.shape != reference.shape:
        raise ValueError(f"code shapes differ: {codes.shape} vs reference {reference.shape}")
    same = codes.astype(np.int64) == reference.astype(np.int64)  # (N, h, w, D)
    counted = np.ones_like(same)
    near_ties = 0
    if margins is not None:
        if margins.shape != reference.shape:
            raise ValueError(f"margins shape {margins.shape} != reference {reference.shape}")
        differs = ~same.all(axis=-1)  # (N, h, w)
        first = np.argmax(~same, axis=-1)  # (N, h, w) first differing depth (0 where none)
        tie = differs & (np.take_along_axis(margins, first[..., None], axis=-1)[..., 0] < tie_tolerance)
        counted = ~(tie[..., None] & (np.arange(same.shape[-1]) >= first[..., None]))
        near_ties = int(tie.sum())
    flat_same, flat_counted = same.reshape(-1, same.shape[-1]), counted.reshape(-1, same.shape[-1])
    by_depth = tuple(float(flat_same[flat_counted[:, d], d].mean()) if flat_counted[:, d].any() else 1.0
                     for d in range(same.shape[-1]))
    bad = [d + 1 for d, frac in enumerate(by_depth) if frac < 1.0]
    agreement = float(same[counted].mean()) if counted.any() else 1.0
    return CodeAgreement(agreement, by_depth, bad[0] if bad else None, int((~same & counted).sum()), near_ties)


def code_margins(model: Any, images: npt.NDArray[np.uint8], codes: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """``(N, h, w, D)`` float32 relative margin of each reference code over the runner-up
    (``ResidualQuantizer.code_margins``), from the fp32 torch ``model`` (an ``EvoTok``) that chose ``codes``."""
    import torch

    from evotok.model.evotok import images_to_tensor

    device = next(model.parameters()).device
    with torch.no_grad():
        latent = model.encode_latent(images_to_tensor(images).to(device))  # (N, h, w, C)
        margins = model.quantize.code_margins(latent, torch.as_tensor(codes.astype(np.int64), device=device))
    out: npt.NDArray[np.float32] = margins.cpu().numpy().astype(np.float32)
    return out


def sample_images(size: int) -> tuple[npt.NDArray[np.uint8], tuple[str, ...]]:
    """The scikit-image photos in ``PHOTOS``, centre-cropped to a square and resized (bicubic) to ``size``."""
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())[..., :3]
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = Image.fromarray(img[top : top + s, left : left + s])
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8))
    return np.stack(out), PHOTOS


def write_golden(weights_dir: Path | str, images: npt.NDArray[np.uint8] | None = None) -> Path:
    """Encode the sample photos (or ``images``) with the fp32 torch model on CPU; write ``golden.npz``."""
    from evotok.export.torch_runtime import TorchRuntime

    folder = Path(weights_dir)
    rt = TorchRuntime(folder, device="cpu", precision="fp32")
    if images is None:
        images, names = sample_images(rt.info.image_size)
    else:
        names = tuple(f"image{i}" for i in range(len(images)))
    codes = rt.encode(images)
    margins = code_margins(rt.model, images, codes)
    path = folder / GOLDEN_FILE
    tmp = folder / (GOLDEN_FILE + ".tmp.npz")
    np.savez_compressed(tmp, images=images, codes=codes, margins=margins, names=np.array(names),
                        weights_hash=np.array(rt.info.weights_hash))
    tmp.replace(path)
    log.info("wrote %s: %d images, codes %s", path, len(images), codes.shape)
    return path


def load_golden(path: Path | str) -> Golden:
    with np.load(Path(path), allow_pickle=False) as z:
        return Golden(
            images=z["images"].astype(np.uint8), codes=z["codes"].astype(np.uint16),
            names=tuple(str(x) for x in z["names"]), weights_hash=str(z["weights_hash"]),
            margins=z["margins"].astype(np.float32) if "margins" in z.files else None,
        )


def run_self_test(runtime: Runtime, golden_path: Path | str | None = None, threshold: float = 1.0) -> SelfTestResult:
    """Encode the golden images with ``runtime``; pass when the agreement is at least ``threshold``.

    ``golden_path`` defaults to the runtime's ``golden_path`` attribute (``<weights>/golden.npz``). A golden
    file for other weights, or a missing one, fails the test (with the reason in ``details``).
    """
    path = Path(golden_path) if golden_path is not None else getattr(runtime, "golden_path", None)
    if path is None or not Path(path).is_file():
        return SelfTestResult(0.0, (), None, 0, False, threshold, {"reason": f"golden file not found: {path}"})
    golden = load_golden(path)
    if golden.weights_hash != runtime.info.weights_hash:
        reason = (f"golden codes belong to weights {golden.weights_hash[:12]}, runtime serves "
                  f"{runtime.info.weights_hash[:12]}")
        return SelfTestResult(0.0, (), None, len(golden.images), False, threshold, {"reason": reason})
    codes = runtime.encode(golden.images)
    cmp = compare_codes(codes, golden.codes, golden.margins)
    passed = cmp.agreement >= threshold
    details: dict[str, Any] = {"golden": str(path), "mismatches": cmp.mismatches, "near_ties": cmp.near_ties,
                               "tie_tolerance": TIE_TOLERANCE if golden.margins is not None else None,
                               "backend": runtime.info.backend, "providers": list(runtime.info.providers)}
    if cmp.near_ties:
        log.info("self-test: %d position(s) differ first at an fp32 near-tie (reference margin < %g); not counted",
                 cmp.near_ties, TIE_TOLERANCE)
    if not passed:
        log.warning("self-test failed: agreement %.6f < %.6f (first mismatch at depth %s)",
                    cmp.agreement, threshold, cmp.first_mismatch_depth)
    return SelfTestResult(cmp.agreement, cmp.by_depth, cmp.first_mismatch_depth, len(golden.images), passed,
                          threshold, details)
