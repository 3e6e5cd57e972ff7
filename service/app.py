"""The FastAPI application factory: ``create_app(settings, runtime_factory, batcher)``.

- ``EVOTOK_QUEUE=inprocess`` (default): an ``InProcessBatcher`` owns the Runtime; the lifespan starts its
  ``prepare`` as a background task: load the Runtime (``runtime_factory``, default
  ``runtime_setup.build_runtime(settings)``, the same builder the workers use), warm it, run the golden
  self-test and measure the batch caps on the runtime thread; ``/readyz`` turns 200 when that passes.
- ``EVOTOK_QUEUE=redis``: no Runtime in this process; ``RedisBatcher`` (service/redis_queue.py) talks to
  ``evotok worker`` processes and the model card comes from ``<weights>/config.json``.

Tests inject a FakeRuntime through ``runtime_factory`` or a ready-made ``batcher``. Shutdown drains: new work
gets 503, admitted work finishes (up to ``request_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from evotok import __version__
from evotok.export.runtime import Runtime
from evotok.service import metrics, tracing
from evotok.service.batcher import Batcher
from evotok.service.fast_lane import FastLane
from evotok.service.handlers import install_handlers
from evotok.service.inprocess import InProcessBatcher
from evotok.service.middleware import BodyLimitMiddleware, MetricsMiddleware
from evotok.service.oip import grpc_server as oip_grpc
from evotok.service.oip import http as oip_http
from evotok.service.openapi_examples import install_model_examples
from evotok.service.request_context import RequestIdMiddleware
from evotok.service.routes import decode, docs_ui, embed, encode, health, info, web
from evotok.service.runtime_setup import base_policy
from evotok.service.schemas import ErrorResponse
from evotok.service.settings import Settings, get_settings
from evotok.service.state import ServiceState

log = logging.getLogger(__name__)

DESCRIPTION = """EvoTok unified image tokenizer: image -> residual codes (`/encode`), codes -> PNG (`/decode`),
semantic features (`/embed`). Every error has the JSON shape `{"error": {"code", "message", "status"}}`;
429 (`queue_full`) and 503 (`not_ready`) carry `Retry-After`."""


def default_runtime_factory(settings: Settings) -> Callable[[], Runtime]:
    """``runtime_setup.build_runtime(settings)``, deferred (it runs on the runtime thread)."""

    def factory() -> Runtime:
        from evotok.service.runtime_setup import build_runtime

        return build_runtime(settings)

    return factory


def _make_batcher(settings: Settings, factory: Callable[[], Runtime]) -> Batcher:
    if settings.queue == "redis":
        from evotok.service.model_info import load_model_info
        from evotok.service.redis_queue import RedisBatcher  # type: ignore[import-not-found,unused-ignore]

        model = load_model_info(settings.weights, backend=settings.backend, precision=settings.precision)
        batcher: Batcher = RedisBatcher(settings, model)
        return batcher
    return InProcessBatcher(base_policy(settings), settings.max_queue_size, runtime_factory=factory,
                            hang_s=settings.runtime_hang_s)


def create_app(
    settings: Settings | None = None,
    runtime_factory: Callable[[], Runtime] | None = None,
    batcher: Batcher | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    factory = runtime_factory or default_runtime_factory(settings)
    the_batcher = batcher or _make_batcher(settings, factory)
    state = ServiceState(settings=settings, batcher=the_batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_batcher.start()
        loader = asyncio.create_task(the_batcher.prepare(state), name="evotok-startup")
        grpc_server = await oip_grpc.start(app)  # Open Inference Protocol gRPC (EVOTOK_GRPC_PORT; 0 = off)
        try:
            yield
        finally:
            state.phase = "draining"
            metrics.READY.set(0)
            await oip_grpc.stop(grpc_server, grace_s=settings.request_timeout_s)
            if not loader.done():
                loader.cancel()
            await the_batcher.drain(timeout_s=settings.request_timeout_s)
            metrics.mark_process_dead()

    app = FastAPI(
        title="EvoTok Serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from routes/docs_ui.py with the assets shipped (offline)
        redoc_url=None,
        **_native_telemetry_off(),
    )
    app.state.evotok = state
    install_handlers(app)
    for module in (encode, decode, embed, info, health, web, docs_ui):  # web: the page at / (service/static)
        app.include_router(module.router)
    app.include_router(oip_http.router)  # Open Inference Protocol (KServe v2) HTTP: /v2/...

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, str]:
        return {"service": "evotok", "docs": "/docs", "info": "/info", "ready": "/readyz", "metrics": "/metrics"}

    direct_routes = [route for module in (encode, decode, embed) for route in module.router.routes]
    app.add_middleware(FastLane, fastapi_app=app, routes=direct_routes)  # innermost: past FastAPI's router
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origins:  # EVOTOK_CORS_ORIGINS; empty = no CORS headers, preflights get 405
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer echoes X-Request-ID
    tracing.install(app, settings)  # OpenTelemetry when an OTLP endpoint is set (service/tracing.py)
    _register_error_schema(app)
    install_model_examples(app, state)  # /decode, /embed examples valid for the served model
    return app


def _native_telemetry_off() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry support (newer FastAPI) off: ``tracing.install`` instruments the app with its
    own tracer provider when tracing is configured, and FastAPI's check for a global provider cost about 1.5 %
    of a front end's CPU per request (profiled). Older FastAPI has no such option."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _register_error_schema(app: FastAPI) -> None:
    """Add ``ErrorResponse`` to ``components.schemas`` (the routes' error responses reference it)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
        components["ErrorResponse"] = {
            k: v for k, v in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").items()
            if k != "$defs"
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
