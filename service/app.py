"""The FastAPI application factory: ``create_app(settings, runtime_factory, batcher)``.

- ``EVOTOK_QUEUE=inprocess`` (default): an ``InProcessBatcher`` owns the Runtime; the lifespan starts a
  background task that loads the Runtime (``runtime_factory``, default ``load_runtime(settings...)``),
  warms it and runs the golden self-test on the runtime thread; ``/readyz`` turns 200 when that passes.
- ``EVOTOK_QUEUE=redis``: no Runtime in this process; ``RedisBatcher`` (service/redis_queue.py) talks to
  ``evotok worker`` processes and the model card comes from ``<weights>/config.json``.

Tests inject a FakeRuntime through ``runtime_factory`` or a ready-made ``batcher``. Shutdown drains: new work
gets 503, admitted work finishes (up to ``request_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from evotok import __version__
from evotok.export.runtime import Runtime
from evotok.service import metrics
from evotok.service.batcher import Batcher, BatchPolicy
from evotok.service.handlers import install_handlers
from evotok.service.inprocess import InProcessBatcher
from evotok.service.middleware import BodyLimitMiddleware, MetricsMiddleware
from evotok.service.openapi_examples import install_model_examples
from evotok.service.routes import decode, embed, encode, health, info, web
from evotok.service.schemas import ErrorResponse
from evotok.service.settings import Settings, get_settings
from evotok.service.startup import start_inprocess
from evotok.service.state import ServiceState

log = logging.getLogger(__name__)

DESCRIPTION = """EvoTok unified image tokenizer: image -> residual codes (`/encode`), codes -> PNG (`/decode`),
semantic features (`/embed`). Every error has the JSON shape `{"error": {"code", "message", "status"}}`;
429 (`queue_full`) and 503 (`not_ready`) carry `Retry-After`."""


def default_runtime_factory(settings: Settings) -> Callable[[], Runtime]:
    def factory() -> Runtime:
        from evotok.export.runtime import load_runtime

        options: dict[str, Any] = {}
        if settings.backend == "onnxruntime":
            options["providers"] = ("cuda", "cpu") if settings.device == "cuda" else ("cpu",)
            options["cache_dir"] = settings.cache_dir
            if settings.threads:
                options["threads"] = settings.threads
        elif settings.backend == "torch":
            options["device"] = settings.device
            options["precision"] = settings.precision
        else:
            options["engine_dir"] = settings.cache_dir
        return load_runtime(settings.weights, settings.backend, **options)

    return factory


def _make_batcher(settings: Settings) -> Batcher:
    if settings.queue == "redis":
        from evotok.service.model_info import load_model_info
        from evotok.service.redis_queue import RedisBatcher  # type: ignore[import-not-found,unused-ignore]

        model = load_model_info(settings.weights, backend=settings.backend, precision=settings.precision)
        batcher: Batcher = RedisBatcher(settings, model)
        return batcher
    policy = BatchPolicy(settings.max_batch_size, settings.max_queue_delay_ms / 1000.0)
    return InProcessBatcher(policy, settings.max_queue_size)


def create_app(
    settings: Settings | None = None,
    runtime_factory: Callable[[], Runtime] | None = None,
    batcher: Batcher | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    the_batcher = batcher or _make_batcher(settings)
    state = ServiceState(settings=settings, batcher=the_batcher)
    factory = runtime_factory or default_runtime_factory(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_batcher.start()
        loader: asyncio.Task[None] | None = None
        if isinstance(the_batcher, InProcessBatcher):
            loader = asyncio.create_task(start_inprocess(state, the_batcher, factory), name="evotok-startup")
        else:
            from evotok.service.model_info import load_model_info

            state.info = load_model_info(settings.weights, backend=settings.backend, precision=settings.precision)
            state.phase = "ready"
            metrics.BUILD_INFO.labels(__version__, state.info.weights_hash[:12], settings.backend,
                                      settings.precision, "").set(1)
        try:
            yield
        finally:
            state.phase = "draining"
            metrics.READY.set(0)
            if loader is not None and not loader.done():
                loader.cancel()
            await the_batcher.drain(timeout_s=settings.request_timeout_s)
            metrics.mark_process_dead()

    app = FastAPI(
        title="EvoTok Serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.evotok = state
    install_handlers(app)
    for module in (encode, decode, embed, info, health, web):  # web: the page at / (service/static)
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, str]:
        return {"service": "evotok", "docs": "/docs", "info": "/info", "ready": "/readyz", "metrics": "/metrics"}

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    _register_error_schema(app)
    install_model_examples(app, state)  # /decode, /embed examples valid for the served model (issue 12)
    return app


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
