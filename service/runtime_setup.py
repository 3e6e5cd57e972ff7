"""The one place a Runtime is built and prepared from ``Settings``, for the API process and the workers alike.

``build_runtime(settings)`` turns the settings into the backend's options (``runtime_options``: providers, cache
dir, precision, threads) so both processes construct an identical Runtime. ``prepare_runtime`` then warms it,
runs the golden self-test and sets the batch caps (measured when ``EVOTOK_BATCH_CAP=auto``, see
``autocap.py``); its result also seeds the per-op batch time estimates that deadline drops and admission use.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evotok.export.runtime import Runtime
from evotok.export.types import SelfTestResult
from evotok.service import metrics
from evotok.service.autocap import CapChoice, measure
from evotok.service.core import OPS, BatchPolicy, Op
from evotok.service.settings import Settings

log = logging.getLogger(__name__)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU limit of this container in cores (cgroup v2 ``cpu.max``, or v1 ``cfs_quota/period``), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: its affinity mask (a cpuset), lowered to a container's CPU limit
    (Kubernetes ``resources.limits.cpu``), rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def planned_lanes(settings: Settings) -> int:
    """Runtime calls that may run at once: ``EVOTOK_RUNTIME_LANES``, or for 0 (auto) one per usable core on
    ONNX Runtime CPU (a single image cannot keep two cores busy through intra-op threads: one call per core
    serves about 1.5x the images/s of one call over all cores, docs/benchmarks.md), else 1 (GPU, TensorRT,
    torch: one stream; batching is their parallelism)."""
    if settings.runtime_lanes:
        return settings.runtime_lanes
    return usable_cores() if settings.backend == "onnxruntime" and settings.device == "cpu" else 1


def threads_per_lane(lanes: int) -> int:
    """ONNX Runtime CPU intra-op threads for one of ``lanes`` concurrent runtime calls (in one process, or one
    per worker process): the usable cores shared out, at least 1."""
    return max(1, usable_cores() // lanes)


def runtime_options(settings: Settings) -> dict[str, Any]:
    """Backend options from settings; the same dict in every process (the TensorRT precision drift lived here).
    ONNX Runtime's intra-op threads default to the usable cores shared out between the lanes."""
    if settings.backend == "onnxruntime":
        options: dict[str, Any] = {
            "providers": ("cuda", "cpu") if settings.device == "cuda" else ("cpu",),
            "cache_dir": settings.cache_dir,
        }
        lanes = planned_lanes(settings)
        if settings.threads:
            options["threads"] = settings.threads
        elif lanes > 1 and settings.device == "cpu":
            options["threads"] = threads_per_lane(lanes)
        if settings.precision != "fp32":
            options["precision"] = settings.precision  # OrtRuntime refuses what its providers cannot run
        return options
    if settings.backend == "torch":
        return {"device": settings.device, "precision": settings.precision}
    return {"precision": settings.precision, "cache_dir": settings.cache_dir}


def build_runtime(settings: Settings, fake: bool = False, fake_delay_ms: float = 0.0,
                  fake_cost_ms: tuple[float, float] | None = None) -> Runtime:
    """The configured backend over ``settings.weights``; or, for tests and ``bench --fake``, a FakeRuntime
    whose batch of ``B`` items costs ``fake_delay_ms`` or ``A + B * b`` ms with ``fake_cost_ms = (A, b)``."""
    if fake:
        from evotok.export.fake import FakeRuntime

        return FakeRuntime(delay_s=fake_delay_ms / 1000, cost_ms=fake_cost_ms)
    if settings.fake_cost_ms:  # EVOTOK_FAKE_COST_MS: a fake of the real model's size, for measuring the front end
        from evotok.export.fake import REAL_SIZE, FakeRuntime, parse_cost_ms

        return FakeRuntime(**REAL_SIZE, cost_ms=parse_cost_ms(settings.fake_cost_ms))  # type: ignore[arg-type]
    from evotok.export import runtime as runtime_module

    return runtime_module.load_runtime(settings.weights, settings.backend, **runtime_options(settings))


