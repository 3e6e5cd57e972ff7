"""``evotok bench service --fake``: the benchmark behind docs/benchmarks.md's batching ratios runs end to end.

Both paths (in-process, and Redis with a real ``redis-server`` and worker started by the benchmark) serve a
FakeRuntime whose batch of B items sleeps A + B·b ms. With A = 20 ms, b = 1 ms and 8 closed-loop clients,
batching off serves at most 1000 / 21 = 48 img/s on the one lane, batching on serves several items per 20 ms
batch; so on/off must be well above 1 on both paths whatever the machine's speed (measured 3.5x here).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evotok.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.e2e]


def test_fake_bench_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evotok.cli", "bench", "service", "--fake", "--fake-cost-ms", "20,1",
         "--paths", "inprocess,redis", "--configs", "off,on", "--concurrency", "8", "--duration", "1.5",
         "--limit-seconds", "0.3", "--startup-timeout", "120", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    levels = json.loads(out.read_text())["levels"]
    by = {(lv["path"], lv["config"]): lv for lv in levels}
    assert set(by) == {("inprocess", "off"), ("inprocess", "on"), ("redis", "off"), ("redis", "on")}
    for lv in levels:
        assert lv["errors"] == 0 and lv["throughput"] > 0
    for path in ("inprocess", "redis"):
        off, on = by[(path, "off")], by[(path, "on")]
        assert off["mean_batch"] == pytest.approx(1.0)
        assert on["mean_batch"] > 2.0
        assert off["throughput"] < 1000 / 21 * 1.05  # one 21 ms batch of 1 at a time
        assert on["throughput"] > 2.0 * off["throughput"]
    last = proc.stdout.strip().splitlines()[-1]
    ratios = [float(x) for x in re.findall(r"on/off ([0-9.]+)x", last)]
    assert last.startswith("At 8 clients:") and len(ratios) == 2, last
    assert ratios == pytest.approx([by[(p, "on")]["throughput"] / by[(p, "off")]["throughput"]
                                    for p in ("inprocess", "redis")], abs=0.01)


def test_redis_path_runs_the_workers_asked_for(tmp_path: Path) -> None:
    """``--redis-workers 2``: two worker processes share the stream; with batching off each serves one 21 ms item
    at a time, so together they pass the one-worker bound."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evotok.cli", "bench", "service", "--fake", "--fake-cost-ms", "20,1",
         "--paths", "redis", "--configs", "off", "--concurrency", "8", "--duration", "2", "--redis-workers", "2",
         "--limit-seconds", "0.3", "--startup-timeout", "120", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (level,) = json.loads(out.read_text())["levels"]
    assert level["errors"] == 0 and level["mean_batch"] == pytest.approx(1.0)
    assert level["throughput"] > 1.4 * 1000 / 21  # one worker cannot pass 47.6 img/s
    assert "the Redis path 2 worker(s)" in proc.stdout
