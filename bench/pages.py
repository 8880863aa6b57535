"""Rapport's pages, first load (issue 23): the requests each page makes and the bytes it
transfers, cold.

Starts ``rapport serve`` (fresh temp data dir, free loopback port, one uvicorn process,
RAPPORT_LOG_LEVEL=warning, the sign-in throttles raised: one sign-in a page), creates a
dashboard owner of the demo account with ``rapport users create`` and sets its password
through ``POST /api/auth/set-password``. Then each page is
loaded in Debian's headless chromium (Playwright, ``executable_path``: nothing downloaded) in
a new browser context, so with an empty cache: the playground ``/``, the dashboard's sign-in
form (``/dashboard`` signed out), ``/dashboard/set-password``, and, signed in,
``/dashboard#keys``, ``#knowledge``, ``#personas``, ``#live``, ``#usage``, ``#settings`` and
``#audit`` (the context signs in first through ``POST /api/auth/login`` from a blank page
Playwright answers itself, so neither the sign-in nor a cached file counts).

Counted: every request the page starts until none has started for ``QUIET_S`` after its load
event (the API calls it makes included), and each finished one's response bytes, headers and
body, as the browser measured them (``Request.sizes()``). A fetch whose body the page never
reads stays open in Chromium (so Playwright's "networkidle" never comes): it is counted as a
request and shown as "open", its bytes not. The ratio compares each page's bytes with the
playground's. Sizes are counts, not timings: one load each. A page that is not served shows
its status. Loopback only; every load is bounded by a timeout; the server is stopped by its
pid whatever happens.

    .venv/bin/python -m bench.pages
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Request, async_playwright

from bench.harness import run_bench, spawn_ready_rapport
from bench.http_overhead import Server, machine, package_versions
from bench.live_sessions import HIGH_RPM
from bench.login_burst import LOGIN_THROTTLES, PASSWORD, make_users

SIGNED_OUT = ("/", "/dashboard", "/dashboard/set-password")
SIGNED_IN = tuple(
    f"/dashboard#{view}"
    for view in ("keys", "knowledge", "personas", "live", "usage", "settings", "audit")
)
LOAD_TIMEOUT_MS = 30_000
QUIET_S = 1.0


@dataclass
class Load:
    path: str
    status: int | None
    requests: int
    still_open: int
    header_bytes: int
    body_bytes: int

    @property
    def total(self) -> int:
        return self.header_bytes + self.body_bytes


async def sign_in(context: BrowserContext, base: str, email: str) -> None:
    """Sign the context in as the sign-in form does, from a blank page of the origin that
    Playwright answers itself: nothing of Rapport's is loaded or cached before the count."""
    blank = f"{base}/bench-blank"
    await context.route(blank, lambda route: route.fulfill(body="<!doctype html><title>-</title>"))
    page = await context.new_page()
    await page.goto(blank)
    status = await page.evaluate(
        """async ([email, password]) => (await fetch('/api/auth/login', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({email, password})})).status""",
        [email, PASSWORD],
    )
    if status != 200:
        raise RuntimeError(f"sign-in answered {status}")
    await page.close()
    await context.unroute(blank)


async def load(browser: Browser, base: str, path: str, email: str | None) -> Load:
    context = await browser.new_context()
    try:
        if email is not None:
            await sign_in(context, base, email)
        page = await context.new_page()
        started: list[Request] = []
        finished: list[Request] = []
        page.on("request", lambda request: started.append(request))
        # A lambda: Playwright tags the handler it is given, which a bound builtin refuses.
        page.on("requestfinished", lambda request: finished.append(request))
        response = await page.goto(f"{base}{path}", wait_until="load", timeout=LOAD_TIMEOUT_MS)
        seen = -1
        while seen != len(started):  # bounded: a page that polls would stop the quiet window
            seen = len(started)
            await asyncio.sleep(QUIET_S)
            if len(started) > 50:
                raise RuntimeError(f"{path}: over 50 requests; does it poll?")
        sizes = await asyncio.gather(*(request.sizes() for request in finished))
    finally:
        await context.close()
    return Load(
        path=path,
        status=response.status if response is not None else None,
        requests=len(started),
        still_open=len(started) - len(finished),
        header_bytes=sum(s["responseHeadersSize"] for s in sizes),
        body_bytes=sum(s["responseBodySize"] for s in sizes),
    )


async def load_all(base: str, email: str) -> list[Load]:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            loads = [await load(browser, base, path, None) for path in SIGNED_OUT]
            loads += [await load(browser, base, path, email) for path in SIGNED_IN]
        finally:
            await browser.close()
    return loads


def report(loads: list[Load]) -> None:
    print()
    for line in machine():
        print(line)
    print(package_versions("playwright"))
    print(f"command: .venv/bin/python -m bench.pages {' '.join(sys.argv[1:])}".rstrip())
    playground = loads[0].total
    print(
        f"{'page':<24} {'status':>6} {'requests':>8} {'open':>4} {'bytes':>9} {'bodies':>9} "
        f"{'vs /':>6}"
    )
    for done in loads:
        print(
            f"{done.path:<24} {done.status!s:>6} {done.requests:>8} {done.still_open:>4} "
            f"{done.total:>9,} "
            f"{done.body_bytes:>9,} {done.total / playground:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)

    def body(workdir: Path, servers: list[Server]) -> None:
        data_dir = workdir / "data"
        # One sign-in per page is more than the throttle allows one email a minute.
        unthrottled = {name: str(HIGH_RPM) for name in LOGIN_THROTTLES}
        _, base, _ = spawn_ready_rapport(data_dir, workdir / "rapport.log", servers, unthrottled)
        [email] = make_users(data_dir, base, 1)
        report(asyncio.run(load_all(base, email)))

    return run_bench(body, prefix="rapport-pages-")


if __name__ == "__main__":
    sys.exit(main())
