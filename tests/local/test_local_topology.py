"""Front-end processes and one runtime process (``service/local/``), as ``evotok serve`` runs them.

Real processes (``evotok.tools.procs``), real uvicorn, ``EVOTOK_FAKE_COST_MS`` (a FakeRuntime of the real model's
size whose batch costs 150 ms, so that work queues up): answers equal to the single process's; deadlines (504),
a client gone (its item skipped), overload (429 with Retry-After); a front end killed under load is replaced and
every request the other front end admitted is answered; the runtime process killed: the requests in flight get
explicit 503s and the service recovers by itself.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from evotok.tools.procs import Proc, child_pids, free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
COST = "150,0"  # ms per batch, whatever its size


def _env(frontends: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOTOK_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"PYTHONPATH": str(REPO), "EVOTOK_FRONTENDS": str(frontends), "EVOTOK_FAKE_COST_MS": COST,
                "EVOTOK_GRPC_PORT": "0", "EVOTOK_MAX_BATCH_SIZE": "4", "EVOTOK_BATCH_CAP": "4",
                "EVOTOK_WARMUP_BATCH_SIZES": "[1]", "EVOTOK_MAX_QUEUE_SIZE": "12", "EVOTOK_LOG_LEVEL": "warning",
                **extra})
    return env


class Served:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc, self.url = proc, url

    def children(self) -> dict[str, list[int]]:
        """The supervisor's children by kind (``runtime`` / ``frontend``), from their command lines."""
        out: dict[str, list[int]] = {"runtime": [], "frontend": []}
        for pid in child_pids(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"runtime_proc" in cmd:
                out["runtime"].append(pid)
            elif b"frontend_proc" in cmd:
                out["frontend"].append(pid)
        return out

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _start(tmp: Path, name: str, frontends: int) -> Served:
    port = free_port()
    cmd = [sys.executable, "-m", "evotok.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc(cmd, _env(frontends), tmp / f"{name}.log", cwd=REPO).start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(f"{url}/readyz", timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    return Served(proc, url)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    tmp = tmp_path_factory.mktemp("local")
    local = _start(tmp, "local", 2)
    try:
        single = _start(tmp, "single", 1)
    except BaseException:
        local.proc.stop()
        raise
    try:
        yield local, single
    finally:
        local.proc.stop()
        single.proc.stop()


@pytest.fixture
def local(servers: tuple[Served, Served]) -> Served:
    return servers[0]


def _jpeg(seed: int) -> bytes:
    arr = (np.random.default_rng(seed).random((300, 260, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _post(url: str, body: bytes, timeout_ms: int | None = None, client_timeout: float = 30) -> httpx.Response:
    headers = {"content-type": "image/jpeg"}
    if timeout_ms is not None:
        headers["X-Request-Timeout-Ms"] = str(timeout_ms)
    return httpx.post(f"{url}/encode", content=body, headers=headers, timeout=client_timeout)


def _parallel(fn: object, n: int) -> list[object]:
    out: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            out[i] = fn(i)  # type: ignore[operator]
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_topology_and_answers_equal_single_process(servers: tuple[Served, Served]) -> None:
    local, single = servers
    kids = local.children()
    assert len(kids["runtime"]) == 1 and len(kids["frontend"]) == 2, kids
    assert single.children() == {"runtime": [], "frontend": []}
    info = httpx.get(f"{local.url}/info").json()
    assert (info["image_size"], info["grid"], info["num_depths"]) == (256, 16, 16)
    assert httpx.get(f"{local.url}/healthz").status_code == 200
    for seed in range(3):
        body = _jpeg(seed)
        a, b = _post(local.url, body), _post(single.url, body)
        assert a.status_code == b.status_code == 200
        assert a.json()["codes"] == b.json()["codes"]
        codes = {"codes": a.json()["codes"]}
        da = httpx.post(f"{local.url}/decode", json=codes, timeout=30)
        db = httpx.post(f"{single.url}/decode", json=codes, timeout=30)
        assert da.status_code == db.status_code == 200
        assert da.content == db.content and da.headers["content-type"] == "image/png"
    # a payload the route does not check but the core does: answered with its code, through the hand-off
    bad = httpx.post(f"{local.url}/decode", json={"codes": [[[1]]]}, timeout=30)
    assert bad.status_code == 422
    # every process's metrics in one scrape: the runtime process's batches, the front ends' requests
    assert local.metric("evotok_batch_items_total", op="encode") >= 3
    assert local.metric("evotok_http_requests_total", endpoint="encode", code="200") >= 3


def test_deadlines_504(local: Served) -> None:
    body = _jpeg(1)
    r = _post(local.url, body, timeout_ms=20)  # shorter than one batch: refused at admission
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    # queued behind busy batches: passes in the queue (504), or the admission rule sees it coming (429)
    results = _parallel(lambda i: _post(local.url, body, timeout_ms=2000 if i < 8 else 250), 10)
    codes = Counter(getattr(r, "status_code", None) for r in results)
    assert set(codes) <= {200, 429, 504} and codes[200] >= 8, codes


def test_client_gone_item_skipped(local: Served) -> None:
    body = _jpeg(2)
    before = local.metric("evotok_items_skipped_total", op="encode", reason="cancelled")
    busy = threading.Thread(target=lambda: _parallel(lambda i: _post(local.url, body), 8))
    busy.start()
    time.sleep(0.1)
    with pytest.raises(httpx.TimeoutException):
        _post(local.url, body, client_timeout=0.1)  # queued behind two batches; the client hangs up
    busy.join()
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if local.metric("evotok_items_skipped_total", op="encode", reason="cancelled") > before:
            break
        time.sleep(0.1)
    assert local.metric("evotok_items_skipped_total", op="encode", reason="cancelled") > before


def test_overload_429(local: Served) -> None:
    body = _jpeg(3)
    results = _parallel(lambda i: _post(local.url, body), 30)
    by = Counter(getattr(r, "status_code", None) for r in results)
    assert set(by) <= {200, 429} and by[429] >= 1 and by[200] >= 12, by
    refused = next(r for r in results if isinstance(r, httpx.Response) and r.status_code == 429)
    assert refused.json()["error"]["code"] == "queue_full" and int(refused.headers["retry-after"]) >= 1


class Load:
    """``n`` clients posting back to back (each on its own keep-alive connection) until stopped."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(n)]

    def _client(self, i: int) -> None:
        body = _jpeg(10 + i)
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                try:
                    r = c.post(f"{self.url}/encode", content=body, headers={"content-type": "image/jpeg"})
                    key = f"{r.status_code} {r.json()['error']['code']}" if r.status_code != 200 else "200"
                except httpx.TransportError as exc:
                    key = f"transport {type(exc).__name__}"
                if key != "200":
                    time.sleep(0.05)  # a client backs off a little (Retry-After says 1 s)
                with self._lock:
                    self.outcomes[key] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_frontend_killed_under_load_is_replaced_and_loses_nothing_admitted_elsewhere(local: Served) -> None:
    victim = local.children()["frontend"][0]
    with Load(local.url, 6) as load:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 30  # until the supervisor has replaced it (a loaded machine starts it slowly)
        while time.monotonic() < end:
            kids = local.children()
            if victim not in kids["frontend"] and len(kids["frontend"]) == 2:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the replacement serves under the same load for a moment
    kids = local.children()
    out = load.outcomes
    sent = sum(out.values())
    answered = out["200"]
    transport = sum(v for k, v in out.items() if k.startswith("transport"))
    lost = sent - answered - transport
    print(f"front end killed: sent {sent}, answered {answered}, connections of the killed front end {transport}, "
          f"lost {lost}: {dict(out)}")
    assert lost == 0, out  # every request that reached a live front end got its answer
    assert transport <= 6, out  # at most the killed front end's own in-flight requests (one per client)
    assert answered > 20
    assert victim not in kids["frontend"] and len(kids["frontend"]) == 2, kids
    r = _post(local.url, _jpeg(4))
    assert r.status_code == 200


def test_runtime_killed_in_flight_get_503_and_service_recovers(local: Served) -> None:
    runtime = local.children()["runtime"][0]
    with Load(local.url, 6) as load:
        time.sleep(1.0)
        os.kill(runtime, signal.SIGKILL)
        t_kill = time.monotonic()
        local.proc.wait_http(f"{local.url}/readyz", timeout_s=10, status=503)  # the front ends noticed
        local.proc.wait_http(f"{local.url}/readyz", timeout_s=30)  # the new runtime process passed its self-test
        recovered_s = time.monotonic() - t_kill
        time.sleep(1.5)
    out = load.outcomes
    print(f"runtime killed: recovered in {recovered_s:.1f} s: {dict(out)}")
    assert set(out) <= {"200", "503 not_ready"}, out  # explicit errors, no reset connection, no hang
    assert out["503 not_ready"] >= 1 and out["200"] > 10, out
    kids = local.children()
    assert len(kids["runtime"]) == 1 and kids["runtime"][0] != runtime
    after = [_post(local.url, _jpeg(5)) for _ in range(4)]
    assert [r.status_code for r in after] == [200] * 4, [r.text for r in after]
    assert httpx.get(f"{local.url}/healthz").status_code == 200
