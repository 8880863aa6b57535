"""An owner manages the account's dashboard users from the dashboard (issue 23, items 1-3):
role changes and disabling end the user's sessions at once, the last owner stays one, a
reset link replaces the old; and a password asked again before a key is shown is counted
with the sign-ins (429 once spent). Against a real ``rapport serve``; the sign-in helpers
are test_signin's and test_account_routes'."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server
from tests.test_account_routes import signed_up, with_key
from tests.test_signin import PASSWORD, Browser, login, set_password

EMAIL_RPM = 3
"""Sign-in attempts a minute per email (RAPPORT_DASHBOARD_LOGIN_EMAIL_RPM): each test's
users sign in at most this often; the throttling test spends it."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(
        tmp_path_factory.mktemp("account-users") / "data",
        RAPPORT_DASHBOARD_LOGIN_EMAIL_RPM=str(EMAIL_RPM),
    ).start()
    yield running
    running.retire()


class Account:
    """A new account, its primary key and its owner, signed in."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.name = f"team-{secrets.token_hex(3)}"
        self.key = server.new_tenant(self.name)
        self.owner = signed_up(server, self.name, self.email("owner"), "owner")

    def email(self, who: str) -> str:
        return f"{who}@{self.name}.example"

    def invite(self, who: str, role: str) -> tuple[str, str]:
        """``who`` invited by the owner: its id and its set-password link's token."""
        made = self.owner.request(
            "POST", "/api/account/users", json={"email": self.email(who), "role": role}
        )
        assert made.status_code == 201, made.text
        return made.json()["user"]["id"], made.json()["set_password_link"].partition("#token=")[2]

    def join(self, who: str, role: str) -> tuple[str, Browser]:
        """``who`` invited, its password set, signed in."""
        user_id, token = self.invite(who, role)
        assert set_password(self.server, token).status_code == 204
        return user_id, Browser(self.server, login(self.server, self.email(who)))

    def patch(self, user_id: str, **change: object) -> httpx.Response:
        return self.owner.request("PATCH", f"/api/account/users/{user_id}", json=change)

    def audited(self, action: str) -> list[dict]:
        entries = self.owner.request("GET", "/api/account/audit?limit=200").json()["items"]
        return [e for e in entries if e["action"] == action]


def signed_out(browser: Browser) -> bool:
    return browser.request("GET", "/api/auth/session").status_code == 401


def test_a_role_change_takes_the_users_powers_at_once(server: Server) -> None:
    team = Account(server)
    admin_id, admin = team.join("admin", "admin")
    assert admin.request("PATCH", "/api/account", json={"allowed_origins": []}).is_success
    changed = team.patch(admin_id, role="viewer")
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        **changed.json(),
        "id": admin_id,
        "email": team.email("admin"),
        "role": "viewer",
        "status": "active",
    }
    # The open tab signed in as an admin is signed out; signed in again, it is a viewer.
    assert signed_out(admin)
    assert admin.request("PATCH", "/api/account", json={"allowed_origins": []}).status_code == 401
    viewer = Browser(server, login(server, team.email("admin")))
    assert viewer.request("GET", "/api/auth/session").json()["role"] == "viewer"
    refused = viewer.request("PATCH", "/api/account", json={"allowed_origins": []})
    assert refused.status_code == 403
    [entry] = team.audited("user.role_changed")
    assert (entry["target"], entry["detail"]) == (
        team.email("admin"),
        {"from": "admin", "to": "viewer"},
    )
    assert entry["actor"].startswith("user:") and entry["actor"] != f"user:{admin_id}"
    # The same role again changes nothing: no entry, the sessions live on.
    assert team.patch(admin_id, role="viewer").json()["role"] == "viewer"
    assert not signed_out(viewer) and len(team.audited("user.role_changed")) == 1


def test_a_disabled_user_is_signed_out_until_enabled(server: Server) -> None:
    team = Account(server)
    viewer_id, viewer = team.join("viewer", "viewer")
    disabled = team.patch(viewer_id, disabled=True)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["status"] == "disabled"
    assert signed_out(viewer)
    assert login(server, team.email("viewer")).status_code == 401
    enabled = team.patch(viewer_id, disabled=False)
    assert enabled.json()["status"] == "active" and enabled.json()["role"] == "viewer"
    assert login(server, team.email("viewer")).status_code == 200
    for action in ("user.disabled", "user.enabled"):
        assert [e["target"] for e in team.audited(action)] == [team.email("viewer")]


