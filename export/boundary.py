"""Checks and conversions at the Runtime boundary, shared by every backend.

- ``check_images``: ``(B, H, W, 3)`` uint8 with ``H = W = info.image_size``, ``B >= 1``.
- ``prepare_codes``: ``(B, h, w, d)`` integer codes, ``1 <= d <= D``, values in ``[0, K]`` (``K`` = null
  code) -> ``(B, h, w, depth)`` int64 for a graph that reads exactly ``depth`` depths: longer inputs are cut
  to the first ``depth``, shorter ones padded with the null code (a zero codebook row, so the code sum and
  therefore the result equal those of the prefix).
- ``model_info``: the ``ModelInfo`` of a model card for a given backend.

Errors are ``ValueError`` with a message naming the offending shape/dtype/value; the service maps them to
its invalid-input errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo


def check_images(images: Any, info: ModelInfo) -> npt.NDArray[np.uint8]:
    arr = np.asarray(images)
    s = info.image_size
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (s, s, 3) or arr.shape[0] < 1:
        raise ValueError(f"images must be (B, {s}, {s}, 3) uint8 with B >= 1, got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


def prepare_codes(codes: Any, info: ModelInfo, depth: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(codes)
    g, dmax, k = info.grid, info.num_depths, info.codebook_size
    if arr.ndim != 4 or arr.shape[1:3] != (g, g) or arr.shape[0] < 1 or not 1 <= arr.shape[3] <= dmax:
        raise ValueError(f"codes must be (B, {g}, {g}, d) with B >= 1 and 1 <= d <= {dmax}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {arr.dtype}")
    out = arr[..., :depth].astype(np.int64)
    if out.size and (int(out.min()) < 0 or int(out.max()) > k):
        raise ValueError(f"code values must be in [0, {k}] ({k} = null code), got [{out.min()}, {out.max()}]")
    if out.shape[3] < depth:
        pad = np.full((*out.shape[:3], depth - out.shape[3]), k, np.int64)
        out = np.concatenate([out, pad], axis=-1)
    return np.ascontiguousarray(out)


def model_info(card: dict[str, Any], cfg: Any, weights_hash: str, *, backend: str, precision: str,
               providers: tuple[str, ...]) -> ModelInfo:
    """``ModelInfo`` from a model card (``config.json``) and its ``EvoTokConfig``."""
    curve = card.get("metrics", {}).get("semantic_by_depth", ())
    if isinstance(curve, dict):  # {"1": cos, ...}
        curve = [curve[k] for k in sorted(curve, key=int)]
    return ModelInfo(
        name=cfg.name, weights_hash=weights_hash, image_size=cfg.image_size, grid=cfg.grid,
        num_depths=cfg.num_depths, codebook_size=cfg.codebook_size, pixel_depth=cfg.pixel_depth,
        semantic_depth=cfg.semantic_depth, semantic_dim=cfg.semantic_decoder.out_dim, backend=backend,
        precision=precision, providers=providers,
        semantic_by_depth=tuple(float(x) for x in curve) if isinstance(curve, list | tuple) else (),
    )
