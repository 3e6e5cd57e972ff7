"""``evotok serve`` with several front ends: start the runtime process and N front-end processes, keep them alive.

``serve_local(settings, n)``: metrics in prometheus multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` shared
by every process, so any front end's ``/metrics`` is the sum of all), a private directory for the runtime socket,
one runtime process and ``n`` front ends (``python -m evotok.service.local.*``, the same environment). A child that
exits is started again (its live gauges dropped from the shared files first), after a pause that grows while it
keeps dying young; the front ends reconnect to a restarted runtime process by themselves. SIGTERM / SIGINT: the
front ends drain first (uvicorn's graceful shutdown, then their ``LocalBatcher``), then the runtime process.

``frontends_for(settings)``: how many front ends ``EVOTOK_FRONTENDS`` asks for (0 = auto = the usable cores when
more than one, else 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evotok.service.settings import Settings

log = logging.getLogger("evotok.service.local.supervisor")


def frontends_for(settings: Settings) -> int:
    if settings.frontends:
        return settings.frontends
    from evotok.service.runtime_setup import usable_cores

    return usable_cores()  # at least 1


@dataclass
class Child:
    name: str
    module: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 0.0
    due: float = 0.0  # when to start it again
    restarts: int = 0
    args: list[str] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env=env)
        self.started = time.monotonic()
        log.info("%s: pid %d", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def serve_local(settings: Settings, n: int) -> int:
    from evotok.service.cli import _setup_multiprocess_metrics

    _setup_multiprocess_metrics()
    run_dir = Path(tempfile.mkdtemp(prefix="evotok-local-"))
    env = {**os.environ, "EVOTOK_LOCAL_SOCKET": str(run_dir / "runtime.sock"),
           "EVOTOK_WORKERS": str(n)}  # the HTTP processes that share the port (gRPC's SO_REUSEPORT too)
    runtime = Child("runtime process", "evotok.service.local.runtime_proc")
    fronts = [Child(f"front end {i}", "evotok.service.local.frontend_proc", args=[f"--index={i}"]) for i in range(n)]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runtime.start(env)
        for f in fronts:
            f.start(env)
        while not stopping:
            time.sleep(0.05)
            for child in (runtime, *fronts):
                _keep(child, env)
        _stop(fronts, settings.request_timeout_s + 10)
        _stop([runtime], settings.request_timeout_s + 10)
    finally:
        for child in (*fronts, runtime):
            if child.alive():
                assert child.proc is not None
                child.proc.kill()
                child.proc.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _keep(child: Child, env: dict[str, str]) -> None:
    """Start ``child`` again when it has exited (after its back-off)."""
    if child.alive():
        return
    now = time.monotonic()
    if child.proc is not None:  # just found dead
        code = child.proc.returncode
        _mark_dead(child.proc.pid)
        child.backoff_s = min(5.0, max(0.1, child.backoff_s * 2)) if now - child.started < 10 else 0.0
        child.due = now + child.backoff_s
        child.proc = None
        log.warning("%s exited with %s; starting it again in %.1f s", child.name, code, child.backoff_s)
    if now >= child.due:
        child.restarts += 1
        child.start(env)


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):  # bookkeeping of the shared metric files only
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _stop(children: list[Child], timeout_s: float) -> None:
    for c in children:
        if c.alive():
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout_s
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", c.name, timeout_s)
            c.proc.kill()
            c.proc.wait()