def test_the_last_owner_who_can_sign_in_stays_an_owner(server: Server) -> None:
    team = Account(server)
    me = team.owner.request("GET", "/api/auth/session").json()["user_id"]
    for change in ({"role": "admin"}, {"disabled": True}, {"role": "viewer", "disabled": True}):
        refused = team.patch(me, **change)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "resource.conflict"
    # An owner who has not set a password yet cannot sign in: the rule still holds.
    second_id, token = team.invite("second", "owner")
    assert team.patch(me, role="admin").status_code == 409
    assert not signed_out(team.owner)
    assert team.patch(second_id, role="viewer").status_code == 200  # not the last owner
    assert team.patch(second_id, role="owner").status_code == 200
    assert set_password(server, token).status_code == 204
    # Two owners now: either may step down, and the one who did is signed out.
    stepped = team.patch(me, role="admin")
    assert stepped.status_code == 200, stepped.text
    assert stepped.json()["role"] == "admin"
    assert signed_out(team.owner)
    second = Browser(server, login(server, team.email("second")))
    itself = second.request("PATCH", f"/api/account/users/{second_id}", json={"disabled": True})
    assert itself.status_code == 409
    # An admin manages no users.
    admin = Browser(server, login(server, team.email("owner")))
    promoted = admin.request("PATCH", f"/api/account/users/{me}", json={"role": "owner"})
    assert promoted.status_code == 403
    assert admin.request("POST", f"/api/account/users/{second_id}/reset").status_code == 403
    # The host's operator may still disable the last owner (a stolen one) from the CLI.
    cli = server.cli("users", "disable", "--account", team.name, "--email", team.email("second"))
    assert cli.returncode == 0, cli.stderr
    assert signed_out(second)


def test_a_reset_link_replaces_the_old_one(server: Server) -> None:
    team = Account(server)
    user_id, token = team.invite("late", "admin")
    reset = team.owner.request("POST", f"/api/account/users/{user_id}/reset")
    assert reset.status_code == 200, reset.text
    assert reset.headers["cache-control"] == "no-store"
    assert reset.json()["user"] == {**reset.json()["user"], "id": user_id, "status": "invited"}
    link = reset.json()["set_password_link"]
    assert link.startswith(f"{server.base_url}/dashboard/set-password#token=")
    fresh = link.partition("#token=")[2]
    assert fresh != token
    assert set_password(server, token).status_code == 400  # the older link is void
    assert set_password(server, fresh).status_code == 204
    # As `rapport users reset`: the password and the sessions last until the link is used.
    user = Browser(server, login(server, team.email("late")))
    again = team.owner.request("POST", f"/api/account/users/{user_id}/reset").json()
    assert not signed_out(user)
    new_password = "another long passphrase"
    assert (
        set_password(
            server, again["set_password_link"].partition("#token=")[2], new_password
        ).status_code
        == 204
    )
    assert signed_out(user)
    assert login(server, team.email("late"), new_password).status_code == 200
    assert [e["target"] for e in team.audited("user.password_reset")] == [team.email("late")] * 2


def test_a_user_id_that_names_no_user_of_the_account_is_404(server: Server) -> None:
    team, other = Account(server), Account(server)
    theirs = other.owner.request("GET", "/api/auth/session").json()["user_id"]
    for user_id in (":", "abc:docs", "x" * 65, "%0A", "a1b2c3d4e5f6", theirs):
        for method, path in (("PATCH", ""), ("POST", "/reset")):
            answer = team.owner.request(
                method, f"/api/account/users/{user_id}{path}", json={"role": "owner"}
            )
            assert answer.status_code == 404, (user_id, answer.text)
            assert answer.json()["code"] == "resource.not_found"
    # Their owner is untouched, and an API key is refused on the new routes.
    assert not signed_out(other.owner)
    for method, path in (("PATCH", ""), ("POST", "/reset")):
        refused = with_key(server, team.key, method, f"/api/account/users/{theirs}{path}", {})
        assert refused.status_code == 403 and refused.json()["code"] == "auth.forbidden"


def test_passwords_asked_again_count_with_the_sign_ins(server: Server) -> None:
    team = Account(server)  # one sign-in of EMAIL_RPM spent
    guesses = [
        team.owner.request(
            "POST", "/api/account/api-keys", json={"slot": "secondary", "password": "guess one"}
        ),
        team.owner.request(
            "POST", "/api/account/api-keys/primary/regenerate", json={"password": "guess two"}
        ),
    ]
    assert [g.status_code for g in guesses] == [403] * (EMAIL_RPM - 1)
    # The window is spent: even the right password is refused, with the time to wait.
    throttled = team.owner.request(
        "POST", "/api/account/api-keys", json={"slot": "secondary", "password": PASSWORD}
    )
    assert throttled.status_code == 429, throttled.text
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["code"] == "limits.rate_exceeded"
    assert "key" not in throttled.json()
    # One window: the sign-in form is spent too, and the session itself lives on.
    assert login(server, team.email("owner")).status_code == 429
    assert not signed_out(team.owner)
    assert [
        s["slot"] for s in team.owner.request("GET", "/api/account/api-keys").json()["items"]
    ] == ["primary"]
