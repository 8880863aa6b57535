"""Dashboard sign-in (issue 23, items 1 and 2): users, browser sessions, CSRF, throttling.

Against a real ``rapport serve``. httpx keeps no ``Secure`` cookie over http, as a browser
would on a host other than localhost, so the tests send the Cookie header themselves.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from argon2 import PasswordHasher
from playwright.async_api import Browser as Chromium

from engine import keyspace
from engine.audit import AuditLog, AuditQuery
from engine.errors import SignedOut
from engine.signin import COOKIE, SignInStore
from engine.users import HASHER, LOWEST_PRIORITY, User, UserStore, hashing_pool
from tests.conftest import Clock, Server
from tests.test_knowledge import state_of

PASSWORD = "a long enough passphrase"


def invite(server: Server, account: str, email: str, role: str = "owner") -> str:
    """Create a dashboard user with the CLI; its set-password link's token. Setup for the
    tests of links, passwords and sign-ins, so the CLI's ``main`` runs in this process (a
    subprocess is ~0.7 s a command); the user commands tested below run as subprocesses."""
    made = server.cli_in_process(
        "users", "create", "--account", account, "--email", email, "--role", role
    )
    assert made.returncode == 0, made.stderr
    link = made.stdout.splitlines()[-1]
    assert link.startswith(f"http://127.0.0.1:{server.port}/dashboard/set-password#token=")
    return link.partition("#token=")[2]


def set_password(server: Server, token: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/auth/set-password", json={"token": token, "password": password}
    )


def login(server: Server, email: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/auth/login",
        json={"email": email, "password": password},
        headers=headers,
    )


def cookie_of(response: httpx.Response) -> str:
    name, _, rest = response.headers["set-cookie"].partition("=")
    assert name == COOKIE
    return rest.partition(";")[0]


class Browser:
    """One signed-in dashboard user, as its page's fetch calls would look."""

    def __init__(self, server: Server, response: httpx.Response) -> None:
        assert response.status_code == 200, response.text
        self.server = server
        self.cookie = cookie_of(response)
        self.csrf = response.json()["csrf_token"]

    def request(self, method: str, path: str, *, csrf: str | None = "", **kwargs) -> httpx.Response:
        headers = {"Cookie": f"{COOKIE}={self.cookie}", "Origin": self.server.base_url}
        token = self.csrf if csrf == "" else csrf
        if token is not None:
            headers["X-CSRF-Token"] = token
        headers.update(kwargs.pop("headers", {}))
        return httpx.request(method, f"{self.server.base_url}{path}", headers=headers, **kwargs)


@pytest.fixture(scope="module")
def tenant(server: Server) -> dict[str, str]:
    """An account with an owner and a viewer who have set their passwords."""
    name = f"signin-{secrets.token_hex(3)}"
    key = server.new_tenant(name)
    users = {"owner": f"owner@{name}.example", "viewer": f"viewer@{name}.example"}
    for role, email in users.items():
        assert set_password(server, invite(server, name, email, role)).status_code == 204
    return {"name": name, "key": key, **users}


def test_login_sets_a_host_cookie_the_page_cannot_read(server: Server, tenant) -> None:
    response = login(server, tenant["owner"].upper())  # emails compare lowercased
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith(f"{COOKIE}=")
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= set(attributes)
    assert not any(part.lower().startswith("domain") for part in attributes)
    assert len(cookie_of(response)) >= 43  # 256 bits, base64url
    body = response.json()
    assert body["user"] == tenant["owner"] and body["role"] == "owner"
    assert body["csrf_token"] and body["csrf_token"] not in cookie
    assert response.headers["cache-control"] == "no-store"
    seen = Browser(server, response).request("GET", "/api/auth/session")
    assert seen.status_code == 200
    assert seen.json() == body


def test_every_login_gets_a_new_id_and_the_old_one_dies(server: Server, tenant) -> None:
    first = Browser(server, login(server, tenant["owner"]))
    # Signing in again from the same browser (its cookie sent along) ends the first.
    again = login(server, tenant["owner"], Cookie=f"{COOKIE}={first.cookie}")
    second = Browser(server, again)
    assert second.cookie != first.cookie
    assert first.request("GET", "/api/auth/session").status_code == 401
    assert second.request("GET", "/api/auth/session").status_code == 200


def test_logout_ends_the_session_on_the_server(server: Server, tenant) -> None:
    browser = Browser(server, login(server, tenant["owner"]))
    other = Browser(server, login(server, tenant["owner"]))
    out = browser.request("POST", "/api/auth/logout")
    assert out.status_code == 204
    assert "Max-Age=0" in out.headers["set-cookie"]
    refused = browser.request("GET", "/api/auth/session")
    assert refused.status_code == 401
    assert refused.json()["code"] == "auth.unauthorized"
    assert other.request("GET", "/api/auth/session").status_code == 200


