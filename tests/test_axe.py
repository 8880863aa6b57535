"""The accessibility check the browser tests run (tests/axe_core.py): the pinned axe-core,
injected into a page served under Rapport's strict CSP, in Debian's chromium.

Proven both ways: the playground at ``/`` has no serious or critical violation, and a page with
an image without alt text and an unlabeled field, served under the same CSP, has them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvicorn
from playwright.async_api import Browser
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests import axe_core
from tests.conftest import Server, free_port
from tests.test_browser import LOOPBACK

STRICT_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:"
INACCESSIBLE = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Bad form</title></head>"
    "<body><main><h1>Bad form</h1><img src='data:image/gif;base64,"
    "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7'>"
    "<input type='text'></main></body></html>"
)


@pytest.fixture(scope="module")
def inaccessible_site() -> Iterator[str]:
    """A page axe-core must fault, served with the CSP Rapport's pages send."""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(INACCESSIBLE, headers={"Content-Security-Policy": STRICT_CSP})

    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/", page)]), host=LOOPBACK, port=port, log_level="warning"
    )
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    for _ in range(500):
        if served.started:
            break
        threading.Event().wait(0.01)
    yield f"http://{LOOPBACK}:{port}/"
    served.should_exit = True
    thread.join(10)


def test_the_pinned_tarball_is_checked_against_its_sha512() -> None:
    axe_core.fetch()  # a no-op once `make test` has fetched it
    assert axe_core.SCRIPT.stat().st_size > 100_000
    with pytest.raises(RuntimeError, match="is not the pinned"):
        axe_core.verified(b"a tarball someone swapped")


async def test_the_playground_has_no_serious_violation(browser: Browser, server: Server) -> None:
    page = await browser.new_page()
    try:
        response = await page.goto(f"{server.base_url}/")
        assert response is not None and response.status == 200
        # The check must hold under the strict policy, not a relaxed one.
        assert "script-src 'self';" in response.headers["content-security-policy"]
        # After the load event, not "networkidle": the page's session check leaves a fetch
        # whose body it never reads open in Chromium, so the network never looks idle.
        assert await axe_core.serious_violations(page) == []
    finally:
        await page.close()


async def test_the_check_finds_what_it_looks_for(browser: Browser, inaccessible_site: str) -> None:
    page = await browser.new_page()
    try:
        await page.goto(inaccessible_site)
        found = {v["id"]: v for v in await axe_core.serious_violations(page)}
    finally:
        await page.close()
    assert found["image-alt"]["impact"] == "critical"
    assert found["image-alt"]["targets"] == [["img"]]
    assert found["label"]["targets"] == [["input"]]
    assert all(v["help"] for v in found.values())
