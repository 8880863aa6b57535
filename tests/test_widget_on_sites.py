"""The widget on a business's site as visitors meet it (issue 24): it costs nothing until the
visitor writes, opens from a launcher, survives reloads of the tab, lets go of a hidden tab,
offers starter prompts and speaks any language. Debian's Chromium through Playwright, against a
real ``rapport serve``, the fake LLM and test_browser's business backend; the business's pages
are written here (a Playwright route), the mints go to its real backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from playwright.async_api import Browser, Route, WebSocket

from loadtest.fake_llm import DEFAULT_REPLY
from tests.conftest import FakeOpenAI, Server, llm_env, running_together
from tests.test_browser import CHAT, Business, Watched, browser, business, only_local, opened

__all__ = ["browser"]  # test_browser's module fixture: Chromium with a fake microphone

RESUME_SECONDS = 3
SLOTS = 2


@pytest.fixture(scope="module")
def deployments(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI
) -> Iterator[tuple[Server, Server]]:
    """(``rapport``, ``quiet``), started at once."""
    both = (
        Server(
            tmp_path_factory.mktemp("sites") / "data",
            **llm_env(
                fake_llm,
                RAPPORT_MAX_SESSIONS=str(SLOTS),
                RAPPORT_SESSION_RESUME_SECONDS=str(RESUME_SECONDS),
            ),
        ),
        Server(
            tmp_path_factory.mktemp("quiet") / "data",
            **llm_env(fake_llm, RAPPORT_SESSION_IDLE_SECONDS="2"),
        ),
    )
    with running_together(*both):
        yield both


@pytest.fixture(scope="module")
def rapport(deployments: tuple[Server, Server]) -> Server:
    """Rapport with two slots and a short resume window."""
    return deployments[0]


@pytest.fixture(scope="module")
def quiet(deployments: tuple[Server, Server]) -> Server:
    """Rapport that ends a session after 2 s without a message from its visitor."""
    return deployments[1]


class Visit:
    """A tab on the business's site: its pages hold ``chat`` (the element's markup); every
    mint and every socket is counted."""

    def __init__(self, watched: Watched, site: Business) -> None:
        self.watched = watched
        self.page = watched.page
        self.site = site
        self.sockets: list[WebSocket] = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws))

    def mints(self) -> int:
        return sum(1 for r in self.watched.requests if r.url.endswith("/rapport-session"))

    async def go(self, path: str = "shop") -> None:
        await self.page.goto(self.site.url + path)
        await self.page.wait_for_load_state("networkidle")

    async def users(self) -> list[str]:
        return await self.watched.chat('[part="log"] .message.user .text').all_inner_texts()

    async def shadow(self, script: str) -> object:
        """``script`` evaluated with ``root`` the widget's shadow root."""
        return await self.page.evaluate(
            f"() => {{ const root = document.querySelector('rapport-chat').shadowRoot;"
            f" return {script}; }}"
        )


@contextlib.asynccontextmanager
async def visit(
    browser: Browser, rapport: Server, attributes: str = "", script: str = ""
) -> AsyncIterator[Visit]:
    """A fresh tab on a business site whose pages (every path) embed the widget with
    ``attributes``, then run ``script``."""
    chat = CHAT.format(attributes=attributes) + (f"<script>{script}</script>" if script else "")
    async with (
        business(rapport, rapport.demo_key, chat=chat) as site,
        opened(browser, "about:blank") as tab,
    ):
        here = Visit(tab, site)
        await here.go()
        yield here
        assert only_local(tab.requests) == []


async def history(rapport: Server, user_id: str) -> str:
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": rapport.demo_key}, timeout=10
    ) as http:
        answer = await http.get(f"/api/v1/users/{user_id}/history")
        assert answer.status_code == 200, answer.text
        return answer.text