@dataclass(frozen=True)
class Prepared:
    """What preparing a Runtime found: the policy to batch with, batch times, the self-test, timings."""

    policy: BatchPolicy
    caps: dict[Op, CapChoice]  # per op: measured per-item times and the chosen cap
    self_test: SelfTestResult
    details: dict[str, float] = field(default_factory=dict)  # warmup_s, self_test_s, cap_s
    lanes: int = 1  # runtime calls that may run at once (resolve_lanes)

    def batch_s(self) -> dict[Op, float]:
        """Measured seconds of one batch at each op's cap (first estimate of deadline drops / admission)."""
        return {op: c.item_s[c.cap] * c.cap for op, c in self.caps.items() if c.cap in c.item_s}

    def caps_dict(self) -> dict[str, Any]:
        return {op: c.to_dict() for op, c in self.caps.items()}


def resolve_lanes(settings: Settings, runtime: Runtime) -> int:
    """``planned_lanes``, checked against the built Runtime: a lane count above 1 on a runtime that does not
    allow concurrent calls is refused when set explicitly, and falls back to 1 when automatic."""
    lanes = planned_lanes(settings)
    if lanes > 1 and not runtime.concurrent_calls():
        if settings.runtime_lanes:
            raise ValueError(f"EVOTOK_RUNTIME_LANES={settings.runtime_lanes}: the {runtime.info.backend} runtime "
                             "on these providers does not allow concurrent calls; use 1 (or 0 = auto)")
        return 1
    return lanes


def base_policy(settings: Settings) -> BatchPolicy:
    return BatchPolicy(settings.max_batch_size, settings.max_queue_delay_ms / 1000.0)


def prepare_runtime(runtime: Runtime, settings: Settings,
                    phase: Callable[[str], None] = lambda _p: None) -> Prepared:
    """Warm up, golden self-test, batch caps. Blocking: run it on the runtime thread (in process) or before
    the worker loop starts. ``phase`` is told ``warming`` / ``self-test`` / ``batch-cap`` as each begins."""
    details: dict[str, float] = {}
    policy = base_policy(settings)
    phase("warming")
    t0 = time.perf_counter()
    runtime.warmup(sorted({min(b, settings.max_batch_size) for b in settings.warmup_batch_sizes}))
    details["warmup_s"] = time.perf_counter() - t0
    metrics.WARMUP.labels("runtime").set(details["warmup_s"])

    phase("self-test")
    t0 = time.perf_counter()
    result = runtime.self_test(threshold=settings.self_test_threshold)
    details["self_test_s"] = time.perf_counter() - t0
    info = runtime.info
    metrics.CODE_AGREEMENT.labels(info.weights_hash[:12], str(info.image_size)).set(result.agreement)
    if not result.passed:
        return Prepared(policy, {}, result, details)

    lanes = resolve_lanes(settings, runtime)
    phase("batch-cap")
    t0 = time.perf_counter()
    auto = settings.batch_cap == "auto" and settings.max_batch_size > 1
    if auto:
        caps = measure(runtime, settings.max_batch_size, repeats=3, min_gain=settings.batch_cap_min_gain,
                       lanes=lanes)
    else:
        fixed = settings.max_batch_size if settings.batch_cap == "auto" else min(int(settings.batch_cap),
                                                                                 settings.max_batch_size)
        caps = measure(runtime, fixed, repeats=1, sizes=[fixed], warm=False)
    details["batch_cap_s"] = time.perf_counter() - t0
    policy = policy.with_caps({op: c.cap for op, c in caps.items()})
    for op in OPS:
        metrics.BATCH_CAP.labels(op).set(policy.cap(op))
    metrics.RUNTIME_LANES.set(lanes)
    log.info("batch caps (%s, upper bound %d): %s; %d runtime lane(s)", "auto" if auto else "fixed",
             settings.max_batch_size,
             ", ".join(f"{op} {c.cap} ({1000 * c.item_s[c.cap]:.1f} ms/item)" for op, c in caps.items()), lanes)
    return Prepared(policy, caps, result, details, lanes)
