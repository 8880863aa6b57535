"""The playground and the embeddable widget in a real browser: Debian's headless Chromium,
driven by Playwright (``executable_path``: nothing is downloaded), against a real
``rapport serve`` and the fake LLM. A business page embedding the widget is served by a small
backend that mints sessions the way the README shows; a TCP proxy between the browser and
Rapport cuts connections the way a network does.

A missing browser fails these tests: ``make test`` installs Debian's ``chromium`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, Request, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect

from loadtest.fake_llm import DEFAULT_REPLY
from tests.conftest import FakeOpenAI, Server, chromium_path, free_port, llm_env, running_together
from tests.test_knowledge import activate, doc_path, wait_ready

AUDIO = Path(__file__).parent / "audio"
SCREENSHOT = Path(__file__).parent.parent / "docs" / "playground.png"
LOOPBACK = "127.0.0.1"
SLOTS = 4
WAIT_MS = 15_000
CHAT = "<rapport-chat session-endpoint='/rapport-session' {attributes}></rapport-chat>"


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployments(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI
) -> Iterator[tuple[Server, Server]]:
    """(``rapport``, ``crowded``), started at once."""
    both = (
        Server(
            tmp_path_factory.mktemp("browser") / "data",
            **llm_env(fake_llm, RAPPORT_MAX_SESSIONS=str(SLOTS), RAPPORT_WAITING_ROOM_SIZE="10"),
        ),
        Server(
            tmp_path_factory.mktemp("crowded") / "data",
            **llm_env(fake_llm, RAPPORT_MAX_SESSIONS="1", RAPPORT_WAITING_ROOM_SIZE="0"),
        ),
    )
    with running_together(*both):
        yield both


@pytest.fixture(scope="module")
def rapport(deployments: tuple[Server, Server]) -> Server:
    """Rapport with the fake LLM, a few slots, and short windows."""
    return deployments[0]


@pytest.fixture(scope="module")
def crowded(deployments: tuple[Server, Server]) -> Server:
    """Rapport with one slot and no waiting room: a second visitor finds no place."""
    return deployments[1]


class Proxy:
    """A TCP proxy to Rapport that can cut every connection through it at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.links: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.target))
            self.links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Every connection through the proxy dies without a close frame."""
        links, self.links = self.links, []
        for link in links:
            with contextlib.suppress(OSError):
                # Shut down first: a bare close would wait for the thread reading it.
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self.cut()


class Business:
    """A business's site: pages embedding the widget (``chat``, its markup, on every path)
    and the backend route that mints its sessions with the API key (which never reaches the
    browser), as the README shows."""

    def __init__(self, rapport_url: str, widget_url: str, api_key: str, chat: str = "") -> None:
        self.rapport_url = rapport_url
        self.api_key = api_key
        self.user_id = f"shopper-{uuid.uuid4().hex[:8]}"
        self.persona_id: str | None = None
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Shop</title><script src='{widget_url}'></script></head><body>"
            "<h1>Shop</h1>"
            f"{chat or CHAT.format(attributes='autostart')}</body></html>"
        )

        async def home(request: HttpRequest) -> Response:
            return HTMLResponse(page)

        async def rapport_session(request: HttpRequest) -> Response:
            body: dict[str, Any] = {"user_id": self.user_id, "mode": "chat"}
            body.update(await request.json())
            if self.persona_id is not None:
                body["persona_id"] = self.persona_id
            async with httpx.AsyncClient(base_url=self.rapport_url, timeout=10) as client:
                minted = await client.post(
                    "/api/sessions", headers={"X-Api-Key": self.api_key}, json=body
                )
            return JSONResponse(minted.json(), status_code=minted.status_code)

        app = Starlette(
            routes=[
                Route("/rapport-session", rapport_session, methods=["POST"]),
                Route("/{path:path}", home),
            ]
        )
        self.port = free_port()
        config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                break
            threading.Event().wait(0.01)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


# --- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={AUDIO / 'ada.wav'}%noloop",
            ],
        )
        yield launched
        await launched.close()


class Watched:
    """A page, and every request it made."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[Request] = []
        self.sockets: list[str] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))

    def chat(self, selector: str = "") -> Any:
        return self.page.locator(f"rapport-chat {selector}".strip())

    async def state(self, *states: str, wait_ms: int = WAIT_MS) -> None:
        pattern = "|".join(states)
        await self.page.wait_for_function(
            f"() => /^({pattern})$/.test(document.querySelector('rapport-chat')"
            "?.getAttribute('state') ?? '')",
            timeout=wait_ms,
        )

    async def say(self, text: str) -> None:
        await self.chat('[part="input"]').fill(text)
        await self.chat('[part="send"]').click()

    async def replies(self) -> list[str]:
        return await self.chat('[part="log"] .message.assistant .text').all_inner_texts()

    async def until(self, condition: str, wait_ms: int = WAIT_MS) -> None:
        """Wait until the JS ``condition`` holds; in it, ``root`` is the widget's shadow
        root and ``last(kind)`` its last ``user`` or ``assistant`` message."""
        await self.page.wait_for_function(
            "() => { const root = document.querySelector('rapport-chat')?.shadowRoot;"
            " if (!root) return false;"
            " const last = (kind) => [...root.querySelectorAll(`.message.${kind}`)].pop();"
            f" return {condition}; }}",
            timeout=wait_ms,
        )

    async def reply_done(self, nth: int = 1, wait_ms: int = WAIT_MS) -> dict[str, str]:
        """The ``nth`` reply of the conversation (1 is the first), once it is done."""
        await self.until(
            f"(m => m && !['', 'streaming'].includes(m.dataset.status ?? ''))"
            f"(root.querySelectorAll('.message.assistant')[{nth - 1}])",
            wait_ms,
        )
        reply = self.chat('[part="log"] .message.assistant').nth(nth - 1)
        return {
            "status": await reply.get_attribute("data-status") or "",
            "text": (await reply.locator(".text").inner_text()).strip(),
        }

    async def status(self) -> str:
        return (await self.chat('[part="status"]').inner_text()).strip()


