"""Real processes for the tests and the benchmarks, started and stopped the same way everywhere.

- ``free_port()``: a TCP port free on 127.0.0.1 now.
- ``Proc``: a command started with its own environment and log file; ``wait_http`` polls a URL until it answers
  the wanted status (failing at once, with the log's tail, if the process exits); ``stop`` signals it by PID and
  waits, then kills it.
- ``RedisServer``: a private ``redis-server`` on a free port without persistence, stopped by the PID in its
  pidfile (never by name), restartable on the same port (fault-injection tests stop and restart it).
- ``rss_bytes`` / ``cpu_seconds``: what ``/proc`` says of a PID (0 once it is gone); ``child_pids`` /
  ``descendant_pids`` / ``tree_cpu_seconds``: its live children, all its live descendants, and the CPU seconds
  of it and its live descendants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (Linux /proc), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (Linux ``/proc/<pid>/task/*/children``), empty once it is gone."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def descendant_pids(pid: int) -> list[int]:
    """The live descendants of ``pid``: its children, theirs, and so on."""
    return [d for child in child_pids(pid) for d in (child, *descendant_pids(child))]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (children that exited are not counted)."""
    return cpu_seconds(pid) + sum(cpu_seconds(d) for d in descendant_pids(pid))


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
    """Signal ``proc`` by its PID, wait up to ``timeout_s``, then SIGKILL; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


@dataclass
class Proc:
    """One started command: its ``Popen``, its log file, and how to wait for it and stop it."""

    cmd: list[str]
    env: dict[str, str]
    log_path: Path | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        out: int | IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT if out is not None else None)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout_s: float = 60.0, status: int = 200) -> None:
        """Poll ``url`` until it answers ``status``; raise at once (with the log's tail) if the process exits."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self.running():
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.cmd[:4]} exited with {code}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == status:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == status:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        code = 0 if self.proc is None else stop_process(self.proc, sig, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@dataclass
class RedisServer:
    """``redis-server --daemonize yes`` without persistence, stopped by the PID in its pidfile."""

    workdir: Path
    port: int = field(default_factory=free_port)
    pid: int | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "redis.pid"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--pidfile", str(self.pidfile), "--logfile", str(self.workdir / "redis.log"), *self.extra,
        ]
        subprocess.run(cmd, check=True, timeout=timeout_s)
        end = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping() and self.pidfile.exists() and self.pidfile.read_text().strip():
                        self.pid = int(self.pidfile.read_text().strip())
                        return self
                except (redis.ConnectionError, ValueError):
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        end = time.monotonic() + timeout_s
        while pid_alive(self.pid) and time.monotonic() < end:
            time.sleep(0.01)
        while time.monotonic() < end:  # the port must be free again before a restart on it
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.01)
        self.pid = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def used_memory_peak(self) -> int:
        c = self.client()
        try:
            return int(c.info("memory")["used_memory_peak"])
        finally:
            c.close()
