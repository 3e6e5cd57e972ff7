"""Metrics that add up, checked against a real two-worker run: the shipped Grafana dashboard's queue queries,
evaluated over both workers' scrapes, equal what Redis says (not N times it); the worker sets build_info and logs
JSON lines when ``EVOTOK_LOG_JSON`` is set."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evotok.export.fake import FakeRuntime
from evotok.service.redis_protocol import GROUP, Keys
from evotok.service.redis_queue import RedisBatcher
from evotok.service.settings import Settings
from tests.queue.queue_harness import RedisServer, WorkerProc, queue_env, wait_live_workers

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "monitoring" / "grafana" / "dashboards" / "evotok.json"
QUERY = re.compile(r"^(sum|max) by \(([a-z_, ]+)\) \((evotok_[a-z_]+)\)$")


def evaluate(expr: str, scrapes: list[str]) -> dict[tuple[str, ...], float]:
    """``sum|max by (labels) (metric)`` over the samples of every scrape, as Prometheus would over the targets."""
    m = QUERY.match(expr)
    assert m, f"the test evaluates only `agg by (labels) (metric)` queries, not {expr!r}"
    agg, by, name = m.group(1), [x.strip() for x in m.group(2).split(",")], m.group(3)
    groups: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for text in scrapes:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name:
                    groups[tuple(s.labels[k] for k in by)].append(s.value)
    return {k: (sum(v) if agg == "sum" else max(v)) for k, v in groups.items()}


def queue_panel() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dash["panels"]:
        exprs = [t["expr"] for t in panel.get("targets", [])]
        if any("evotok_queue_entries" in e for e in exprs):
            return exprs
    raise AssertionError("no queue panel in the dashboard")


async def test_dashboard_queue_queries_equal_redis_with_two_workers(redis_server: RedisServer, prefix: str,
                                                                    tmp_path: Path) -> None:
    hang = tmp_path / "hang"  # while it exists, the fake runtime's calls block: the queue holds still
    env = queue_env(redis_server.url, prefix, EVOTOK_BATCH_CAP="1", EVOTOK_MAX_BATCH_SIZE="1",
                    EVOTOK_LOG_JSON="1", EVOTOK_LOG_LEVEL="info", EVOTOK_TEST_FAKE_HANG_FILE=str(hang))
    workers = [WorkerProc(env, f"w{i}", tmp_path) for i in range(2)]
    settings = Settings(queue="redis", redis_url=redis_server.url, redis_prefix=prefix, worker_heartbeat_s=1.0)
    rt = FakeRuntime()
    batcher = RedisBatcher(settings, rt.info)
    await batcher.start()
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        wait_live_workers(redis_server, prefix, 2)
        hang.touch()
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (rt.info.image_size, rt.info.image_size, 3), dtype=np.uint8) for _ in range(10)]
        tasks = [asyncio.create_task(batcher.submit("encode", x, time.monotonic() + 120)) for x in images]
        c = redis_server.client()
        entries, stream = queue_panel()
        end = time.monotonic() + 30  # until both workers sit in their (blocked) first batch and a heartbeat
        while True:                  # has published the stream gauges of that state
            await asyncio.sleep(0.2)
            info = next(g for g in c.xinfo_groups(Keys(prefix).work("encode")) if g["name"] in (GROUP, GROUP.encode()))
            truth = {"lag": int(info["lag"]), "pending": int(info["pending"])}
            scrapes = [w.metrics() for w in workers]
            cluster = evaluate(stream, scrapes)
            settled = (truth["lag"] + truth["pending"] == 10 and evaluate(entries, scrapes).get(("encode", "pending")) == 2
                       and cluster.get(("encode", "lag")) == truth["lag"])
            if settled or time.monotonic() > end:
                break
        assert truth["lag"] + truth["pending"] == 10 and truth["lag"] >= 6, truth  # each reads ahead <= 2 x cap 1
        per_process = evaluate(entries, scrapes)  # sum by (op, state) of each process's own items
        # both workers are inside one call (pending 1 each); what else they read is held, waiting (lag)
        assert per_process[("encode", "pending")] == 2, per_process
        assert per_process[("encode", "lag")] == truth["pending"] - 2, (per_process, truth)
        cluster = evaluate(stream, scrapes)  # the Redis stream, published once
        assert cluster[("encode", "lag")] == truth["lag"] and cluster[("encode", "pending")] == truth["pending"]
        publishers = [s for s in scrapes if "evotok_stream_entries{" in s]
        assert len(publishers) == 1, "the cluster-wide stream gauges must come from exactly one worker"
        for w, text in zip(workers, scrapes, strict=True):
            assert re.search(r'evotok_build_info\{[^}]*model_version="[0-9a-f]+"', text), w.name
        for task in tasks:
            task.cancel()
    finally:
        hang.unlink(missing_ok=True)
        for w in workers:
            w.stop()
        await batcher.drain(1)
    lines = [ln for ln in (tmp_path / "worker-w0-1.log").read_text().splitlines() if ln.startswith("{")]
    assert lines and all(json.loads(ln)["level"] for ln in lines)  # EVOTOK_LOG_JSON: one JSON object per line


def test_request_id_reaches_the_worker_log(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    """``X-Request-ID`` is echoed by the API, carried in the work entry and written in the worker's log line."""
    import httpx

    from tests.queue.queue_harness import fake_worker_and_api, png_bytes

    with fake_worker_and_api(redis_server, prefix, tmp_path, 0.0, EVOTOK_LOG_LEVEL="debug") as (api, _worker):
        r = httpx.post(f"{api.url}/encode", content=png_bytes(np.zeros((64, 64, 3), np.uint8)), timeout=30,
                       headers={"content-type": "image/png", "x-request-id": "trace-me-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"
    log = (tmp_path / "worker-w0-1.log").read_text()
    assert "request trace-me-42: ok" in log and "request_id=trace-me-42" in log, log[-2000:]
