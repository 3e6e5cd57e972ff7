"""Typed values that cross the Runtime boundary (no torch, no onnxruntime imports here).

Array conventions at this boundary (numpy):

- images: ``(B, H, W, 3)`` uint8 in [0, 255], already resized/cropped to ``info.image_size``.
- codes:  ``(B, h, w, d)`` integers, depth last, row-major positions, ``1 <= d <= info.num_depths``;
  returned as uint16 (every supported codebook has at most 65535 entries). Code value
  ``info.codebook_size`` is the *null code* (a zero vector), accepted on input only.
- features: ``(B, h*w, C)`` float32, the semantic decoder's output (``C = info.semantic_dim``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Backend = Literal["torch", "onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class ModelInfo:
    """The model card a Runtime serves (also the body of ``GET /info``)."""

    name: str
    weights_hash: str  # sha256 content hash of the weights (hex)
    image_size: int  # H = W of the model input, pixels
    grid: int  # h = w of the code grid
    num_depths: int  # D, codes per position
    codebook_size: int  # K, codes per depth (index K = null code)
    pixel_depth: int  # depths read by the pixel decoder
    semantic_depth: int  # depths read by the semantic decoder
    semantic_dim: int  # C of the semantic features
    backend: str = "torch"
    precision: str = "fp32"
    providers: tuple[str, ...] = ()  # what the backend really runs on (e.g. ORT session providers)
    semantic_by_depth: tuple[float, ...] = ()  # model-card curve: cosine to teacher at depths 1..D

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["providers"] = list(self.providers)
        out["semantic_by_depth"] = list(self.semantic_by_depth)
        return out


@dataclass(frozen=True)
class SelfTestResult:
    """Golden-code self-test: codes of fixed images vs the fp32 reference codes stored beside the weights."""

    agreement: float  # fraction of identical code indices over all images, positions and depths (0..1)
    agreement_by_depth: tuple[float, ...]
    first_mismatch_depth: int | None  # 1-based depth of the first mismatch, None if all agree
    num_images: int
    passed: bool
    threshold: float = 1.0
    details: dict[str, Any] = field(default_factory=dict)
