"""The operator dashboard (issue 23) in a real browser: Debian's chromium driven by Playwright
(``executable_path``), 360 px wide, with the keyboard alone, against a real ``rapport serve``
and the fake LLM. Each page's main flow is walked, each page is checked with the pinned
axe-core (no serious or critical violation), and no request leaves 127.0.0.1.

Mouse clicks are never used: a control is reached with Tab (:func:`tab_to`) and pressed with
Enter or Space, as someone without a pointer would. Files are the one exception: a file
chooser is the operating system's, so the test hands the input its file.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, Response

from loadtest.fake_llm import DEFAULT_REPLY
from tests import axe_core
from tests.conftest import Server
from tests.test_browser import only_local
from tests.test_signin import PASSWORD, invite, set_password

NARROW = {"width": 360, "height": 780}
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def rapport(llm_server: Server) -> Server:
    """The shared server on the fake LLM: the dashboard needs no settings of its own, and
    every test here keeps to its own account (``tenant``)."""
    return llm_server


@pytest.fixture(scope="module")
def tenant(rapport: Server) -> dict[str, str]:
    """An account with its primary key, an owner whose password is set, and a viewer."""
    name = f"dash-{secrets.token_hex(3)}"
    key = rapport.new_tenant(name)
    people = {"name": name, "key": key}
    for role in ("owner", "viewer"):
        email = f"{role}@{name}.example"
        assert set_password(rapport, invite(rapport, name, email, role)).status_code == 204
        people[role] = email
    return people


def api(rapport: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=rapport.base_url, headers={"X-Api-Key": key}, timeout=20)


class Dashboard:
    """A signed-in page, and every response it got."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.responses: list[Response] = []
        self.requests: list = []
        page.on("response", lambda response: self.responses.append(response))
        page.on("request", lambda request: self.requests.append(request))

    async def open(self, name: str) -> None:
        await self.page.goto(f"{self.base_url}/dashboard#{name}")
        await self.heading_is(None)

    async def heading_is(self, text: str | None) -> None:
        """The view has rendered (its h1 is there), with ``text`` when given."""
        await self.page.wait_for_function(
            "(want) => { const view = document.querySelector('#view');"
            " const h = view && !view.hasAttribute('aria-busy') && view.querySelector('h1');"
            " return h && (want === null || h.textContent === want); }",
            arg=text,
            timeout=WAIT_MS,
        )

    async def tab_to(self, name: str, limit: int = 120) -> None:
        """Press Tab until the focused control's accessible name is ``name``."""
        for _ in range(limit):
            await self.page.keyboard.press("Tab")
            if await self.focused() == name:
                return
        raise AssertionError(f"{name!r} cannot be reached with Tab")

    async def focused(self) -> str:
        return await self.page.evaluate(
            "() => { const e = document.activeElement; if (!e) return '';"
            " const label = e.labels && e.labels[0] ? e.labels[0].textContent : '';"
            " return (e.getAttribute('aria-label') || label || e.textContent || '').trim(); }"
        )

    async def press(self, name: str) -> None:
        await self.tab_to(name)
        await self.page.keyboard.press("Enter")

    async def type_into(self, label: str, text: str) -> None:
        await self.tab_to(label)
        await self.page.keyboard.type(text)

    async def text(self) -> str:
        return await self.page.inner_text("#view")

    async def wait_text(self, text: str, wait_ms: int = WAIT_MS) -> None:
        await self.page.wait_for_function(
            "(t) => document.querySelector('main').innerText.includes(t)",
            arg=text,
            timeout=wait_ms,
        )

    async def accessible(self) -> None:
        assert await axe_core.serious_violations(self.page) == []

    def bodies(self, path: str) -> list[Response]:
        return [r for r in self.responses if r.url.split("?")[0].endswith(path)]


@contextlib.asynccontextmanager
async def signed_in(browser: Browser, rapport: Server, email: str) -> AsyncIterator[Dashboard]:
    """A new browser context at 360 px, signed in through the API (the keyboard sign-in has
    its own test), on the dashboard."""
    context = await browser.new_context(viewport=NARROW)
    try:
        made = await context.request.post(
            f"{rapport.base_url}/api/auth/login", data={"email": email, "password": PASSWORD}
        )
        assert made.status == 200, await made.text()
        dashboard = Dashboard(await context.new_page(), rapport.base_url)
        yield dashboard
        assert only_local(dashboard.requests) == []
    finally:
        await context.close()


