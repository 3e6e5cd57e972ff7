"""Direct dispatch of the hot inference routes (``POST /encode``, ``/decode``, ``/embed``), past FastAPI's router.

A route function marked ``@direct`` takes only the ``Request`` and does its own checks first (``route_checks``:
the API key; ``routes.query.query_of``: its query parameters), so it needs nothing from FastAPI's dependency
machinery.
``FastLane`` (pure ASGI, the innermost middleware of ``create_app``: request id, metrics, body limits and CORS
all still wrap it) looks the request's method and path up in a table built from the ``APIRoute``s it is given
(the routers ``create_app`` includes without a prefix) and calls that same function, answering its exceptions
with the app's own exception handlers (``handlers.py``, the one error table). Everything else (other paths, other methods: 405 on ``GET /encode``) goes on to FastAPI.
The OpenAPI document still comes from the ``APIRoute``: the function is declared once, dispatched by whichever
layer reaches it first.

Why: profiled under load (py-spy, 256 px JPEG bodies, a fake model), FastAPI's routing layers and dependency
solving took about a third of the event loop's time per request; the route's own work took less.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from evotok.service.auth import check_bearer
from evotok.service.state import get_state

Endpoint = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)
Handler = Callable[[Request, Exception], Awaitable[Response]]


def direct(fn: E) -> E:
    """Mark a route function that takes only the ``Request`` as callable by ``FastLane``."""
    fn.evotok_direct = True  # type: ignore[attr-defined]
    return fn


def route_checks(request: Request) -> None:
    """What the inference routes check before anything else: the API key (``auth.check_bearer``)."""
    check_bearer(request.headers.get("authorization", ""), get_state(request).settings.api_keys)


class FastLane:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.table: dict[tuple[str, str], Endpoint] = {
            (method, route.path): route.endpoint for route in routes
            if isinstance(route, APIRoute) and getattr(route.endpoint, "evotok_direct", False)
            for method in route.methods or ()}  # (method, path) -> the ``@direct`` route function

    def handler_for(self, exc: Exception) -> Handler:
        """The app's exception handler for ``exc`` (nearest class in its MRO), as Starlette would pick it."""
        handlers: dict[Any, Any] = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                handler: Handler = handlers[cls]  # ours are all async (handlers.install_handlers)
                return handler
        raise exc  # no handler, not even for Exception: let the server's error middleware answer 500

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        endpoint = self.table.get((scope["method"], path))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            try:
                response = await endpoint(request)
            except Exception as exc:  # answered by the app's own handler, as FastAPI would
                response = await self.handler_for(exc)(request, exc)
            await response(scope, receive, send)
        finally:
            await request.close()  # multipart uploads' spooled files
