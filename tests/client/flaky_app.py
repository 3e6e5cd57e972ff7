"""A tiny ASGI app that answers like an overloaded EvoTok server, for the client's retry tests.

``/encode``: the first ``FLAKY_FAILURES`` calls answer ``FLAKY_STATUS`` (429 or 503) with the service's JSON
error body and ``Retry-After: FLAKY_RETRY_AFTER`` (seconds, or ``date`` for an HTTP date that far ahead);
later calls answer a valid one-image result. ``/count`` reports the calls seen, ``/reset`` zeroes them.
"""

from __future__ import annotations

import os
import time
from email.utils import formatdate
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

CODES = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]  # (2, 2, 2)


def app_factory() -> FastAPI:
    app = FastAPI()
    failures = int(os.environ.get("FLAKY_FAILURES", "2"))
    status = int(os.environ.get("FLAKY_STATUS", "503"))
    retry_after = os.environ.get("FLAKY_RETRY_AFTER", "1")
    seen: dict[str, Any] = {"calls": 0, "times": []}

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/count")
    async def count() -> dict[str, Any]:
        return seen

    @app.post("/reset")
    async def reset() -> dict[str, bool]:
        seen["calls"], seen["times"] = 0, []
        return {"ok": True}

    @app.post("/encode")
    async def encode(request: Request) -> JSONResponse:
        await request.body()
        seen["calls"] += 1
        seen["times"].append(time.time())
        if seen["calls"] <= failures:
            code = "queue_full" if status == 429 else "not_ready"
            headers = {}
            if retry_after == "date":
                headers["Retry-After"] = formatdate(time.time() + 2, usegmt=True)
            elif retry_after != "none":
                headers["Retry-After"] = retry_after
            return JSONResponse(
                {"error": {"code": code, "message": "try again later", "status": status}},
                status_code=status,
                headers=headers,
            )
        return JSONResponse(
            {"codes": CODES, "shape": [2, 2, 2], "depth": 2, "model": {"name": "flaky", "weights_hash": "ab"}}
        )

    @app.post("/decode")
    async def decode() -> JSONResponse:
        seen["calls"] += 1
        seen["times"].append(time.time())
        return JSONResponse(
            {"error": {"code": "invalid_codes", "message": "bad codes", "status": 422}}, status_code=422
        )

    return app
