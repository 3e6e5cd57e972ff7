"""The web page at ``/``: static HTML/JS/CSS from ``service/static`` (no build step), public API only.

``router`` serves ``GET /`` (index.html) and ``GET /web/{app.js,app.css,sample.jpg}``; app.py includes it. The page
itself calls ``GET /info``, ``POST /encode`` and ``POST /decode`` like any other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "sample.jpg": "image/jpeg",  # the "try the sample" photo: scikit-image's coffee cup (CC0, Rachel Michetti)
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    if name not in _ASSETS:  # a fixed list: no path from the URL ever reaches the filesystem
        raise HTTPException(status_code=404)
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})
