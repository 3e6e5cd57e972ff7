"""Auth and deadlines on the v2 endpoints: a server with an API key over a FakeRuntime that is slow on codes
holding 7 (``slow_app.py``), so a request is admitted and its deadline expires while it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.oip.conftest import FAKE_ENV, OipServer, start_oip

pytestmark = [pytest.mark.e2e]
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
G = 4
SLOW = 7  # slow_app.SLOW_CODE


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    env = {**FAKE_ENV, "EVOTOK_API_KEYS": f'["{KEY}"]', "EVOTOK_TEST_SLOW_S": "1.0"}
    srv = start_oip(["uvicorn", "--factory", "tests.oip.slow_app:build"], env,
                    tmp_path_factory.mktemp("oip-slow") / "server.log")
    yield srv
    srv.server.stop()


def _codes(mod: type, value: int = 0) -> object:
    inp = mod.InferInput("CODES", [1, G, G, 2], "UINT16")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(np.full((1, G, G, 2), value, np.uint16))
    return inp


def test_api_key_http_and_grpc(slow_server: OipServer) -> None:
    with th.InferenceServerClient(slow_server.http_target) as h:
        assert h.is_server_ready()  # probes stay open
        with pytest.raises(InferenceServerException) as exc:
            h.infer("decode", [_codes(th)])
        assert exc.value.status() == "401" and "bearer" in exc.value.message().lower()
        with pytest.raises(InferenceServerException) as exc:
            h.infer("decode", [_codes(th)], headers={"Authorization": "Bearer wrong"})
        assert exc.value.status() == "403"
        assert h.infer("decode", [_codes(th)], headers=AUTH).as_numpy("PIXELS").shape[0] == 1
    r = httpx.get(f"{slow_server.url}/v2/models/encode")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and set(r.json()) == {"error"}
    with tg.InferenceServerClient(slow_server.grpc_target) as g:
        assert g.is_server_live() and g.is_model_ready("decode")
        with pytest.raises(InferenceServerException) as exc:
            g.infer("decode", [_codes(tg)])
        assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as exc:
            g.get_model_metadata("decode", headers={"authorization": "Bearer wrong"})
        assert exc.value.status() == "StatusCode.PERMISSION_DENIED"
        assert g.infer("decode", [_codes(tg)], headers={"authorization": f"Bearer {KEY}"}).as_numpy("PNG").shape == (1,)


def _pixels(mod: type, value: int) -> object:
    inp = mod.InferInput("PIXELS", [1, 64, 64, 3], "UINT8")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(np.full((1, 64, 64, 3), value, np.uint8))
    return inp


def test_expiring_deadline_gives_the_protocols_timeout_error(slow_server: OipServer) -> None:
    """Each case a different op (a slow batch teaches that op's admission estimate; see slow_app.py)."""
    with th.InferenceServerClient(slow_server.http_target) as h:
        for model, kwargs in (("decode", {"headers": {**AUTH, "X-Request-Timeout-Ms": "300"}}),
                              ("embed", {"headers": AUTH, "timeout": 300_000})):  # Triton's timeout, microseconds
            start = time.monotonic()
            with pytest.raises(InferenceServerException) as exc:
                h.infer(model, [_codes(th, SLOW)], **kwargs)  # type: ignore[arg-type]
            assert exc.value.status() == "504", exc.value
            assert time.monotonic() - start < 0.9  # answered at the deadline, not after the slow batch
    meta = {"authorization": f"Bearer {KEY}"}
    with tg.InferenceServerClient(slow_server.grpc_target) as g:
        with pytest.raises(InferenceServerException) as exc:
            # the gRPC deadline; the client's own timer also ends the call, so this shows the status a gRPC
            # client sees, not that the server read the deadline (the `timeout` case below shows that)
            g.infer("encode", [_pixels(tg, SLOW)], headers=meta, client_timeout=0.3)
        assert exc.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        with pytest.raises(InferenceServerException) as exc:  # Triton's timeout parameter: the server's answer
            g.infer("embed", [_pixels(tg, SLOW)], headers=meta, timeout=300_000, client_timeout=5.0)
        assert exc.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert g.infer("decode", [_codes(tg)], headers=meta, client_timeout=10).as_numpy("PNG").shape == (1,)