async def test_set_password_then_sign_in_with_the_keyboard(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    email = f"admin-{secrets.token_hex(2)}@{tenant['name']}.example"
    token = invite(rapport, tenant["name"], email, "admin")
    context = await browser.new_context(viewport=NARROW)
    try:
        page = Dashboard(await context.new_page(), rapport.base_url)
        await page.page.goto(f"{rapport.base_url}/dashboard/set-password#token={token}")
        await page.heading_is("Set your password")
        await page.accessible()
        # The field has focus on arrival.
        await page.page.keyboard.type(PASSWORD)
        await page.type_into("The same password again", PASSWORD)
        await page.page.keyboard.press("Enter")
        await page.wait_text("Your password is set.")
        assert token not in page.page.url  # spent, and kept out of history

        await page.page.goto(f"{rapport.base_url}/dashboard")
        await page.heading_is("Rapport dashboard")
        await page.accessible()
        await page.page.keyboard.type(email)
        await page.type_into("Password", "not the password")
        await page.page.keyboard.press("Enter")
        await page.page.get_by_role("alert").get_by_text("auth.").wait_for()
        await page.page.fill("input[type=password]", "")
        await page.page.keyboard.type(PASSWORD)
        await page.page.keyboard.press("Enter")
        await page.heading_is("API keys")
        assert email in await page.page.inner_text("#who")
        cookies = {c["name"]: c for c in await context.cookies()}
        assert cookies["__Host-rapport_session"]["httpOnly"] is True

        await page.press("Sign out")
        await page.heading_is("Rapport dashboard")
        gone = await context.request.get(f"{rapport.base_url}/api/auth/session")
        assert gone.status == 401
    finally:
        await context.close()


async def test_a_key_is_created_shown_once_then_deleted_after_a_warning(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.open("keys")
        await page.accessible()
        await page.type_into("Label", "staging")
        await page.press("Create secondary key")
        # The password is asked again, in a dialog that holds the focus.
        assert await page.focused() == "Your password"
        await page.page.keyboard.type(PASSWORD)
        await page.page.keyboard.press("Enter")
        await page.wait_text("New secondary key")
        key = await page.page.input_value("input.secret")
        assert key.startswith("rk_live_")
        with api(rapport, key) as http:
            assert http.get("/api/personas").status_code == 200

        await page.press("I have saved it")
        await page.wait_text("staging")
        assert key not in await page.page.content()
        for response in page.bodies("/api/account/api-keys"):
            if response.request.method == "GET":
                assert key not in await response.text()
        await page.open("audit")
        await page.wait_text("key.created")
        assert key not in await page.page.content()

        await page.open("keys")
        await page.press("Delete the secondary key")
        await page.page.get_by_text("stops working").wait_for()
        await page.press("Delete key")
        await page.wait_text("The secondary key is deleted.")
        with api(rapport, key) as http:
            assert http.get("/api/personas").status_code == 401


async def test_staged_documents_are_processed_from_the_page(
    browser: Browser, rapport: Server, tenant: dict[str, str], tmp_path: Path
) -> None:
    with api(rapport, tenant["key"]) as http:
        docs = [
            {"external_id": f"faq-{n}", "label": f"Opening hours {n}", "content": text}
            for n, text in enumerate(
                ["We open at nine every weekday.", "The shop closes at six on Saturdays."]
            )
        ]
        assert http.put("/api/knowledge/docs", json={"items": docs}).status_code == 200
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.open("knowledge")
        await page.accessible()
        await page.press("Process staged (2)")
        await page.wait_text("2 staged documents queued for processing.")
        for _ in range(60):
            await page.page.reload()
            await page.heading_is("Knowledge")
            rows = await page.page.locator("tbody tr").all_inner_texts()
            if sum("ready" in row for row in rows) == 2:
                break
        else:
            raise AssertionError(f"not ready: {rows}")

        upload = tmp_path / "returns.txt"
        upload.write_text("Returns are accepted within thirty days with a receipt.")
        await page.page.set_input_files("input[type=file]", upload)
        await page.type_into("Label (optional)", "Returns policy")
        await page.press("Upload")
        await page.wait_text("returns.txt uploaded")
        await page.wait_text("Returns policy")

        await page.press("Rename Opening hours 0")
        await page.page.keyboard.type("Weekday hours")
        await page.page.keyboard.press("Enter")
        await page.wait_text("Renamed to Weekday hours.")
        with api(rapport, tenant["key"]) as http:
            doc = http.get("/api/knowledge/docs/by-external-id/faq-0").json()
        assert doc["label"] == "Weekday hours"


async def test_a_persona_is_made_edited_and_tried_with_the_browser_session(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    name = f"Guide {secrets.token_hex(2)}"
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.open("personas")
        await page.type_into("New persona's name", name)
        await page.page.keyboard.press("Enter")
        await page.wait_text(f"{name} is created.")
        await page.heading_is("Personas")
        await page.page.wait_for_selector("#persona-title")
        await page.accessible()
        await page.type_into("Description", "Answers questions about the shop.")
        await page.type_into("Interactions per session", "7")
        await page.press("Save persona")
        await page.wait_text(f"{name} is saved.")
        persona_id = page.page.url.rsplit("/", 1)[1]
        with api(rapport, tenant["key"]) as http:
            saved = http.get(f"/api/personas/{persona_id}").json()
        assert saved["description"] == "Answers questions about the shop."
        assert saved["publishSettings"]["sessionInteractionLimit"] == 7

        await page.press("Try it")
        await page.page.wait_for_function(
            "() => document.querySelector('rapport-chat')?.getAttribute('state') === 'ready'",
            timeout=WAIT_MS,
        )
        mints = [r for r in page.requests if r.url.endswith("/api/sessions")]
        assert mints and all("x-api-key" not in r.headers for r in mints)
        await page.page.locator('rapport-chat [part="input"]').fill("Hello there")
        await page.page.keyboard.press("Enter")
        await page.page.wait_for_function(
            "(want) => [...document.querySelector('rapport-chat').shadowRoot"
            ".querySelectorAll('.message.assistant .text')]"
            ".some(e => e.textContent.includes(want))",
            arg=DEFAULT_REPLY,
            timeout=WAIT_MS,
        )
        with api(rapport, tenant["key"]) as http:
            live = http.get("/api/sessions").json()["items"]
        assert [s["persona_id"] for s in live if s["persona_id"] == persona_id]


async def test_the_live_page_ends_a_session(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    with api(rapport, tenant["key"]) as http:
        made = http.post("/api/sessions", json={"user_id": "visitor-7", "mode": "chat"})
        assert made.status_code == 201, made.text
        session_id = made.json()["session_id"]
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.open("live")
        await page.accessible()
        await page.wait_text("visitor-7")
        await page.press(f"End session {session_id[:12]}")
        await page.wait_text("The session is ended.")
    with api(rapport, tenant["key"]) as http:
        assert http.get(f"/api/sessions/{session_id}").json()["status"] == "ended"


async def test_usage_settings_and_audit(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    with api(rapport, tenant["key"]) as http:
        turn = http.post("/api/v1/conversation", json={"user_id": "u-1", "message": "hello"})
        assert turn.status_code == 200, turn.text
    invited = f"new-{secrets.token_hex(2)}@{tenant['name']}.example"
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.open("usage")
        await page.accessible()
        assert "Turns per day, last 30 days" in await page.text()
        assert "0 turns in all" not in await page.text()

        await page.open("settings")
        await page.accessible()
        await page.type_into("Origins, one per line", "https://shop.example")
        await page.press("Save origins")
        await page.wait_text("Allowed origins saved.")
        await page.type_into("Email", invited)
        await page.press("Invite")
        await page.wait_text(f"Set-password link for {invited}")
        link = await page.page.input_value("input.secret")
        assert "/dashboard/set-password#token=" in link

        await page.open("audit")
        await page.accessible()
        text = await page.text()
        assert "settings.origins_changed" in text and "user.created" in text
    with api(rapport, tenant["key"]) as http:
        account = http.get("/api/subscription/limits")
        assert account.status_code == 200


async def test_a_viewer_is_shown_no_control_that_writes(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    async with signed_in(browser, rapport, tenant["viewer"]) as page:
        for name in ("keys", "knowledge", "live", "settings"):
            await page.open(name)
            await page.accessible()
            labels = await page.page.locator("#view button").all_inner_texts()
            writes = {"Create secondary key", "Delete", "Process staged", "End", "Save origins"}
            assert not [b for b in labels if any(b.startswith(w) for w in writes)], labels


async def test_the_playground_uses_the_browser_session(
    browser: Browser, rapport: Server, tenant: dict[str, str]
) -> None:
    async with signed_in(browser, rapport, tenant["owner"]) as page:
        await page.page.goto(f"{rapport.base_url}/")
        await page.page.get_by_text("Signed in to the dashboard as").wait_for()
        assert await page.page.locator("#key-row").is_hidden()
        await page.press("Start a session")
        await page.page.wait_for_function(
            "() => document.querySelector('rapport-chat')?.getAttribute('state') === 'ready'",
            timeout=WAIT_MS,
        )
        assert all("x-api-key" not in r.headers for r in page.requests)