@contextlib.asynccontextmanager
async def opened(browser: Browser, url: str, **options: Any) -> AsyncIterator[Watched]:
    context = await browser.new_context(**options)
    try:
        page = await context.new_page()
        watched = Watched(page)
        await page.goto(url)
        yield watched
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def business(
    rapport: Server, key: str, via: str | None = None, chat: str = ""
) -> AsyncIterator[Business]:
    """A business site whose backend calls Rapport at ``via`` (default: Rapport itself) and
    whose pages hold ``chat`` (default: the widget with ``autostart``)."""
    site = Business(via or rapport.base_url, f"{rapport.base_url}/widget.js", key, chat)
    try:
        yield site
    finally:
        site.close()
        await end_everything(rapport, key)


async def end_everything(rapport: Server, key: str) -> None:
    """End the account's sessions, so that the next test finds the deployment empty."""
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        for item in (await http.get("/api/sessions")).json()["items"]:
            await http.delete(f"/api/sessions/{item['session_id']}")


async def new_persona(rapport: Server, key: str, **publish: object) -> str:
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        made = await http.post(
            "/api/personas",
            json={"name": f"persona-{uuid.uuid4().hex[:8]}", "publishSettings": publish},
        )
        assert made.status_code == 201, made.text
        return made.json()["id"]


def only_local(requests: list[Request]) -> list[str]:
    """The URLs of requests that left 127.0.0.1 (none may)."""
    return [r.url for r in requests if not re.match(r"^(https?|wss?)://127\.0\.0\.1[:/]", r.url)]


# --- the playground --------------------------------------------------------------------------


async def start_playground(page: Watched, key: str, mode: str = "chat") -> None:
    await page.page.fill("#api-key", key)
    await page.page.click("#load")
    await page.page.wait_for_function("() => document.querySelector('#persona').options.length > 0")
    await page.page.select_option("#mode", mode)
    await page.page.click("#start")
    await page.state("ready")


