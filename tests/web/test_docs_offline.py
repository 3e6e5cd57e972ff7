"""``/docs`` (Swagger UI) and ``/redoc`` render in headless Chromium with every request that leaves the
server refused: their scripts, styles and favicon ship with the package (service/static/vendor), and the
HTML names no external URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.client.server import Server, running_server

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

OPERATIONS = ("/encode", "/decode", "/embed", "/info")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("uvicorn-docs")) as s:
        yield s


def offline_page(browser: Any, server: Server) -> tuple[Any, list[str], list[str]]:
    """A page whose requests to anything but the test server are aborted (and recorded)."""
    host = urlparse(server.url).netloc
    blocked: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if urlparse(r.request.url).netloc == host or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort("internetdisconnected")

    context = browser.new_context()
    context.route("**/*", route)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
    return page, blocked, errors


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_html_names_no_external_url(server: Server, path: str) -> None:
    html = httpx.get(server.url + path).text
    assert re.findall(r"(?:https?:)?//[a-z0-9.-]+", html, flags=re.I) == [], html
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith("/"), src
        assert httpx.get(server.url + src).status_code == 200, src


def test_swagger_ui_renders_offline(server: Server, browser: Any) -> None:
    page, blocked, errors = offline_page(browser, server)
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    paths = [el.get_attribute("data-path") for el in page.query_selector_all(".opblock-summary-path")]
    assert set(OPERATIONS) <= set(paths), paths
    assert "EvoTok Serve" in page.inner_text(".info .title")
    assert blocked == [] and errors == [], (blocked, errors)
    page.context.close()


def test_redoc_renders_offline(server: Server, browser: Any) -> None:
    page, blocked, errors = offline_page(browser, server)
    page.goto(server.url + "/redoc")
    page.wait_for_function("document.body.innerText.includes('/encode')", timeout=60_000)
    text = page.inner_text("body")
    for op in OPERATIONS:
        assert op in text, op
    assert "EvoTok Serve" in text
    assert blocked == [] and errors == [], (blocked, errors)
    page.context.close()
