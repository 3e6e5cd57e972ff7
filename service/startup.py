"""The one start-up path of a process that runs the Runtime (the API in process, ``evotok worker``), and logging.

``start_runtime(settings, factory, phase)``: build the Runtime (timed: ``evotok_engine_load_seconds``), prepare
it (``runtime_setup.prepare_runtime``: warm-up, golden self-test, batch caps), set ``evotok_build_info``, and
seed the run-time estimates from the measured batch times. Blocking: the API runs it on its set-up thread, the
worker before its loop. A failed self-test is returned as ``Started.error`` (the process must not serve).

``configure_logging(settings)``: plain or JSON lines (``EVOTOK_LOG_JSON``) at ``EVOTOK_LOG_LEVEL``, the same in
every process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.runtime_setup import Prepared, prepare_runtime
from evotok.service.settings import Settings
from evotok.service.step import RunTimes

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        for key in ("request_id",):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: Settings) -> None:
    """Root logging for this process from the settings (replaces handlers set earlier)."""
    from evotok.service.request_context import PlainFormatter, RequestIdLogFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdLogFilter(default=None))  # a request's lines (API or worker) carry its id
    handler.setFormatter(JsonFormatter() if settings.log_json else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


@dataclass(frozen=True)
class Started:
    """A built and prepared Runtime, or why it must not serve."""

    runtime: Runtime
    prepared: Prepared
    times: RunTimes
    load_s: float
    error: str | None = None  # the golden self-test failed


def start_runtime(settings: Settings, factory: Callable[[], Runtime],
                  phase: Callable[[str], None] = lambda _p: None) -> Started:
    """Build, warm, self-test and time the Runtime; ``phase`` is told ``loading``, ``warming``, ``self-test``,
    ``batch-cap`` as each begins. Raises what building raises (the caller reports it)."""
    from evotok import __version__

    phase("loading")
    t0 = time.perf_counter()
    runtime = factory()
    load_s = time.perf_counter() - t0
    metrics.ENGINE_LOAD.labels("runtime").set(load_s)
    prepared = prepare_runtime(runtime, settings, phase)
    info = runtime.info
    metrics.BUILD_INFO.labels(__version__, info.weights_hash[:12], info.backend, info.precision, "").set(1)
    times = RunTimes()
    r = prepared.self_test
    if not r.passed:
        error = (f"golden self-test failed: agreement {r.agreement:.4f} < threshold {r.threshold} "
                 f"(first mismatch at depth {r.first_mismatch_depth})")
        if r.details.get("reason"):
            error += f": {r.details['reason']}"
        log.error(error)
        return Started(runtime, prepared, times, load_s, error)
    for op, seconds in prepared.batch_s().items():
        times.seed(op, seconds, prepared.policy.cap(op))
    log.info("runtime ready: %s (%s, %s), self-test agreement %.4f, load %.2f s", info.name, info.backend,
             info.precision, r.agreement, load_s)
    return Started(runtime, prepared, times, load_s)