async def test_the_playground_streams_a_reply_with_its_budget_and_keeps_the_key_local(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    fake.configure(chunk_delay_s=0.15)
    try:
        async with opened(browser, rapport.base_url + "/") as page:
            answer = await page.page.request.get(rapport.base_url + "/")
            csp = answer.headers.get("content-security-policy", "")
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            await start_playground(page, key)
            assert await page.page.evaluate("sessionStorage.getItem('rapport.apiKey')") == key
            assert await page.page.evaluate("localStorage.length") == 0
            await page.say("When do you open?")
            # Streamed: some words show before the reply is done.
            await page.until(
                "last('assistant')?.dataset.status === 'streaming'"
                " && last('assistant').querySelector('.text').textContent.trim() !== ''"
            )
            partial = (await page.replies())[-1].strip()
            assert partial and DEFAULT_REPLY.startswith(partial) and partial != DEFAULT_REPLY
            done = await page.reply_done(1)
            assert done == {"status": "completed", "text": DEFAULT_REPLY}
            assert "left" in await page.chat('[part="budget"]').inner_text()
            # The README's picture: taken here; written over the committed one on request.
            picture = await page.page.screenshot(type="png", full_page=True)
            assert len(picture) <= 150 * 1024
            if os.environ.get("RAPPORT_SCREENSHOT"):
                SCREENSHOT.write_bytes(picture)
            assert only_local(page.requests) == []
            assert all(s.startswith(f"ws://{LOOPBACK}:") for s in page.sockets)
    finally:
        await end_everything(rapport, key)


async def test_each_reply_lists_the_documents_it_drew_on(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key

    def add_the_hours() -> None:
        with rapport.client(headers={"X-Api-Key": key}) as client:
            hours = "We open at nine in the morning on Saturdays and close at four."
            made = client.put(doc_path("opening-hours"), json={"content": hours, "label": "Hours"})
            assert made.status_code in (200, 201), made.text
            assert wait_ready(client, "opening-hours")["processing_status"] == "ready"
            assert activate(client, ["opening-hours"]).status_code < 300

    await asyncio.to_thread(add_the_hours)
    try:
        async with opened(browser, rapport.base_url + "/") as page:
            await start_playground(page, key)
            await page.say("When do you open on Saturdays?")
            assert (await page.reply_done(1))["status"] == "completed"
            sources = page.chat('[part="log"] .message.assistant .sources li')
            assert await sources.all_inner_texts() == ["opening-hours"]
    finally:
        await end_everything(rapport, key)


async def test_the_stop_button_cancels_the_reply(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    fake.configure(chunk_delay_s=0.4)
    try:
        async with opened(browser, rapport.base_url + "/") as page:
            await start_playground(page, key)
            await page.say("Tell me everything")
            stop = page.chat('[part="stop"]')
            await page.until(
                "!root.querySelector('[part=\"stop\"]').disabled"
                " && last('assistant')?.querySelector('.text').textContent.trim() !== ''"
            )
            await stop.click()
            done = await page.reply_done(1)
            assert done["status"] == "cancelled"
            assert DEFAULT_REPLY.startswith(done["text"]) and done["text"] != DEFAULT_REPLY
            assert await stop.is_disabled()
    finally:
        await end_everything(rapport, key)


async def test_the_last_unit_spent_shows_the_4005_message(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    persona = await new_persona(rapport, key, sessionInteractionLimit=1)
    try:
        async with opened(browser, rapport.base_url + "/") as page:
            await page.page.fill("#api-key", key)
            await page.page.click("#load")
            await page.page.wait_for_function(
                f"() => [...document.querySelector('#persona').options]"
                f".some(o => o.value === '{persona}')"
            )
            await page.page.select_option("#persona", persona)
            await page.page.click("#start")
            await page.state("ready")
            await page.say("Just one question")
            assert (await page.reply_done(1))["status"] == "completed"
            await page.state("closed")
            assert "message limit" in (await page.status()).lower()
    finally:
        await end_everything(rapport, key)


async def test_a_voice_note_from_the_microphone_shows_its_transcript(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    try:
        async with opened(browser, rapport.base_url + "/") as page:
            await start_playground(page, key, mode="full")
            mic = page.chat('[part="mic"]')
            assert await mic.is_visible()
            await mic.click()
            await page.until("root.querySelector('[part=\"mic\"]').ariaPressed === 'true'")
            await page.page.wait_for_timeout(4500)  # the fixture's sentence lasts 4 s
            await mic.click()
            await page.until("/price/i.test(last('user')?.textContent ?? '')", 60_000)
            user = page.chat('[part="log"] .message.user .text').last
            assert "pro plan" in (await user.inner_text()).lower()
            assert (await page.reply_done(1, 60_000))["status"] == "completed"
    finally:
        await end_everything(rapport, key)


# --- the widget on a business's page ---------------------------------------------------------


async def test_the_widget_chats_without_the_key_ever_reaching_the_browser(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    async with business(rapport, key) as site, opened(browser, site.url) as page:
        await page.state("ready")
        await page.say("Hello from the shop")
        assert (await page.reply_done(1))["text"] == DEFAULT_REPLY
        for request in page.requests:
            headers = json.dumps(await request.all_headers())
            assert key not in request.url and key not in headers
            assert key not in (request.post_data or "")
        assert only_local(page.requests) == []


async def test_keyboard_alone_sends_a_message_at_360_px(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    viewport = {"width": 360, "height": 740}
    async with business(rapport, key) as site, opened(browser, site.url, viewport=viewport) as page:
        await page.state("ready")
        for _ in range(10):  # Tab until the message box has the focus
            focused = await page.page.evaluate(
                "() => document.querySelector('rapport-chat').shadowRoot.activeElement"
                "?.getAttribute('part')"
            )
            if focused == "input":
                break
            await page.page.keyboard.press("Tab")
        else:
            pytest.fail("the message box cannot be reached with Tab")
        await page.page.keyboard.type("Typed without a mouse")
        await page.page.keyboard.press("Enter")
        assert (await page.reply_done(1))["text"] == DEFAULT_REPLY
        texts = await page.chat('[part="log"] .message.user .text').all_inner_texts()
        assert texts == ["Typed without a mouse"]
        overflow = await page.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{overflow} px wider than a 360 px screen"


async def test_the_widget_waits_in_line_then_is_admitted(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        taken = []
        for i in range(SLOTS):
            minted = await http.post(
                "/api/sessions", json={"user_id": f"holder-{i}", "mode": "chat"}
            )
            assert minted.status_code == 201, minted.text
            taken.append(minted.json()["session_id"])
        async with business(rapport, key) as site, opened(browser, site.url) as page:
            await page.state("queued")
            assert re.search(r"number 1 in line", await page.status())
            assert (await http.delete(f"/api/sessions/{taken[0]}")).status_code == 204
            await page.state("ready")
            await page.say("Finally in")
            assert (await page.reply_done(1))["text"] == DEFAULT_REPLY


async def test_a_dropped_connection_resumes_without_repeating_text(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    key = rapport.demo_key
    proxy = Proxy(rapport.port)
    try:
        via = f"http://{LOOPBACK}:{proxy.port}"
        async with business(rapport, key, via=via) as site, opened(browser, site.url) as page:
            await page.state("ready")
            await page.say("First question")
            assert (await page.reply_done(1))["text"] == DEFAULT_REPLY
            fake.configure(chunk_delay_s=0.3)
            await page.say("Second question")
            await page.until(
                "root.querySelectorAll('.message.assistant').length === 2"
                " && last('assistant').querySelector('.text').textContent.trim() !== ''"
            )
            proxy.cut()
            await page.state("reconnecting", "ready")
            fake.configure(chunk_delay_s=0)
            second = await page.reply_done(2)
            await page.state("ready")
            await page.say("Third question")
            third = await page.reply_done(3)
            replies = await page.replies()
        # The reply cut short ends as the server kept it (cancelled, what was said), once.
        assert replies[0] == DEFAULT_REPLY and third["text"] == DEFAULT_REPLY
        assert second["status"] == "cancelled"
        assert DEFAULT_REPLY.startswith(second["text"]) and replies[1].strip() == second["text"]
        assert len(replies) == 3, replies
        assert len(page.sockets) >= 2, "the widget opened a new socket after the cut"
        assert any("last_seq=" in url for url in page.sockets)
    finally:
        proxy.close()


async def test_the_widgets_pages_need_nothing_beyond_127_0_0_1(
    browser: Browser, rapport: Server
) -> None:
    async with opened(browser, rapport.base_url + "/") as page:
        await page.page.wait_for_load_state("networkidle")
        assert only_local(page.requests) == []
        script = await page.page.request.get(rapport.base_url + "/widget.js")
        assert script.ok and "javascript" in script.headers["content-type"]
        assert "customElements.define" in await script.text()


async def test_the_widget_says_so_when_the_waiting_room_is_full(
    browser: Browser, crowded: Server
) -> None:
    key = crowded.demo_key
    async with httpx.AsyncClient(
        base_url=crowded.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        held = await http.post("/api/sessions", json={"user_id": "holder", "mode": "chat"})
        assert held.status_code == 201
    async with business(crowded, key) as site, opened(browser, site.url) as page:
        # ("Connecting…" shows first, while the backend mints.)
        await page.until("/busy/i.test(root.querySelector('[part=\"status\"]').textContent)")
        assert "waiting line is full" in (await page.status()).lower()


async def test_a_second_tab_takes_the_conversation_and_the_first_says_so(
    browser: Browser, rapport: Server
) -> None:
    key = rapport.demo_key
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        minted = (await http.post("/api/sessions", json={"user_id": "tabs", "mode": "chat"})).json()
    try:
        # A page of Rapport's own that has the widget: the element made by hand, its session
        # given as a backend would.
        async with opened(browser, rapport.base_url + "/") as page:
            await page.page.evaluate(
                "(minted) => { const c = document.createElement('rapport-chat');"
                " document.body.replaceChildren(c);"
                " c.sessionSource = async () => new Response(JSON.stringify(minted),"
                " {status: 201, headers: {'content-type': 'application/json'}}); c.start(); }",
                minted,
            )
            await page.state("ready")
            async with connect(minted["ws_url"]) as other:
                assert json.loads(await other.recv())["type"] == "session.ready"
                await page.state("closed")
                assert "another tab" in (await page.status()).lower()
    finally:
        await end_everything(rapport, key)


def test_the_readme_shows_the_playground_in_a_small_picture() -> None:
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")
    assert SCREENSHOT.stat().st_size <= 150 * 1024
    assert (
        f"]({SCREENSHOT.relative_to(SCREENSHOT.parent.parent)})"
        in (SCREENSHOT.parent.parent / "README.md").read_text()
    )
