"""Test doubles for the service: a FakeRuntime whose golden self-test is computed, not assumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evotok.export.fake import FakeRuntime
from evotok.export.types import SelfTestResult


class ServiceFakeRuntime(FakeRuntime):
    """FakeRuntime + a self-test: encodes fixed images and compares them with reference codes.

    ``corrupt`` flips that many reference codes, so the self-test fails (for readiness tests);
    ``fail_on`` makes every batch of that op raise (for backend-error tests).
    """

    def __init__(self, corrupt: int = 0, fail_on: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.corrupt = corrupt
        self.fail_on = fail_on
        self.closed = False

    def encode(self, images: Any) -> Any:
        if self.fail_on == "encode":
            raise RuntimeError("injected failure")
        return super().encode(images)

    def self_test(self, golden_path: Path | None = None, threshold: float = 1.0) -> SelfTestResult:
        rng = np.random.default_rng(0)
        size = self.info.image_size
        images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        reference = FakeRuntime.encode(self, images).copy()
        self.batch_sizes.pop()
        if self.corrupt:
            flat = reference.reshape(-1)
            flat[: self.corrupt] = (flat[: self.corrupt] + 1) % self.info.codebook_size
        codes = FakeRuntime.encode(self, images)
        self.batch_sizes.pop()
        same = codes == reference
        by_depth = tuple(float(x) for x in same.mean(axis=(0, 1, 2)))
        agreement = float(same.mean())
        mismatch = next((i + 1 for i, a in enumerate(by_depth) if a < 1.0), None)
        return SelfTestResult(agreement, by_depth, mismatch, len(images), agreement >= threshold, threshold)

    def close(self) -> None:
        self.closed = True
