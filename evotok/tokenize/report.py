"""What a tokenize run did: counts for logs and tests, the tqdm bar, and the one-line summary every engine prints."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunReport:
    engine: str = "local"
    shards_total: int = 0
    shards_written: list[int] = field(default_factory=list)  # by this run
    shards_skipped: list[int] = field(default_factory=list)  # already complete
    samples_processed: int = 0  # samples read and encoded (or failed) by this run; resumed ones not counted
    failures: int = 0  # of those, the ones recorded as failures
    manifest_written: bool = False
    seconds: float = 0.0  # wall time of the processing loop (after planning and model start-up)

    @property
    def images_encoded(self) -> int:
        return self.samples_processed - self.failures

    def summary(self) -> str:
        rate = self.samples_processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.images_encoded} images, {self.failures} failures in {self.seconds:.1f} s ({rate:.1f} img/s); "
            f"wrote {len(self.shards_written)} shards, skipped {len(self.shards_skipped)} done"
            + ("; manifest.json written" if self.manifest_written else "")
        )


class Progress:
    """A tqdm bar over samples (or nothing with ``enabled=False``) and the loop's wall clock."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, file=sys.stderr)
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.t0
