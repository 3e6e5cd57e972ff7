"""A deterministic numpy Runtime for service tests that must not depend on model weights.

Codes are a function of the image content (mean colour per grid cell, quantised per depth), decoding
paints each cell with a colour derived from its codes. It exercises every shape and dtype rule of the
real interface; it is *not* a model.

Cost model for service tests and ``evotok bench service --fake``: every runtime call sleeps ``delay_s``, or
``A + B * b`` ms for a batch of ``B`` with ``cost_ms = (A, b)`` (a GPU-like fixed cost per call). Test-only:
while the file ``hang_file`` exists, every call blocks (a hung runtime, for liveness tests).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from evotok.export.runtime import F32, U8, Codes, Runtime
from evotok.export.types import ModelInfo, SelfTestResult

# The shipped model's input and code sizes (256 px, 16x16 grid, 16 depths, 1024 codes): ``FakeRuntime(**REAL_SIZE)``
# moves payloads and results of the real size (``EVOTOK_FAKE_COST_MS``, ``evotok bench service --frontends``).
REAL_SIZE: dict[str, int] = {"image_size": 256, "grid": 16, "num_depths": 16, "codebook_size": 1024}


class FakeRuntime(Runtime):
    def __init__(
        self,
        image_size: int = 64,
        grid: int = 4,
        num_depths: int = 4,
        codebook_size: int = 256,
        pixel_depth: int = 2,
        semantic_depth: int = 4,
        semantic_dim: int = 8,
        delay_s: float = 0.0,
        cost_ms: tuple[float, float] | None = None,
        hang_file: Path | str | None = None,
        concurrent: bool = False,
    ) -> None:
        self.info = ModelInfo(
            name="fake",
            weights_hash="0" * 64,
            image_size=image_size,
            grid=grid,
            num_depths=num_depths,
            codebook_size=codebook_size,
            pixel_depth=pixel_depth,
            semantic_depth=semantic_depth,
            semantic_dim=semantic_dim,
            backend="fake",
            semantic_by_depth=tuple(float(d) / num_depths for d in range(1, num_depths + 1)),
        )
        self.delay_s = delay_s
        self.cost_ms = cost_ms
        self.hang_file = Path(hang_file) if hang_file else None
        self.batch_sizes: list[int] = []  # observed batch sizes, for batching tests
        self.concurrent = concurrent  # GPU-like by default: one call at a time

    def concurrent_calls(self) -> bool:
        return self.concurrent

    def _sleep(self, n: int) -> None:
        self.batch_sizes.append(n)
        while self.hang_file is not None and self.hang_file.exists():
            time.sleep(0.02)
        seconds = self.delay_s
        if self.cost_ms is not None:
            seconds = (self.cost_ms[0] + n * self.cost_ms[1]) / 1000
        if seconds:
            time.sleep(seconds)

    def self_test(self, golden_path: Path | None = None, threshold: float = 1.0) -> SelfTestResult:
        """Not a model, so no golden codes: encode fixed images twice and compare (determinism only)."""
        rng = np.random.default_rng(0)
        size = self.info.image_size
        images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        same = FakeRuntime.encode(self, images) == FakeRuntime.encode(self, images)
        del self.batch_sizes[-2:]
        agreement = float(same.mean())
        by_depth = tuple(float(x) for x in same.mean(axis=(0, 1, 2)))
        return SelfTestResult(agreement, by_depth, None, 2, agreement >= threshold, threshold, {"reason": "fake"})

    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        b, size, _, _ = images.shape
        g, cell = self.info.grid, size // self.info.grid
        self._sleep(b)
        blocks = images.reshape(b, g, cell, g, cell, 3)
        if (cell * cell) & (cell * cell - 1) == 0:  # a power-of-two cell area: integer sums, the same means, 10x faster
            means = blocks.sum(axis=(2, 4, 5), dtype=np.uint32) / (cell * cell)  # (B, g, g) in [0, 765]
        else:
            means = blocks.mean(axis=(2, 4)).sum(-1)
        k = self.info.codebook_size
        depths = [((means * (d + 1) * 7.0).astype(np.int64) % k) for d in range(self.info.num_depths)]
        return np.stack(depths, axis=-1).astype(np.uint16)

    def decode(self, codes: Codes) -> U8:
        b, g, _, d = codes.shape
        self._sleep(b)
        used = codes[..., : min(d, self.info.pixel_depth)].astype(np.int64)
        value = (used.sum(-1) * 37 % 256).astype(np.uint8)  # (B, g, g)
        cell = self.info.image_size // g
        img = np.repeat(np.repeat(value, cell, axis=1), cell, axis=2)
        return np.stack([img, 255 - img, img // 2], axis=-1).astype(np.uint8)

    def embed_codes(self, codes: Codes) -> F32:
        b, g, _, d = codes.shape
        self._sleep(b)
        used = codes[..., : min(d, self.info.semantic_depth)].astype(np.float32)
        feat = np.zeros((b, g * g, self.info.semantic_dim), np.float32)
        flat = used.reshape(b, g * g, -1)
        feat[..., : flat.shape[-1]] = flat / self.info.codebook_size
        return feat


def parse_cost_ms(value: str) -> tuple[float, float] | None:
    """``"A,b"`` (``--fake-cost-ms``, ``EVOTOK_TEST_FAKE_COST_MS``) -> ``(A, b)``: a batch of ``B`` costs
    ``A + B * b`` ms; ``""`` -> None."""
    if not value:
        return None
    a, b = (float(v) for v in value.split(","))
    return a, b


def write_fake_model_card(folder: Path, **sizes: int) -> Path:
    """A model folder with only ``config.json`` describing ``FakeRuntime(**sizes)``'s shapes (an API in Redis
    mode reads its model card there while its workers run the FakeRuntime); for tests and ``bench --fake``.
    ``sizes``: ``FakeRuntime`` size arguments, e.g. ``**REAL_SIZE`` for a card of the real model's size."""
    import json

    from evotok.model.config import EvoTokConfig, PixelDecoderConfig, QuantizerConfig, SemanticDecoderConfig

    info = FakeRuntime(**sizes).info  # type: ignore[arg-type]
    cfg = EvoTokConfig(
        name=info.name, image_size=info.image_size, grid=info.grid, latent_dim=8,
        quantizer=QuantizerConfig(num_depths=info.num_depths, codebook_size=info.codebook_size, dim=8),
        pixel_decoder=PixelDecoderConfig(depth=info.pixel_depth, ch_mult=(1, 1, 1, 1, 1)),
        semantic_decoder=SemanticDecoderConfig(depth=info.semantic_depth, out_dim=info.semantic_dim),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"name": info.name, "hash": info.weights_hash,
                                                    "config": cfg.to_dict()}))
    return folder
