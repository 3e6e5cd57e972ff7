"""``FastLane``: the inference routes dispatched past FastAPI's router, with the same function, checks, errors
and OpenAPI document as FastAPI's own dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from evotok.service.fast_lane import FastLane
from evotok.service.routes import decode, embed, encode
from evotok.service.routes.query import EmbedQuery, EncodeQuery
from tests.service.conftest import png_bytes

PNG = {"content": png_bytes(), "headers": {"content-type": "image/png"}}


def _lane(client: TestClient) -> FastLane:
    app: Any = client.app
    (mw,) = [m for m in app.user_middleware if m.cls is FastLane]
    return FastLane(app, app, mw.kwargs["routes"])


def test_the_table_holds_the_three_inference_routes_and_their_functions(client: TestClient) -> None:
    table = _lane(client).table
    assert table == {("POST", "/encode"): encode.encode, ("POST", "/decode"): decode.decode,
                     ("POST", "/embed"): embed.embed}


def test_requests_take_the_lane_not_the_router(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call counter on FastAPI's route handler: /encode never reaches it, /info does."""
    calls: list[str] = []
    original = APIRoute.handle

    async def counting(self: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        calls.append(self.path)
        await original(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", counting)
    assert client.post("/encode", **PNG).status_code == 200
    assert client.get("/info").status_code == 200
    assert calls == ["/info"]


@pytest.mark.parametrize(("query", "field"), [("depth=0", "depth"), ("depth=x", "depth"), ("resize=fill", "resize")])
def test_bad_query_is_a_422_naming_the_parameter(client: TestClient, query: str, field: str) -> None:
    r = client.post(f"/encode?{query}", **PNG)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and f"query.{field}" in err["message"]


def test_repeated_and_unknown_query_names(client: TestClient) -> None:
    """The last value of a repeated name wins (as FastAPI's scalar parameters); unknown names are ignored."""
    r = client.post("/encode?depth=9&depth=2&colour=red", **PNG)
    assert r.status_code == 200 and r.json()["depth"] == 2


def test_other_methods_fall_through_to_fastapi(client: TestClient) -> None:
    r = client.get("/encode")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_api_key_checked_on_the_lane(app_client: Callable[..., TestClient]) -> None:
    c = app_client(api_keys=["k1"])
    assert c.post("/encode", **PNG).status_code == 401
    assert c.post("/encode", content=PNG["content"], headers={**PNG["headers"], "authorization": "Bearer no"}
                  ).status_code == 403
    assert c.post("/encode", content=PNG["content"], headers={**PNG["headers"], "authorization": "Bearer k1"}
                  ).status_code == 200


def test_unexpected_error_is_the_apps_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_request: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(encode, "route_checks", boom)
    r = client.post("/encode", **PNG)
    assert r.status_code == 500
    body = r.json()["error"]
    assert body["code"] == "internal" and "boom" not in body["message"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_openapi_documents_the_parsed_parameters(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, model in (("/encode", EncodeQuery), ("/embed", EmbedQuery)):
        params = {p["name"]: p for p in paths[path]["post"]["parameters"]}
        assert {n for n, p in params.items() if p["in"] == "query"} == set(model.model_fields)
        assert params["x-request-timeout-ms"]["in"] == "header"
    assert params["dtype"]["schema"]["enum"] == ["float32", "float16"]
    assert [p["name"] for p in paths["/decode"]["post"]["parameters"]] == ["x-request-timeout-ms"]
