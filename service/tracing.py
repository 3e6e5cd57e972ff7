"""OpenTelemetry tracing, on only when an OTLP endpoint is configured; otherwise free.

- ``endpoint(settings)``: ``EVOTOK_OTLP_ENDPOINT``, else the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
  ``""`` (tracing off). The value is the collector's OTLP/HTTP base URL (``http://otel-collector:4318``);
  spans go to ``<base>/v1/traces``.
- ``install(app, settings, exporter=None)``: when on (or when a test passes an ``exporter``, e.g. the SDK's
  ``InMemorySpanExporter``), instrument the FastAPI app with ``opentelemetry-instrumentation-fastapi`` (one
  server span per request; ``/healthz``, ``/readyz`` and ``/metrics`` are not traced) and make ``span`` live.
  When off nothing is imported: the ``opentelemetry`` packages (extra ``otel``) are only needed with tracing.
- ``span(name, **attributes)``: a child span of the current one (``queue_wait``, ``inference``, ...), a
  no-op context manager while tracing is off; ``record(name, start_ns, end_ns, **attributes)`` the same for
  work timed elsewhere (the runtime thread, a Redis worker), with ``time.time_ns()`` times. The X-Request-ID of the request is set on the request span as
  ``evotok.request_id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from evotok.service.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "evotok-serve"
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None


def endpoint(settings: Settings) -> str:
    return settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def enabled() -> bool:
    return _tracer is not None


def traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """``with span("inference", batch=8):`` a child span of the current span; nothing while tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes or None) as s:
        yield s


def record(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished child span of the current span with given wall-clock times (``time.time_ns()``): for work
    that ran outside the request's task, e.g. the batch's runtime call on the runtime thread or in a worker,
    recorded by the request once its answer arrives. Nothing while tracing is off."""
    tracer = _tracer
    if tracer is None:
        return
    s = tracer.start_span(name, start_time=start_ns, attributes=attributes or None)
    s.end(end_time=max(start_ns, end_ns))


def install(app: Any, settings: Settings, exporter: Any = None) -> bool:
    """Trace ``app`` when an endpoint is configured or ``exporter`` is given; returns whether tracing is on."""
    global _tracer, _provider
    url = endpoint(settings)
    if not url and exporter is None:
        return False
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(f"tracing is configured (OTLP endpoint {url!r}) but OpenTelemetry is not installed: "
                           "pip install 'evotok-serve[otel]'") from exc
    from evotok import __version__

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME),
                                "service.version": __version__})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(url))))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    _provider = provider
    _tracer = provider.get_tracer("evotok.service")
    log.info("tracing on: OTLP/HTTP %s", traces_url(url) if url else "(test exporter)")
    return True


def set_request_id(rid: str) -> None:
    """Put the request's X-Request-ID on the current (request) span; nothing while tracing is off."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute("evotok.request_id", rid)


def shutdown() -> None:
    """Flush and stop the span exporter (app shutdown; tests)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None
