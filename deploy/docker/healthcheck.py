"""Container health check: exit 0 when this container's EvoTok process answers ``GET /healthz``.

The API listens on ``$EVOTOK_PORT`` (default 8000); a worker serves ``/healthz`` on
``$EVOTOK_WORKER_METRICS_PORT`` (default 9100). Which one runs is read from PID 1's command line
(``evotok worker`` vs ``evotok serve``); unknown commands try both. ``--ready`` checks ``/readyz``.
Standard library only; used by the Dockerfile ``HEALTHCHECK`` and by compose.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def ports() -> list[int]:
    api = int(os.environ.get("EVOTOK_PORT", "8000"))
    worker = int(os.environ.get("EVOTOK_WORKER_METRICS_PORT", "9100"))
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    if b"worker" in argv:
        return [worker]
    if b"serve" in argv or b"api" in argv:
        return [api]
    return [api, worker]


def ok(port: int, path: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    path = "/readyz" if "--ready" in argv else "/healthz"
    return 0 if any(ok(p, path) for p in ports()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
