"""/api/sessions against a real ``rapport serve``: minting and its checks in order, the
ws_url, listing, showing and ending sessions, and another account's sessions being 404."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import Server

SESSIONS = "/api/sessions"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(server: Server):
    key = server.new_tenant(unique("sessions"))
    with server.client(headers={"X-Api-Key": key}) as http:
        yield http


def problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code, body
    return body


def test_minting_answers_the_token_socket_and_budget(server: Server, client: httpx.Client) -> None:
    before = datetime.now(UTC)
    response = client.post(SESSIONS, json={"user_id": "usr-42", "mode": "chat"})
    assert response.status_code == 201, response.text
    minted = response.json()
    assert set(minted) == {
        "status", "session_id", "token", "ws_url", "expires_at", "mode", "budget",
        "starter_prompts",
    }  # fmt: skip
    assert (minted["status"], minted["mode"]) == ("ready", "chat")
    assert minted["budget"] == {"interactions_left": None, "seconds_left": 3600}
    expires = datetime.fromisoformat(minted["expires_at"])
    assert before + timedelta(seconds=59) < expires < datetime.now(UTC) + timedelta(seconds=61)
    url = urlsplit(minted["ws_url"])
    assert (url.scheme, url.netloc) == ("ws", f"127.0.0.1:{server.port}")
    assert url.path == f"/api/sessions/{minted['session_id']}/socket"
    assert parse_qs(url.query) == {"token": [minted["token"]]}
    assert minted["token"].split(".")[1] == minted["session_id"]

    # On another host name, the socket is there too. (Behind a TLS proxy named in
    # RAPPORT_FORWARDED_ALLOW_IPS it is wss://: tests/test_security_headers.py.)
    proxied = client.post(
        SESSIONS, json={"user_id": "u", "mode": "chat"}, headers={"Host": "chat.example.com"}
    ).json()
    assert proxied["ws_url"].startswith(
        f"ws://chat.example.com/api/sessions/{proxied['session_id']}/socket?token="
    )


def test_sessions_are_listed_shown_and_ended(client: httpx.Client) -> None:
    persona = client.post(
        "/api/personas",
        json={"name": "Nora", "publishSettings": {"sessionInteractionLimit": 40,
                                                  "sessionDurationLimitSeconds": 900}},
    ).json()  # fmt: skip
    first = client.post(SESSIONS, json={"user_id": "u1", "mode": "chat"}).json()
    second = client.post(
        SESSIONS, json={"user_id": "u2", "mode": "full", "persona_id": persona["id"]}
    ).json()
    assert second["budget"] == {"interactions_left": 40, "seconds_left": 900}

    listing = client.get(SESSIONS)
    assert listing.status_code == 200
    page = listing.json()
    assert page["total_count"] == 2
    assert [s["session_id"] for s in page["items"]] == [first["session_id"], second["session_id"]]
    shown = page["items"][1]
    assert set(shown) == {
        "session_id", "user_id", "persona_id", "mode", "created_at", "connected_at",
        "expires_at", "budget", "status",
    }  # fmt: skip
    assert (shown["user_id"], shown["persona_id"], shown["mode"]) == ("u2", persona["id"], "full")
    assert shown["connected_at"] is None and shown["expires_at"] == second["expires_at"]
    assert first["token"] not in listing.text and second["token"] not in listing.text

    one = client.get(f"{SESSIONS}/{second['session_id']}")
    assert one.status_code == 200
    assert shown["status"] == "ready"
    assert one.json() == {**shown, "ended_code": None}
    assert second["token"] not in one.text

    assert client.delete(f"{SESSIONS}/{second['session_id']}").status_code == 204
    ended = client.get(f"{SESSIONS}/{second['session_id']}").json()
    assert (ended["status"], ended["ended_code"]) == ("ended", 1000)
    assert [s["session_id"] for s in client.get(SESSIONS).json()["items"]] == [first["session_id"]]
    problem(client.delete(f"{SESSIONS}/{second['session_id']}"), 404, "resource.not_found")
    problem(client.get(f"{SESSIONS}/no-such-session"), 404, "resource.not_found")
    problem(client.delete(f"{SESSIONS}/no-such-session"), 404, "resource.not_found")


def test_another_accounts_sessions_are_not_found(server: Server, client: httpx.Client) -> None:
    minted = client.post(SESSIONS, json={"user_id": "u", "mode": "chat"}).json()
    path = f"{SESSIONS}/{minted['session_id']}"
    with server.client(headers={"X-Api-Key": server.new_tenant(unique("stranger"))}) as stranger:
        problem(stranger.get(path), 404, "resource.not_found")
        problem(stranger.delete(path), 404, "resource.not_found")
        listed = stranger.get(SESSIONS).json()
        assert (listed["items"], listed["total_count"]) == ([], 0)
    assert client.get(path).json()["status"] == "ready", "the owner's session is untouched"


def test_the_persona_must_exist_and_allow_the_mode(client: httpx.Client) -> None:
    body = {"user_id": "u", "mode": "chat", "persona_id": "0123456789ab"}
    problem(client.post(SESSIONS, json=body), 404, "resource.not_found")
    chat_only = client.post(
        "/api/personas", json={"name": "Chat", "publishSettings": {"allowedModes": ["chat"]}}
    ).json()
    refused = problem(
        client.post(SESSIONS, json={"user_id": "u", "mode": "full", "persona_id": chat_only["id"]}),
        400,
        "validation.failed",
    )
    assert "mode" in refused["errors"]
    assert client.get(SESSIONS).json()["total_count"] == 0


def test_outside_the_opening_hours_is_409(client: httpx.Client) -> None:
    # Open all day, but only three days from today (UTC): never now.
    other_day = DAYS[(datetime.now(UTC).weekday() + 3) % 7]
    closed = client.post(
        "/api/personas",
        json={"name": "Closed", "publishSettings": {"allowedModes": ["chat"],
              "availability": {"timeZone": "UTC",
                               "windows": [{"day": other_day, "start": "00:00", "end": "23:59"}]}}},
    ).json()  # fmt: skip
    body = {"user_id": "u", "mode": "chat", "persona_id": closed["id"]}
    problem(client.post(SESSIONS, json=body), 409, "limits.session_time_limit")
    # The mode is checked first (DESIGN.md: persona, mode, then the opening hours).
    problem(client.post(SESSIONS, json={**body, "mode": "full"}), 400, "validation.failed")
    assert client.get(SESSIONS).json()["total_count"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "chat"}, "user_id"),
        ({"user_id": "u" * 129, "mode": "chat"}, "user_id"),
        ({"user_id": "", "mode": "chat"}, "user_id"),
        ({"user_id": "u", "mode": "video"}, "mode"),
        ({"user_id": "u"}, "mode"),
        ({"user_id": "u", "mode": "chat", "nickname": "N"}, "nickname"),
        ({"user_id": "u", "mode": "chat", "persona_id": "a:b"}, "persona_id"),
        (b"not json", "body"),
        (b"[]", "body"),
    ],
    ids=["no user_id", "user_id of 129", "empty user_id", "mode video", "no mode",
         "unknown field", "persona_id not an id", "not json", "not an object"],
)  # fmt: skip
def test_bad_bodies_name_the_field(client: httpx.Client, body: dict | bytes, field: str) -> None:
    if isinstance(body, bytes):
        response = client.post(SESSIONS, content=body)
    else:
        response = client.post(SESSIONS, json=body)
    refused = problem(response, 400, "validation.failed")
    assert list(refused["errors"]) == [field]
    assert refused["detail"].startswith(f"{field}: ")
