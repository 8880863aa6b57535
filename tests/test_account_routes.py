"""The restricted routes ``/api/account/…`` (issue 23 item 3; seed 000): a browser session
only, roles, keys shown once, re-asked passwords, audit entries. Against a real ``rapport
serve``; the sign-in helpers are test_signin's."""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

from tests.conftest import Server
from tests.test_signin import PASSWORD, Browser, invite, login, set_password

KEY = re.compile(r"rk_live_[A-Za-z0-9]{44}")

ROUTES = [
    ("GET", "/api/account", None),
    ("PATCH", "/api/account", {"allowed_origins": []}),
    ("GET", "/api/account/api-keys", None),
    ("POST", "/api/account/api-keys", {"slot": "secondary", "password": PASSWORD}),
    ("PATCH", "/api/account/api-keys/primary", {"disabled": True}),
    ("POST", "/api/account/api-keys/primary/regenerate", {"password": PASSWORD}),
    ("DELETE", "/api/account/api-keys/primary", None),
    ("GET", "/api/account/usage", None),
    ("GET", "/api/account/users", None),
    ("POST", "/api/account/users", {"email": "x@example.com", "role": "viewer"}),
    ("PATCH", "/api/account/users/someone", {"role": "viewer"}),
    ("POST", "/api/account/users/someone/reset", None),
    ("GET", "/api/account/audit", None),
]


def signed_up(server: Server, name: str, email: str, role: str) -> Browser:
    """A user of the account ``name`` invited with the CLI, password set, signed in."""
    assert set_password(server, invite(server, name, email, role)).status_code == 204
    return Browser(server, login(server, email))


@pytest.fixture(scope="module")
def tenant(server: Server) -> dict:
    """An account with its primary key, an owner, and an admin and a viewer the owner
    invited from the dashboard (``POST /api/account/users``)."""
    name = f"acct-{secrets.token_hex(3)}"
    key = server.new_tenant(name)
    owner = signed_up(server, name, f"owner@{name}.example", "owner")
    browsers = {"owner": owner}
    for role in ("admin", "viewer"):
        email = f"{role}@{name}.example"
        made = owner.request("POST", "/api/account/users", json={"email": email, "role": role})
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        link = made.json()["set_password_link"]
        assert link.startswith(f"{server.base_url}/dashboard/set-password#token=")
        assert set_password(server, link.partition("#token=")[2]).status_code == 204
        browsers[role] = Browser(server, login(server, email))
    return {"name": name, "key": key, **browsers}


def with_key(server: Server, key: str, method: str, path: str, body: object) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", headers={"X-Api-Key": key}, json=body)


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_an_api_key_is_forbidden_on_every_restricted_route(
    server: Server, tenant, method: str, path: str, body: object
) -> None:
    refused = with_key(server, tenant["key"], method, path, body)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "auth.forbidden"
    # Another case matches no route (Starlette routes case-sensitively): 404, never served.
    for variant in (path.upper(), path.replace("/api/account", "/API/Account")):
        assert with_key(server, tenant["key"], method, variant, body).status_code == 404
    # A trailing slash is at most redirected to the route, which refuses the key.
    slashed = with_key(server, tenant["key"], method, f"{path}/", body)
    assert slashed.status_code in (307, 403, 404), slashed.text
    if slashed.status_code == 307:
        assert slashed.headers["location"] == f"{server.base_url}{path}"
        assert with_key(server, tenant["key"], method, path, body).status_code == 403
    # The key was refused, not spent: it still works where keys belong.
    assert with_key(server, tenant["key"], "GET", "/api/subscription/limits", None).is_success


def everything(browser: Browser) -> str:
    """What the dashboard can read back: every list and the audit log."""
    return " ".join(
        browser.request("GET", path).text
        for path in (
            "/api/account",
            "/api/account/api-keys",
            "/api/account/users",
            "/api/account/audit?limit=200",
        )
    )


