"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served from files that ship with the package: no CDN, no
external font or favicon, so both work on an air-gapped cluster.

The assets are vendored from npm into ``service/static/vendor/`` (``swagger-ui/``: swagger-ui-dist, Apache-2.0,
unmodified; ``redoc/``: redoc's standalone bundle, MIT, with its one CDN logo URL replaced; each folder keeps its
LICENSE and a VERSION.txt that names the npm package, the version and any edit). ``create_app`` turns FastAPI's CDN-backed ``docs_url``/``redoc_url`` off
and includes this router instead; the pages are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``)
with local URLs.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from evotok.service.routes.web import STATIC_DIR

VENDOR_DIR = STATIC_DIR / "vendor"
ASSET_PREFIX = "/docs-assets"
TITLE = "EvoTok Serve"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# URL name -> (file under VENDOR_DIR, media type). A fixed list: no path from the URL reaches the filesystem.
ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css; charset=utf-8"),
    "favicon.png": ("swagger-ui/favicon-32x32.png", "image/png"),
    "redoc.standalone.js": ("redoc/redoc.standalone.js", "text/javascript; charset=utf-8"),
}

router = APIRouter(include_in_schema=False)


def asset_url(name: str) -> str:
    return f"{ASSET_PREFIX}/{name}"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - Swagger UI",
        swagger_js_url=asset_url("swagger-ui-bundle.js"),
        swagger_css_url=asset_url("swagger-ui.css"),
        swagger_favicon_url=asset_url("favicon.png"),
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - ReDoc",
        redoc_js_url=asset_url("redoc.standalone.js"),
        redoc_favicon_url=asset_url("favicon.png"),
        with_google_fonts=False,
    )


@router.get(ASSET_PREFIX + "/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(status_code=404)
    path, media_type = ASSETS[name]
    return FileResponse(VENDOR_DIR / path, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})
