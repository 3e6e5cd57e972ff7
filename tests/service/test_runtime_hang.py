"""In process: a runtime call hung longer than ``EVOTOK_RUNTIME_HANG_S`` turns ``/healthz`` to 503 (liveness),
so Kubernetes restarts the pod; when the call returns, ``/healthz`` is 200 again."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from tests.service.conftest import make_settings, wait_ready
from tests.service.fakes import ServiceFakeRuntime


class GatedRuntime(ServiceFakeRuntime):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = threading.Event()
        self.gate.set()

    def encode(self, images: Any) -> Any:
        self.gate.wait(30)
        return super().encode(images)


def test_hung_runtime_call_fails_liveness() -> None:
    from fastapi.testclient import TestClient

    from evotok.service.app import create_app

    rt = GatedRuntime()
    app = create_app(make_settings(runtime_hang_s=0.5, request_timeout_s=20.0), runtime_factory=lambda: rt)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/healthz").status_code == 200
        rt.gate.clear()
        batcher = app.state.evotok.batcher
        image = np.zeros((rt.info.image_size, rt.info.image_size, 3), np.uint8)
        assert client.portal is not None  # the app's event loop (the batcher lives there)
        call = client.portal.start_task_soon(batcher.submit, "encode", image, time.monotonic() + 20)
        end = time.monotonic() + 10
        status = 200
        while time.monotonic() < end and status == 200:
            time.sleep(0.05)
            probe = client.get("/healthz")
            status = probe.status_code
        assert "runtime call" in probe.text
        rt.gate.set()
        codes = call.result(20)
        assert status == 503, "the runtime call hung and /healthz still said 200"
        assert client.get("/healthz").status_code == 200  # the call returned: alive again
        np.testing.assert_array_equal(codes, rt.encode(image[None])[0])
