"""A deterministic numpy Runtime for service tests that must not depend on model weights.

Codes are a function of the image content (mean colour per grid cell, quantised per depth), decoding
paints each cell with a colour derived from its codes. It exercises every shape and dtype rule of the
real interface; it is *not* a model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from evotok.export.runtime import F32, U8, Codes, Runtime
from evotok.export.types import ModelInfo


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
        self.batch_sizes: list[int] = []  # observed batch sizes, for batching tests

    def _sleep(self, n: int) -> None:
        self.batch_sizes.append(n)
        if self.delay_s:
            import time

            time.sleep(self.delay_s)

    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        b, size, _, _ = images.shape
        g, cell = self.info.grid, size // self.info.grid
        self._sleep(b)
        means = images.reshape(b, g, cell, g, cell, 3).mean(axis=(2, 4)).sum(-1)  # (B, g, g) in [0, 765]
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
