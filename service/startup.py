"""Startup for the in-process batcher: load the Runtime, warm it, run the golden self-test, then go ready.

Everything runs on the batcher's runtime thread (``InProcessBatcher.run_in_worker``) as a background task of
the lifespan, so ``/healthz`` answers while a large model loads and ``/readyz`` stays 503 until the self-test
passes (``agreement >= settings.self_test_threshold``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from evotok import __version__
from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.inprocess import InProcessBatcher
from evotok.service.state import ServiceState

log = logging.getLogger(__name__)
RuntimeFactory = Callable[[], Runtime]


async def start_inprocess(state: ServiceState, batcher: InProcessBatcher, factory: RuntimeFactory) -> None:
    settings = state.settings
    try:
        state.phase = "loading"
        t0 = time.perf_counter()
        runtime = await batcher.run_in_worker(factory)
        state.details["load_s"] = time.perf_counter() - t0
        metrics.ENGINE_LOAD.labels("runtime").set(state.details["load_s"])
        info = runtime.info
        log.info("loaded %s (%s, %s) in %.2f s", info.name, info.backend, info.precision, state.details["load_s"])

        state.phase = "warming"
        sizes = sorted({min(b, settings.max_batch_size) for b in settings.warmup_batch_sizes})
        t0 = time.perf_counter()
        await batcher.run_in_worker(lambda: runtime.warmup(sizes))
        state.details["warmup_s"] = time.perf_counter() - t0
        metrics.WARMUP.labels("runtime").set(state.details["warmup_s"])

        state.phase = "self-test"
        t0 = time.perf_counter()
        result = await batcher.run_in_worker(lambda: runtime.self_test(threshold=settings.self_test_threshold))
        state.details["self_test_s"] = time.perf_counter() - t0
        state.self_test = result
        metrics.CODE_AGREEMENT.labels(info.weights_hash[:12], str(info.image_size)).set(result.agreement)
        metrics.BUILD_INFO.labels(__version__, info.weights_hash[:12], info.backend, info.precision, "").set(1)
        state.info = info
        if not result.passed:
            state.phase = "failed"
            state.startup_error = (
                f"golden self-test failed: agreement {result.agreement:.4f} < threshold {result.threshold}"
                f" (first mismatch at depth {result.first_mismatch_depth})"
            )
            if result.details.get("reason"):
                state.startup_error += f": {result.details['reason']}"

            log.error(state.startup_error)
            return
        batcher.attach(runtime)
        state.phase = "ready"
        metrics.READY.set(1)
        log.info("ready: self-test agreement %.4f", result.agreement)
    except Exception as exc:
        state.phase = "failed"
        state.startup_error = f"{type(exc).__name__}: {exc}"
        log.exception("startup failed")
