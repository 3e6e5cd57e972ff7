"""OpenAPI request examples that are valid for the model being served.

The ``/decode`` and ``/embed`` JSON examples must be full ``(grid, grid, depth)`` code grids with values below
the codebook size of the running model (a static example cannot be: grids and codebooks differ between
models, and the old static one used code 4005 > K = 1024). ``install_model_examples(app, state)`` wraps
``app.openapi`` so the cached schema gets them as soon as the model card is known.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from evotok.export.types import ModelInfo
from evotok.service.state import ServiceState

EXAMPLE_PATHS = ("/decode", "/embed")


def example_codes(info: ModelInfo, depth: int = 2) -> list[list[list[int]]]:
    """A deterministic ``(grid, grid, depth)`` grid of valid codes (``0 <= v < K``) for ``info``."""
    g, k, d = info.grid, info.codebook_size, max(1, min(depth, info.num_depths))
    return [[[(17 * i + 5 * j + 101 * q) % k for q in range(d)] for j in range(g)] for i in range(g)]


def apply_model_examples(schema: dict[str, Any], info: ModelInfo) -> None:
    example = {"codes": example_codes(info)}
    for path in EXAMPLE_PATHS:
        body = schema.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
        json_body = body.get("content", {}).get("application/json")
        if json_body is not None:
            json_body["example"] = example


def install_model_examples(app: FastAPI, state: ServiceState) -> None:
    original = app.openapi
    done = {"weights": ""}

    def openapi() -> dict[str, Any]:
        schema = original()
        info = state.info
        if info is not None and done["weights"] != info.weights_hash:
            apply_model_examples(schema, info)
            done["weights"] = info.weights_hash
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
