"""API keys end to end: both headers, every failure code on both route families, and the
CLI key lifecycle run against the state of a running server."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Server

LIMITS = "/api/subscription/limits"
# No /api/v1/ route exists yet that needs more than a key; an authenticated caller reaching
# an unknown one gets 404, an unauthenticated one 401 first: enough to see auth decide.
V1 = "/api/v1/not-a-route"
KEY = re.compile(r"^rk_live_[A-Za-z0-9]{44}$")


def issued_key(output: str) -> str:
    keys = [line for line in output.splitlines() if KEY.match(line)]
    assert len(keys) == 1, output
    return keys[0]


def api_code(response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["code"]


def v1_code(response) -> str:
    assert response.headers["content-type"] == "application/json"
    return response.json()["detail"]["code"]


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"X-Api-Key": key},
        lambda key: {"x-api-key": key},
        lambda key: {"Authorization": f"Bearer {key}"},
        lambda key: {"Authorization": f"bearer {key}"},
        lambda key: {"X-Api-Key": key, "Authorization": "Bearer rk_live_wrong"},
    ],
    ids=["x-api-key", "lowercase-header", "bearer", "lowercase-scheme", "x-api-key-wins"],
)
def test_a_valid_key_is_accepted_in_either_header(server: Server, headers) -> None:
    with server.client(headers=headers(server.demo_key)) as client:
        assert client.get(LIMITS).status_code == 200
        assert v1_code(client.get(V1)) == "not_found"


@pytest.mark.parametrize(
    ("headers", "api", "v1"),
    [
        ({}, "auth.unauthorized", "missing_api_key"),
        ({"X-Api-Key": ""}, "auth.unauthorized", "missing_api_key"),
        ({"Authorization": "Bearer"}, "auth.unauthorized", "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "auth.unauthorized", "missing_api_key"),
        ({"X-Api-Key": "rk_live_" + "A" * 44}, "auth.api_key_invalid", "invalid_api_key"),
        ({"X-Api-Key": "pa_AbCdEfGhIjKlMnOpQrStUv"}, "auth.api_key_invalid", "invalid_api_key"),
        ({"Authorization": "Bearer " + "x" * 5000}, "auth.api_key_invalid", "invalid_api_key"),
    ],
    ids=["none", "empty", "empty-bearer", "basic", "unknown", "foreign", "huge"],
)
def test_missing_and_unknown_keys(server: Server, headers, api: str, v1: str) -> None:
    with server.client(headers=headers) as client:
        first = client.get(LIMITS)
        assert first.status_code == 401
        assert api_code(first) == api
        second = client.get(V1)
        assert second.status_code == 401
        assert v1_code(second) == v1


def test_a_key_differing_only_after_its_lookup_prefix_is_invalid(server: Server) -> None:
    key = server.demo_key
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with server.client(headers={"X-Api-Key": forged}) as client:
        assert api_code(client.get(LIMITS)) == "auth.api_key_invalid"


def test_key_lifecycle_through_the_cli_while_the_server_runs(server: Server) -> None:
    created = server.cli("accounts", "create", "acme")
    assert created.returncode == 0, created.stderr
    account_id = re.search(r"with id (\w+)", created.stdout).group(1)

    primary = issued_key(server.cli("keys", "create", "--account", "acme").stdout)
    secondary_run = server.cli("keys", "create", "--account", account_id, "--slot", "secondary")
    secondary = issued_key(secondary_run.stdout)
    assert primary != secondary

    def status(key: str) -> tuple[int, str | None]:
        with server.client(headers={"X-Api-Key": key}) as client:
            response = client.get(LIMITS)
            return response.status_code, response.json().get("code")

    def v1_status(key: str) -> str:
        with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
            return v1_code(client.get(V1))

    assert status(primary) == (200, None)
    assert status(secondary) == (200, None)

    # Disable: the slot answers auth.api_key_disabled (invalid_api_key on /api/v1/), the
    # other slot keeps working: seed 000's zero-downtime rotation.
    assert server.cli("keys", "disable", "--account", "acme", "--slot", "primary").returncode == 0
    assert status(primary) == (401, "auth.api_key_disabled")
    assert v1_status(primary) == "invalid_api_key"
    assert status(secondary) == (200, None)

    assert server.cli("keys", "enable", "--account", "acme", "--slot", "primary").returncode == 0
    assert status(primary) == (200, None)

    # Regenerate: the old key dies at once, the new one works, the other slot is untouched.
    regenerated = server.cli("keys", "regenerate", "--account", "acme", "--slot", "primary")
    new_primary = issued_key(regenerated.stdout)
    assert new_primary != primary
    assert status(primary) == (401, "auth.api_key_invalid")
    assert status(new_primary) == (200, None)
    assert status(secondary) == (200, None)

    # Regenerating a disabled slot re-enables it (seed 000's remediation for a disabled key).
    server.cli("keys", "disable", "--account", "acme", "--slot", "secondary")
    assert status(secondary) == (401, "auth.api_key_disabled")
    again = issued_key(
        server.cli("keys", "regenerate", "--account", "acme", "--slot", "secondary").stdout
    )
    assert status(again) == (200, None)
    assert status(secondary) == (401, "auth.api_key_invalid")

    listing = server.cli("accounts", "list")
    assert listing.returncode == 0
    line = next(row for row in listing.stdout.splitlines() if " acme " in row)
    assert "primary rk_live_" in line and "secondary rk_live_" in line
    assert new_primary not in listing.stdout, "a listing must never show a full key"


def test_cli_refuses_what_it_cannot_do(server: Server) -> None:
    assert server.cli("accounts", "create", "twice").returncode == 0
    duplicate = server.cli("accounts", "create", "twice")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr

    bad_name = server.cli("accounts", "create", "no spaces allowed")
    assert bad_name.returncode == 1

    unknown = server.cli("keys", "create", "--account", "nobody")
    assert unknown.returncode == 1
    assert "No account" in unknown.stderr

    server.cli("keys", "create", "--account", "twice")
    filled = server.cli("keys", "create", "--account", "twice")
    assert filled.returncode == 1
    assert "regenerate" in filled.stderr

    empty_slot = server.cli("keys", "disable", "--account", "twice", "--slot", "secondary")
    assert empty_slot.returncode == 1

    bad_setting = server.cli("accounts", "list", "--redis-timeout", "soon")
    assert bad_setting.returncode == 2
    assert "RAPPORT_REDIS_TIMEOUT" in bad_setting.stderr