def test_a_key_is_shown_once_after_the_password_and_then_works(server: Server, tenant) -> None:
    owner: Browser = tenant["owner"]
    wrong = owner.request(
        "POST",
        "/api/account/api-keys",
        json={"slot": "secondary", "label": "CRM", "password": "not the password"},
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "auth.forbidden"
    assert owner.request("GET", "/api/account/api-keys").json()["items"][0]["slot"] == "primary"
    made = owner.request(
        "POST",
        "/api/account/api-keys",
        json={"slot": "secondary", "label": "CRM", "password": PASSWORD},
    )
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    key = made.json()["key"]
    assert KEY.fullmatch(key)
    assert made.json()["slot"]["hint"] == f"rk_live_…{key[-4:]}"
    assert made.json()["slot"]["created_by"].startswith("user:")
    assert httpx.get(f"{server.base_url}/api/personas", headers={"X-Api-Key": key}).is_success
    seen = everything(owner)
    assert key not in seen and key[len("rk_live_") :] not in seen
    assert not KEY.search(seen)

    wrong = owner.request(
        "POST", "/api/account/api-keys/secondary/regenerate", json={"password": "nope nope"}
    )
    assert wrong.status_code == 403
    again = owner.request(
        "POST", "/api/account/api-keys/secondary/regenerate", json={"password": PASSWORD}
    )
    assert again.status_code == 200, again.text
    assert again.headers["cache-control"] == "no-store"
    new = again.json()["key"]
    assert new != key and again.json()["slot"]["label"] == "CRM"
    assert (
        httpx.get(f"{server.base_url}/api/personas", headers={"X-Api-Key": key}).status_code == 401
    )
    assert httpx.get(f"{server.base_url}/api/personas", headers={"X-Api-Key": new}).is_success
    assert new not in everything(owner) and not KEY.search(everything(owner))


def test_disable_relabel_and_delete_a_slot(server: Server, tenant) -> None:
    admin: Browser = tenant["admin"]
    made = admin.request(
        "POST", "/api/account/api-keys", json={"slot": "secondary", "password": PASSWORD}
    )
    if made.status_code == 409:  # filled by another test of this module
        made = admin.request(
            "POST", "/api/account/api-keys/secondary/regenerate", json={"password": PASSWORD}
        )
    assert made.is_success, made.text
    key = made.json()["key"]
    headers = {"X-Api-Key": key}
    changed = admin.request(
        "PATCH", "/api/account/api-keys/secondary", json={"disabled": True, "label": "old CRM"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["disabled"] is True and changed.json()["label"] == "old CRM"
    assert httpx.get(f"{server.base_url}/api/personas", headers=headers).status_code == 401
    enabled = admin.request("PATCH", "/api/account/api-keys/secondary", json={"disabled": False})
    assert enabled.json()["disabled"] is False
    assert httpx.get(f"{server.base_url}/api/personas", headers=headers).is_success
    assert admin.request("DELETE", "/api/account/api-keys/secondary").status_code == 204
    assert httpx.get(f"{server.base_url}/api/personas", headers=headers).status_code == 401
    slots = [s["slot"] for s in admin.request("GET", "/api/account/api-keys").json()["items"]]
    assert slots == ["primary"]
    assert admin.request("DELETE", "/api/account/api-keys/secondary").status_code == 404
    assert admin.request("DELETE", "/api/account/api-keys/tertiary").status_code == 404


def test_the_audit_log_has_each_change_with_its_user(server: Server, tenant) -> None:
    owner: Browser = tenant["owner"]
    origin = f"https://{secrets.token_hex(3)}.example"
    patched = owner.request("PATCH", "/api/account", json={"allowed_origins": [origin]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["plan"]["allowed_origins"] == [origin]
    test_disable_relabel_and_delete_a_slot(server, tenant)
    entries = owner.request("GET", "/api/account/audit?limit=200").json()["items"]
    done = {(e["action"], e["target"]) for e in entries if e["actor"].startswith("user:")}
    name = tenant["name"]
    assert {
        ("user.created", f"admin@{name}.example"),
        ("user.created", f"viewer@{name}.example"),
        ("settings.origins_changed", owner.request("GET", "/api/account").json()["id"]),
        ("key.disabled", "secondary"),
        ("key.enabled", "secondary"),
        ("key.relabeled", "secondary"),
        ("key.deleted", "secondary"),
    } <= done
    assert all(e["ip"] == "127.0.0.1" for e in entries if e["actor"].startswith("user:"))
    assert owner.request("PATCH", "/api/account", json={"allowed_origins": []}).is_success


def test_the_plan_is_not_editable_and_usage_is_the_accounts(server: Server, tenant) -> None:
    owner: Browser = tenant["owner"]
    plan = owner.request("PATCH", "/api/account", json={"allowed_origins": [], "plan": {}})
    assert plan.status_code == 400
    usage = owner.request("GET", "/api/account/usage")
    limits = with_key(server, tenant["key"], "GET", "/api/subscription/limits", None)
    assert usage.status_code == 200 and usage.json()["usage"] == limits.json()["usage"]


@pytest.mark.parametrize("method, path, body", [r for r in ROUTES if r[0] != "GET"])
def test_a_viewers_writes_are_refused(server: Server, tenant, method, path, body) -> None:
    refused = tenant["viewer"].request(method, path, json=body)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "auth.forbidden"


def test_a_viewer_reads_and_only_an_owner_manages_users(server: Server, tenant) -> None:
    viewer, admin = tenant["viewer"], tenant["admin"]
    for method, path, _ in ROUTES:
        if method == "GET" and path != "/api/account/users":
            assert viewer.request(method, path).status_code == 200, path
    assert viewer.request("GET", "/api/account/users").status_code == 403
    assert admin.request("GET", "/api/account/users").status_code == 403
    invited = admin.request(
        "POST", "/api/account/users", json={"email": "no@example.com", "role": "owner"}
    )
    assert invited.status_code == 403
    listed = tenant["owner"].request("GET", "/api/account/users").json()["items"]
    assert {(u["role"], u["status"]) for u in listed} == {
        ("owner", "active"),
        ("admin", "active"),
        ("viewer", "active"),
    }


def test_another_accounts_data_is_unreachable(server: Server, tenant) -> None:
    name = f"other-{secrets.token_hex(3)}"
    server.new_tenant(name)
    other = signed_up(server, name, f"owner@{name}.example", "owner")
    assert other.request("GET", "/api/account").json()["name"] == name
    seen = everything(other)
    assert tenant["name"] not in seen and f"rk_live_…{tenant['key'][-4:]}" not in seen
    assert other.request("DELETE", "/api/account/api-keys/secondary").status_code == 404
    # The tenant's key slot is untouched by the other owner's writes.
    assert with_key(server, tenant["key"], "GET", "/api/personas", None).is_success


@pytest.mark.parametrize("change", ["disable", "regenerate", "delete"])
def test_revoking_a_slot_ends_the_sessions_its_key_minted(server: Server, change: str) -> None:
    name = f"revoke-{secrets.token_hex(3)}"
    primary = server.new_tenant(name)
    owner = signed_up(server, name, f"owner@{name}.example", "owner")
    made = owner.request(
        "POST", "/api/account/api-keys", json={"slot": "secondary", "password": PASSWORD}
    )
    assert made.status_code == 201, made.text
    body = {"user_id": "visitor", "mode": "chat"}
    minted = [
        with_key(server, key, "POST", "/api/sessions", body).json()["session_id"]
        for key in (made.json()["key"], primary)
    ]
    slot = "/api/account/api-keys/secondary"
    done = {
        "disable": lambda: owner.request("PATCH", slot, json={"disabled": True}),
        "regenerate": lambda: owner.request(
            "POST", f"{slot}/regenerate", json={"password": PASSWORD}
        ),
        "delete": lambda: owner.request("DELETE", slot),
    }[change]()
    assert done.is_success, done.text
    states = [
        with_key(server, primary, "GET", f"/api/sessions/{sid}", None).json() for sid in minted
    ]
    assert (states[0]["status"], states[0]["ended_code"]) == ("ended", 4001)
    assert states[1]["status"] == "ready"  # the other slot's session lives on