async def test_a_page_view_mints_nothing_and_the_first_message_waits_in_line_then_goes_once(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    async with httpx.AsyncClient(
        base_url=rapport.base_url, headers={"X-Api-Key": rapport.demo_key}, timeout=10
    ) as http:
        held = []
        for i in range(SLOTS):
            minted = await http.post(
                "/api/sessions", json={"user_id": f"holder-{i}", "mode": "chat"}
            )
            assert minted.status_code == 201, minted.text
            held.append(minted.json()["session_id"])
        async with visit(browser, rapport) as tab:
            await tab.watched.state("idle")
            assert tab.mints() == 0 and tab.sockets == []
            assert await tab.watched.chat('[part="input"]').is_enabled()
            await tab.watched.say("Is the shop open?")
            await tab.watched.state("queued")
            assert "number 1 in line" in await tab.watched.status()
            assert (await http.delete(f"/api/sessions/{held[0]}")).status_code == 204
            assert (await tab.watched.reply_done(1))["text"] == DEFAULT_REPLY
            await tab.watched.state("ready")
            assert await tab.users() == ["Is the shop open?"]
            assert await tab.watched.replies() == [DEFAULT_REPLY]
            assert tab.mints() == 1
            said = json.loads(await history(rapport, tab.site.user_id))
            assert json.dumps(said).count("Is the shop open?") == 1, said


async def test_the_launcher_opens_closes_with_the_keyboard_and_shows_unread_replies(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    async with visit(browser, rapport, "launcher launcher-position='bottom-left'") as tab:
        launcher = tab.watched.chat('[part="launcher"]')
        frame = tab.watched.chat('[part="frame"]')
        assert await launcher.get_attribute("aria-expanded") == "false"
        assert await frame.is_hidden() and await launcher.inner_text() == "Chat with us"
        box = await launcher.bounding_box()
        assert box is not None and box["x"] < 200, "bottom-left"
        await launcher.focus()
        await tab.page.keyboard.press("Enter")
        assert await launcher.get_attribute("aria-expanded") == "true"
        assert await frame.is_visible()
        assert await tab.shadow("root.activeElement?.getAttribute('part')") == "input"
        assert tab.mints() == 0
        await tab.page.keyboard.type("Hello")
        await tab.page.keyboard.press("Enter")
        await tab.watched.reply_done(1)
        fake.configure(chunk_delay_s=0.3)
        await tab.watched.say("And another thing")
        await tab.page.keyboard.press("Escape")
        assert await frame.is_hidden()
        assert await launcher.get_attribute("aria-expanded") == "false"
        assert await tab.shadow("root.activeElement?.getAttribute('part')") == "launcher"
        assert (await tab.watched.reply_done(2))["text"] == DEFAULT_REPLY
        assert await tab.watched.chat('[part="unread"]').is_visible()
        # Another page of the site, in the same tab: still closed, unread, the same talk.
        await tab.go("shop/returns")
        await tab.watched.state("ready")
        assert await tab.watched.chat('[part="unread"]').is_visible()
        assert await frame.is_hidden()
        await tab.watched.chat('[part="launcher"]').click()
        assert await tab.watched.chat('[part="unread"]').is_hidden()
        assert await tab.users() == ["Hello", "And another thing"]
        assert tab.mints() == 1


async def test_a_reload_mid_reply_resumes_the_same_session_without_repeating_text(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    async with visit(browser, rapport) as tab:
        await tab.watched.say("First question")
        await tab.watched.reply_done(1)
        fake.configure(chunk_delay_s=0.3)
        await tab.watched.say("Second question")
        await tab.watched.until(
            "root.querySelectorAll('.message.assistant').length === 2"
            " && last('assistant').querySelector('.text').textContent.trim() !== ''"
        )
        await tab.page.reload()
        second = await tab.watched.reply_done(2)
        await tab.watched.state("ready")
        fake.configure(chunk_delay_s=0)
        await tab.watched.say("Third question")
        third = await tab.watched.reply_done(3)
        replies = await tab.watched.replies()
        assert await tab.users() == ["First question", "Second question", "Third question"]
        assert len(replies) == 3 and replies[0] == DEFAULT_REPLY and third["text"] == DEFAULT_REPLY
        # The reply the reload cut short, as the server kept it, once.
        assert second["status"] in ("completed", "cancelled")
        assert DEFAULT_REPLY.startswith(second["text"]) and replies[1].strip() == second["text"]
        assert tab.mints() == 1 and await tab.page.evaluate("localStorage.length") == 0
        assert "last_seq=" in tab.sockets[-1].url
        assert len({s.url.split("&last_seq")[0] for s in tab.sockets}) == 1, "one session"


async def test_past_the_resume_window_the_next_message_starts_a_session_that_remembers(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    async with visit(browser, rapport) as tab:
        await tab.watched.say("My name is Ada")
        await tab.watched.reply_done(1)
        await tab.page.goto("about:blank")
        await asyncio.sleep(RESUME_SECONDS + 1.5)
        await tab.go()
        # What was said is kept as history; nothing is minted until the visitor writes.
        await tab.watched.state("idle")
        assert await tab.users() == ["My name is Ada"]
        assert tab.mints() == 1
        fake.reset()
        await tab.watched.say("What is my name?")
        assert (await tab.watched.reply_done(2))["text"] == DEFAULT_REPLY
        assert tab.mints() == 2
        assert await tab.users() == ["My name is Ada", "What is my name?"]
        prompt = json.dumps(fake.calls()[-1]["messages"])
        assert "My name is Ada" in prompt, "the new session has the user's memory"


async def test_a_hidden_tab_lets_go_of_its_socket_and_resumes_when_seen(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    async with visit(browser, rapport, "hidden-close-seconds='1'") as tab:
        await tab.watched.say("Hello")
        await tab.watched.reply_done(1)
        first = tab.sockets[-1]
        seen = (
            "(state) => { Object.defineProperty(document, 'visibilityState',"
            " {value: state, configurable: true});"
            " document.dispatchEvent(new Event('visibilitychange')); }"
        )
        await tab.page.evaluate(seen, "hidden")
        await tab.watched.state("paused")
        if not first.is_closed():  # the close frame may still be on its way
            await first.wait_for_event("close")
        await tab.page.evaluate(seen, "visible")
        await tab.watched.state("ready")
        assert len(tab.sockets) == 2 and "last_seq=" in tab.sockets[1].url
        await tab.watched.say("Still there?")
        assert (await tab.watched.reply_done(2))["text"] == DEFAULT_REPLY
        assert tab.mints() == 1 and len(await tab.watched.replies()) == 2
        # hidden-close-seconds="0": a hidden tab keeps its socket however long it stays hidden.
        await tab.page.evaluate(
            "document.querySelector('rapport-chat').setAttribute('hidden-close-seconds', '0')"
        )
        await tab.page.evaluate(seen, "hidden")
        await tab.page.wait_for_timeout(1500)  # past the 1 s it let go after before
        assert not tab.sockets[1].is_closed() and len(tab.sockets) == 2


async def test_starter_chips_from_the_page_and_from_the_mint_are_sent_on_click(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    chosen = "document.querySelector('rapport-chat').starters = ['Opening hours?', 'Returns?'];"
    async with visit(browser, rapport, script=chosen) as tab:
        chips = tab.watched.chat('[part="starter"]')
        assert await chips.all_inner_texts() == ["Opening hours?", "Returns?"]
        await chips.nth(1).click()
        assert (await tab.watched.reply_done(1))["text"] == DEFAULT_REPLY
        assert await tab.users() == ["Returns?"]
        assert await chips.count() == 0 and tab.mints() == 1

    async with visit(browser, rapport, "start='open'") as tab:

        async def with_starters(route: Route) -> None:
            minted = await route.fetch()
            body = await minted.json()
            body["starter_prompts"] = ["Do you ship abroad?"]
            await route.fulfill(response=minted, json=body)

        await tab.page.route("**/rapport-session", with_starters)
        assert tab.mints() == 0
        await tab.watched.chat('[part="input"]').focus()  # start="open": minted on focus
        await tab.watched.state("ready")
        assert tab.mints() == 1
        chips = tab.watched.chat('[part="starter"]')
        assert await chips.all_inner_texts() == ["Do you ship abroad?"]
        # The tab keeps the last mint's prompts: a reload shows them before any message.
        await tab.page.reload()
        await tab.watched.state("ready")
        await chips.first.click()
        assert (await tab.watched.reply_done(1))["text"] == DEFAULT_REPLY
        assert await tab.users() == ["Do you ship abroad?"] and tab.mints() == 1


async def test_every_string_is_replaceable_and_arabic_lays_out_right_to_left(
    browser: Browser, rapport: Server, fake: FakeOpenAI
) -> None:
    words = (
        "document.querySelector('rapport-chat').strings ="
        " {placeholder: 'اكتب رسالتك', 'close.1000': 'انتهت المحادثة.'};"
    )
    prompts = "lang='ar' starter-prompts='[\"ما هي ساعات العمل؟\"]'"
    async with visit(browser, rapport, prompts, script=words) as tab:
        chips = tab.watched.chat('[part="starter"]')
        assert await chips.all_inner_texts() == ["ما هي ساعات العمل؟"]
        assert await tab.shadow("getComputedStyle(root.querySelector('.frame')).direction") == (
            "rtl"
        )
        box = tab.watched.chat('[part="input"]')
        assert await box.get_attribute("placeholder") == "اكتب رسالتك"
        await tab.watched.say("مرحبا")
        await tab.watched.reply_done(1)
        # Mirrored: the visitor's message on the left, the reply on the right.
        sides = await tab.shadow(
            "['user', 'assistant'].map(k => { const r = root.querySelector(`.message.${k}`)"
            ".getBoundingClientRect(); const log = root.querySelector('.log')"
            ".getBoundingClientRect(); return r.left + r.width / 2 < log.left + log.width / 2; })"
        )
        assert sides == [True, False]
        # A `dir` the page gives wins over the language's own.
        await tab.page.evaluate("document.querySelector('rapport-chat').setAttribute('dir', 'ltr')")
        assert await tab.shadow("getComputedStyle(root.querySelector('.frame')).direction") == (
            "ltr"
        )
        await tab.page.evaluate("document.querySelector('rapport-chat').end()")
        await tab.watched.state("closed")
        assert await tab.watched.status() == "انتهت المحادثة."


async def test_a_quiet_session_is_closed_said_so_and_the_next_message_starts_afresh(
    browser: Browser, quiet: Server
) -> None:
    async with visit(browser, quiet) as tab:
        await tab.watched.say("Hello")
        await tab.watched.reply_done(1)
        await tab.watched.state("closed")
        assert "quiet while" in await tab.watched.status()
        await tab.watched.say("Back again")
        assert (await tab.watched.reply_done(2))["text"] == DEFAULT_REPLY
        assert tab.mints() == 2
        assert await tab.users() == ["Hello", "Back again"]


THEME = (
    "rapport-chat { --rapport-accent: rgb(1, 2, 3); --rapport-bg: rgb(250, 250, 240);"
    " --rapport-fg: rgb(10, 20, 30); --rapport-font: monospace; --rapport-radius: 3px;"
    " --rapport-height: 20rem; --rapport-launcher-offset: 7px; --rapport-panel-width: 300px;"
    " --rapport-unread: rgb(7, 8, 9); --rapport-z-index: 42 }"
    " rapport-chat::part(log) { outline: 4px solid rgb(4, 5, 6) }"
    " rapport-chat::part(send) { border-radius: 1px }"
)
STYLED = (
    "{send: ['[part=send]', 'backgroundColor'], frame: ['[part=frame]', 'backgroundColor'],"
    " text: ['[part=frame]', 'color'], corner: ['[part=frame]', 'borderTopLeftRadius'],"
    " width: ['[part=frame]', 'width'], height: ['[part=frame]', 'height'],"
    " unread: ['[part=unread]', 'backgroundColor'], log: ['[part=log]', 'outlineColor'],"
    " sendCorner: ['[part=send]', 'borderTopLeftRadius']}"
)


async def styles(tab: Visit) -> dict[str, str]:
    """The computed styles the README's theming properties and parts reach, and the host's."""
    inner = await tab.shadow(
        f"Object.fromEntries(Object.entries({STYLED}).map(([k, [s, p]]) =>"
        " [k, getComputedStyle(root.querySelector(s))[p]]))"
    )
    host = await tab.page.evaluate(
        "() => { const s = getComputedStyle(document.querySelector('rapport-chat'));"
        " return {font: s.fontFamily, z: s.zIndex, right: s.right, bottom: s.bottom}; }"
    )
    assert isinstance(inner, dict) and isinstance(host, dict)
    return inner | host


async def test_the_pages_css_properties_and_parts_theme_the_widget(
    browser: Browser, rapport: Server
) -> None:
    # README, "Theming": each custom property set on the page, and ::part(), reach inside.
    theme = f"const s = document.createElement('style'); s.textContent = {json.dumps(THEME)};"
    theme += " document.head.append(s);"
    async with visit(browser, rapport, "launcher", script=theme) as tab:
        await tab.watched.chat('[part="launcher"]').click()
        assert await styles(tab) == {
            "send": "rgb(1, 2, 3)", "frame": "rgb(250, 250, 240)", "text": "rgb(10, 20, 30)",
            "corner": "3px", "width": "300px", "height": "320px", "unread": "rgb(7, 8, 9)",
            "log": "rgb(4, 5, 6)", "sendCorner": "1px", "font": "monospace", "z": "42",
            "right": "7px", "bottom": "7px",
        }  # fmt: skip
    async with visit(browser, rapport, "launcher") as tab:  # the README's defaults
        await tab.watched.chat('[part="launcher"]').click()
        found = await styles(tab)
        assert {k: found[k] for k in ("send", "frame", "corner", "width", "unread", "z")} == {
            "send": "rgb(79, 70, 229)", "frame": "rgb(255, 255, 255)", "corner": "14px",
            "width": "384px", "unread": "rgb(217, 45, 32)", "z": "2147483000",
        }  # fmt: skip
        assert (found["right"], found["bottom"]) == ("20px", "20px")