def test_sign_out_everywhere_ends_every_session_of_the_user(server: Server, tenant) -> None:
    browsers = [Browser(server, login(server, tenant["owner"])) for _ in range(3)]
    viewer = Browser(server, login(server, tenant["viewer"]))
    assert browsers[0].request("POST", "/api/auth/logout-everywhere").status_code == 204
    for browser in browsers:
        assert browser.request("GET", "/api/auth/session").status_code == 401
    assert viewer.request("GET", "/api/auth/session").status_code == 200


@pytest.mark.parametrize(
    "csrf, headers",
    [
        (None, {}),  # no token
        ("not-the-token", {}),
        ("", {"Origin": "https://evil.example"}),
        ("", {"Origin": "null"}),
    ],
    ids=["missing", "wrong", "foreign-origin", "null-origin"],
)
def test_a_cookie_write_without_csrf_proof_is_forbidden(
    server: Server, tenant, csrf: str | None, headers: dict[str, str]
) -> None:
    browser = Browser(server, login(server, tenant["owner"]))
    refused = browser.request(
        "POST", "/api/personas", csrf=csrf, headers=headers, json={"name": "Forged"}
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "auth.forbidden"
    names = [p["name"] for p in browser.request("GET", "/api/personas").json()["items"]]
    assert "Forged" not in names


def test_fetch_metadata_stands_for_a_missing_origin(server: Server, tenant) -> None:
    browser = Browser(server, login(server, tenant["owner"]))
    cookie = {"Cookie": f"{COOKIE}={browser.cookie}", "X-CSRF-Token": browser.csrf}
    url = f"{server.base_url}/api/auth/logout"
    assert httpx.post(url, headers=cookie).status_code == 403
    assert httpx.post(url, headers={**cookie, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert httpx.post(url, headers={**cookie, "Sec-Fetch-Site": "same-origin"}).status_code == 204


def test_a_browser_session_uses_the_same_routes_as_an_api_key(server: Server, tenant) -> None:
    browser = Browser(server, login(server, tenant["owner"]))
    made = browser.request("POST", "/api/personas", json={"name": "Made in the dashboard"})
    assert made.status_code == 201, made.text
    listed = httpx.get(f"{server.base_url}/api/personas", headers={"X-Api-Key": tenant["key"]})
    assert "Made in the dashboard" in [p["name"] for p in listed.json()["items"]]
    assert browser.request("GET", "/api/knowledge/docs").status_code == 200
    # A key wins over a cookie: no CSRF asked of it, as before.
    with_key = httpx.post(
        f"{server.base_url}/api/personas",
        headers={"X-Api-Key": tenant["key"], "Cookie": f"{COOKIE}={browser.cookie}"},
        json={"name": "Made with the key"},
    )
    assert with_key.status_code == 201
    assert httpx.get(f"{server.base_url}/api/personas").status_code == 401


def test_a_viewer_reads_but_its_writes_are_refused(server: Server, tenant) -> None:
    viewer = Browser(server, login(server, tenant["viewer"]))
    assert viewer.request("GET", "/api/personas").status_code == 200
    refused = viewer.request("POST", "/api/personas", json={"name": "By a viewer"})
    assert refused.status_code == 403
    assert refused.json()["code"] == "auth.forbidden"
    assert viewer.request("POST", "/api/auth/logout").status_code == 204


def test_unknown_email_and_wrong_password_get_the_same_answer(server: Server, tenant) -> None:
    answers = [
        login(server, f"nobody-{secrets.token_hex(3)}@example.com"),
        login(server, tenant["owner"], "the wrong password"),
        login(server, "not an email"),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert "set-cookie" not in answer.headers
    bodies = [
        {k: v for k, v in a.json().items() if k not in ("instance", "traceId")} for a in answers
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["code"] == "auth.invalid_credentials"


def test_a_sign_in_from_another_site_is_refused(server: Server, tenant) -> None:
    refused = login(server, tenant["owner"], Origin="https://evil.example")
    assert refused.status_code == 403 and refused.json()["code"] == "auth.forbidden"


def test_a_set_password_link_works_once(server: Server, tenant) -> None:
    email = f"once-{secrets.token_hex(3)}@example.com"
    token = invite(server, tenant["name"], email, "admin")
    assert login(server, email).status_code == 401  # invited, no password yet
    assert set_password(server, token).status_code == 204
    again = set_password(server, token, "another long passphrase")
    assert again.status_code == 400 and again.json()["code"] == "validation.failed"
    assert login(server, email).status_code == 200
    assert login(server, email, "another long passphrase").status_code == 401


@pytest.mark.parametrize("password", ["password123", "Qwertyuiop", "short", "x" * 129])
def test_common_short_and_long_passwords_are_refused(server: Server, tenant, password) -> None:
    email = f"weak-{secrets.token_hex(3)}@example.com"
    token = invite(server, tenant["name"], email)
    refused = set_password(server, token, password)
    assert refused.status_code == 400
    assert "password" in refused.json()["errors"]
    # A refused password does not spend the link.
    assert set_password(server, token).status_code == 204


def test_a_reset_link_voids_the_older_and_ends_sessions(server: Server, tenant) -> None:
    email = f"reset-{secrets.token_hex(3)}@example.com"
    first = invite(server, tenant["name"], email)
    reset = server.cli("users", "reset", "--account", tenant["name"], "--email", email)
    second = reset.stdout.splitlines()[-1].partition("#token=")[2]
    assert set_password(server, first).status_code == 400
    assert set_password(server, second).status_code == 204
    browser = Browser(server, login(server, email))
    third = server.cli("users", "reset", "--account", tenant["name"], "--email", email)
    token = third.stdout.splitlines()[-1].partition("#token=")[2]
    assert set_password(server, token, "a brand new passphrase").status_code == 204
    assert browser.request("GET", "/api/auth/session").status_code == 401


def test_disabling_a_user_ends_its_sessions(server: Server, tenant) -> None:
    email = f"gone-{secrets.token_hex(3)}@example.com"
    assert set_password(server, invite(server, tenant["name"], email)).status_code == 204
    browser = Browser(server, login(server, email))
    listed = server.cli("users", "list", "--account", tenant["name"])
    assert email in listed.stdout
    done = server.cli("users", "disable", "--account", tenant["name"], "--email", email)
    assert done.returncode == 0, done.stderr
    assert browser.request("GET", "/api/personas").status_code == 401
    assert login(server, email).status_code == 401
    assert (
        server.cli("users", "enable", "--account", tenant["name"], "--email", email).returncode == 0
    )
    assert login(server, email).status_code == 200


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with short sign-ins and tight login windows; it believes X-Forwarded-For from
    127.0.0.1, so that each test signs in from IPs of its own."""
    running = Server(
        tmp_path_factory.mktemp("strict") / "data",
        RAPPORT_DASHBOARD_IDLE_SECONDS="1",
        RAPPORT_DASHBOARD_LOGIN_IP_RPM="5",
        RAPPORT_DASHBOARD_LOGIN_EMAIL_RPM="2",
        RAPPORT_FORWARDED_ALLOW_IPS="127.0.0.1",
    ).start()
    running.new_tenant("strict")
    assert (
        set_password(running, invite(running, "strict", "owner@strict.example")).status_code == 204
    )
    yield running
    running.retire()


def test_logins_are_throttled_per_email_and_per_ip_without_a_lockout(strict: Server) -> None:
    owner = "owner@strict.example"
    stranger = {"X-Forwarded-For": "198.51.100.7"}
    assert [login(strict, owner, "guess one", **stranger).status_code for _ in range(2)] == [
        401
    ] * 2
    throttled = login(strict, owner, PASSWORD, **stranger)  # even the right password
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["code"] == "limits.rate_exceeded"
    # The owner, elsewhere, is not locked out by the stranger's guesses.
    assert login(strict, owner, **{"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    # Per IP: other emails from the stranger's IP run out at 5 attempts in all.
    others = [login(strict, f"u{n}@strict.example", **stranger).status_code for n in range(3)]
    assert others == [401, 401, 429]


def test_an_idle_session_ends(strict: Server) -> None:
    browser = Browser(
        strict, login(strict, "owner@strict.example", **{"X-Forwarded-For": "192.0.2.1"})
    )
    assert browser.request("GET", "/api/auth/session").status_code == 200
    time.sleep(1.3)  # RAPPORT_DASHBOARD_IDLE_SECONDS=1
    assert browser.request("GET", "/api/auth/session").status_code == 401


async def test_sign_ins_end_when_idle_and_at_their_absolute_lifetime(redis, tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    store = SignInStore(redis, idle_seconds=60, max_seconds=300, clock=clock)
    busy, _ = await store.start("u1", "acct", "a@example.com", "owner")
    idle, _ = await store.start("u1", "acct", "a@example.com", "owner")
    for _ in range(5):  # used every 50 s: never idle, yet ends 300 s after it began
        clock.now += 50
        await store.get(busy)
    with pytest.raises(SignedOut):
        await store.get(idle)  # unused for 250 s
    clock.now += 50
    with pytest.raises(SignedOut):
        await store.get(busy)
    assert await redis.scard("rapport:{acct:acct}:dashboard_user:u1:signins") == 0


def test_sign_ins_and_user_changes_are_audited(server: Server, tenant) -> None:
    """Logins (and failed ones of a known user) and the CLI's user changes are in the
    account's audit log, with who, what, the user as target and the IP."""
    email = f"audited-{secrets.token_hex(3)}@example.com"
    name = tenant["name"]
    assert set_password(server, invite(server, name, email)).status_code == 204
    assert login(server, email, "the wrong password").status_code == 401
    signed_in = login(server, email)
    assert signed_in.status_code == 200, signed_in.text
    for action in ("disable", "enable", "reset"):
        done = server.cli("users", action, "--account", name, "--email", email)
        assert done.returncode == 0, done.stderr

    async def read() -> list:
        state = state_of(server)
        try:
            page = await AuditLog(state).page(signed_in.json()["account"], AuditQuery(limit=200))
        finally:
            await state.aclose()
        return [entry for entry in page.items if entry.target == email]

    mine = list(reversed(asyncio.run(read())))
    user_id = signed_in.json()["user_id"]
    assert [(e.action, e.actor) for e in mine] == [
        ("user.created", "cli"),
        ("login.failed", f"user:{user_id}"),
        ("login.succeeded", f"user:{user_id}"),
        ("user.disabled", "cli"),
        ("user.enabled", "cli"),
        ("user.password_reset", "cli"),
    ]
    assert [e.ip for e in mine[1:3]] == ["127.0.0.1", "127.0.0.1"]
    assert all(PASSWORD not in msgspec.json.encode(e).decode() for e in mine)


async def test_a_browser_keeps_the_secure_cookie_on_127_0_0_1(
    browser: Chromium, server: Server, tenant
) -> None:
    """The README's TLS note: Debian's chromium stores the `__Host-` cookie from plain http on
    127.0.0.1 and sends it back, so the dashboard signs in there without TLS."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{server.base_url}/")  # a page of the server's own origin
        signed_in = await page.evaluate(
            """async ([email, password]) => {
                const login = await fetch('/api/auth/login', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({email, password})});
                const session = await fetch('/api/auth/session');
                return [login.status, session.status, (await session.json()).user];
            }""",
            [tenant["owner"], PASSWORD],
        )
    finally:
        await context.close()
    assert signed_in == [200, 200, tenant["owner"]]


def test_passwords_are_hashed_at_the_lowest_cpu_priority() -> None:
    """A burst of sign-ins must not take the cores from turns (BENCHMARKS.md, "Logins per
    second against turns"): the hashing threads, and the lane threads Argon2 starts from
    them, run at nice 19."""

    def priorities() -> tuple[int, int]:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen: list[int] = []
        lane = threading.Thread(
            target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        )
        lane.start()
        lane.join()
        return own, seen[0]

    assert hashing_pool().submit(priorities).result() == (LOWEST_PRIORITY, LOWEST_PRIORITY)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < LOWEST_PRIORITY


async def test_no_write_to_a_user_undoes_a_change_made_meanwhile(
    redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every write to a user record is a read-modify-write under WATCH (UserStore._update):
    # one that wrote back a copy read before a disable would enable the user again.
    users = UserStore(redis, SignInStore(redis, idle_seconds=60, max_seconds=300))
    made, _ = await users.create("acct-race", "race@example.com", "admin")

    async def now() -> User:
        return await users.get("acct-race", made.id)

    # A reset link issued from a copy read before the user was disabled.
    await users.set_disabled(made, True)
    token = await users.issue_link(made)
    assert (await now()).disabled and (await now()).link_digest

    # A password set while an owner disables the user (during the hashing, which is slow).
    await users.set_disabled(made, False)
    token = await users.issue_link(made)
    real = users._in_thread
    raced: list[str] = []

    async def race(work: Callable[..., object], *args: str) -> object:
        if work == HASHER.hash and not raced:
            raced.append("disabled")
            await users.set_disabled(await now(), True)
        return await real(work, *args)

    monkeypatch.setattr(users, "_in_thread", race)
    await users.set_password(token, PASSWORD)
    after = await now()
    assert raced and after.disabled and after.password_hash and not after.link_digest

    # A hash upgraded at sign-in while the password is changed: the new password stays.
    await users.set_disabled(after, False)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    await redis.hset(
        keyspace.AccountKeys("acct-race").users,
        made.id,
        msgspec.json.encode(msgspec.structs.replace(await now(), password_hash=weak)),
    )
    token = await users.issue_link(made)
    raced.clear()

    async def change_password(work: Callable[..., object], *args: str) -> object:
        if work == HASHER.hash and not raced:
            raced.append("changed")
            await users.set_password(token, "another long passphrase")
        return await real(work, *args)

    monkeypatch.setattr(users, "_in_thread", change_password)
    await users.authenticate("race@example.com", PASSWORD)
    assert raced
    final = (await now()).password_hash
    assert final != weak and HASHER.verify(final, "another long passphrase")
