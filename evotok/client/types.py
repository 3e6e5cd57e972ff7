"""Typed results of the client calls (numpy arrays for codes and features).

Layouts (the service's wire layouts, depth last, row-major positions):

- codes: ``(h, w, d)`` uint16 for one image, ``(B, h, w, d)`` for a batch; ``d`` = depths returned.
- features: ``(h*w, C)`` float32 for one input, ``(B, h*w, C)`` for a batch.
- decoded images: PNG bytes of an ``(H, W, 3)`` uint8 RGB image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result: its name and sha256 weights hash."""

    name: str
    weights_hash: str


@dataclass(frozen=True)
class EncodeResult:
    """Codes of one image ``(h, w, d)`` or a batch ``(B, h, w, d)``, uint16."""

    codes: npt.NDArray[np.uint16]
    depth: int
    model: ModelRef | None
    latency_s: float  # wall time of the HTTP call that produced it (last attempt), seconds

    @property
    def batched(self) -> bool:
        return self.codes.ndim == 4


@dataclass(frozen=True)
class DecodeResult:
    """A reconstruction as PNG bytes; ``image()`` / ``array()`` decode it."""

    png: bytes
    latency_s: float

    def image(self) -> Image.Image:
        from PIL import Image

        img = Image.open(io.BytesIO(self.png))
        img.load()
        return img

    def array(self) -> npt.NDArray[np.uint8]:
        """``(H, W, 3)`` uint8 RGB."""
        return np.asarray(self.image().convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class EmbedResult:
    """Semantic features ``(h*w, C)`` or ``(B, h*w, C)``, float32."""

    features: npt.NDArray[np.float32]
    model: ModelRef | None
    latency_s: float


@dataclass(frozen=True)
class Health:
    """``/healthz`` or ``/readyz``: ``ok`` is true for HTTP 200; ``body`` is the parsed JSON (or {})."""

    ok: bool
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def model_info_from_dict(data: dict[str, Any]) -> ModelInfo:
    """``GET /info`` JSON -> ``ModelInfo`` (unknown keys ignored, lists become tuples)."""
    known = {f.name for f in fields(ModelInfo)}
    kwargs: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known
    }
    return ModelInfo(**kwargs)
