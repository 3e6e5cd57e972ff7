"""The inference routes' query parameters: one pydantic model per route, parsed in the route's body.

The routes take only the ``Request`` (so ``fast_lane.FastLane`` can call them without FastAPI's dependency
machinery, and FastAPI's own dispatch calls the very same function): ``query_of(Model, request)`` validates
``request.query_params`` against the model (a bad value -> ``RequestValidationError`` with ``loc``
``("query", name)``, answered 422 ``invalid_input`` by the app's one handler, as FastAPI's own validation would),
and ``openapi_parameters(Model)`` documents the same fields (plus ``X-Request-Timeout-Ms``) in the OpenAPI
operation, so the docs and the parser cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

Q = TypeVar("Q", bound=BaseModel)

BACKGROUND_DOC = ("colour that transparent pixels are flattened onto: a name (white, black) or #rrggbb; "
                  "default EVOTOK_BACKGROUND (white)")
ResizeOption = Literal["center-crop", "stretch", "none"]


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EncodeQuery(_Query):
    depth: int | None = Field(None, ge=1, description="return only the first `depth` codes per position (1..D)")
    resize: ResizeOption = Field("center-crop", description="how to fit the image to the model input")
    background: str | None = Field(None, description=BACKGROUND_DOC)


class EmbedQuery(_Query):
    dtype: Literal["float32", "float16"] = Field("float32", description="feature dtype")
    resize: ResizeOption = Field("center-crop", description="image fitting (images only)")
    background: str | None = Field(None, description=BACKGROUND_DOC)


class NoQuery(_Query):
    pass


_DEFAULTS: dict[type[BaseModel], BaseModel] = {}


def _default(model: type[Q]) -> Q:
    """``model()``, one shared instance per model (they are frozen)."""
    found = _DEFAULTS.get(model)
    if found is None:
        found = _DEFAULTS[model] = model()
    return cast(Q, found)


def query_of(model: type[Q], request: Request) -> Q:
    """``request``'s query string as ``model`` (the last value of a repeated name; unknown names ignored)."""
    params = request.query_params
    if not params:
        return _default(model)
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


TIMEOUT_PARAMETER: dict[str, Any] = {
    "name": "x-request-timeout-ms", "in": "header", "required": False,
    "schema": {"anyOf": [{"type": "number"}, {"type": "null"}], "title": "X-Request-Timeout-Ms"},
    "description": "optional client deadline in ms; shortens (never extends) EVOTOK_REQUEST_TIMEOUT_S",
}


def openapi_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects for ``model``'s fields (query) and the deadline header."""
    schema = model.model_json_schema()
    props: dict[str, Any] = schema.get("properties", {})
    out = []
    for name, prop in props.items():
        description = prop.pop("description", None)
        out.append({"name": name, "in": "query", "required": False, "schema": prop,
                    **({"description": description} if description else {})})
    return [*out, TIMEOUT_PARAMETER]
