"""The auto batch cap, measured at warm-up on the runtime the app serves, in /info and /metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from evotok.service.app import create_app
from tests.service.conftest import make_settings, wait_ready
from tests.service.fakes import ServiceFakeRuntime


@pytest.mark.parametrize(("cost_ms", "cap"), [((20.0, 1.0), 8), ((0.0, 15.0), 1)])
def test_auto_cap_follows_the_runtime_cost(cost_ms: tuple[float, float], cap: int) -> None:
    rt = ServiceFakeRuntime(cost_ms=cost_ms)  # fixed cost per call: batching pays; per-item cost only: it does not
    app = create_app(make_settings(batch_cap="auto", max_batch_size=8), runtime_factory=lambda: rt)
    with TestClient(app) as client:
        wait_ready(client, timeout=60)
        info = client.get("/info").json()
        assert info["batch_cap"] == "auto" and info["max_batch_size"] == 8
        caps = info["batch_caps"]
        # measured up to the first flat step: every size when each doubling pays, only 1 and 2 when none does
        measured = {"1", "2", "4", "8"} if cap == 8 else {"1", "2"}
        assert caps["encode"]["cap"] == cap and set(caps["encode"]["item_ms"]) == measured
        assert app.state.evotok.batcher.policy.cap("encode") == cap
        assert f'evotok_batch_cap{{op="encode"}} {float(cap)}' in client.get("/metrics").text
