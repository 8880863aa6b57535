"""Plans and allowed origins: the CLI an operator uses, run against a real redis-server,
the origin rules, and account updates that race without losing one another."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.accounts import AccountStore, Plan, normalise_origin
from engine.errors import NotFound, ValidationFailed
from engine.state import Client
from tests.conftest import ON_BOTH, RedisServer, cli_in_process

Cli = Callable[..., subprocess.CompletedProcess[str]]
BAD_ORIGINS = ["*", "null", "ftp://x", "https://a.com/path", "https://user@a.com"]


@pytest.fixture
def operator_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """What ``rapport`` runs with here: the test's redis-server, and an account, ``shop``,
    made in this process (setup: a ``rapport`` subprocess is ~0.7 s a command)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env |= {"RAPPORT_REDIS_URL": redis_server.url, "RAPPORT_DATA_DIR": str(tmp_path / "data")}
    created = cli_in_process(env, "accounts", "create", "shop")
    assert created.returncode == 0, created.stderr
    return env


@pytest.fixture
def cli(operator_env: dict[str, str]) -> Cli:
    """Run ``rapport`` on the test's redis-server, as an operator would."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args],
            env=operator_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def fields(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines())


def test_plan_is_shown(cli: Cli) -> None:
    shown = cli("accounts", "plan", "--account", "shop")
    assert shown.returncode == 0, shown.stderr
    assert fields(shown.stdout) == {
        "knowledge_units": "100000",
        "storage_units": "512.0",
        "max_concurrent_sessions": "10",
        "initial_requests": "10000",
        "allowed_origins": "none (every origin allowed)",
    }


def test_plan_changes_only_the_given_limits(cli: Cli) -> None:
    changed = cli("accounts", "plan", "--account", "shop", "--max-concurrent-sessions", "3")
    assert changed.returncode == 0, changed.stderr
    assert fields(changed.stdout)["max_concurrent_sessions"] == "3"
    assert fields(changed.stdout)["knowledge_units"] == "100000"

    again = cli("accounts", "plan", "--account", "shop", "--knowledge-units", "50",
                "--storage-units", "2.5")  # fmt: skip
    assert again.returncode == 0, again.stderr
    shown = fields(cli("accounts", "plan", "--account", "shop").stdout)
    assert shown["max_concurrent_sessions"] == "3"
    assert shown["knowledge_units"] == "50"
    assert shown["storage_units"] == "2.5"
    assert shown["initial_requests"] == "10000"


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-concurrent-sessions", "-1"],
        ["--knowledge-units", "5", "--storage-units", "-0.5"],
        ["--storage-units", "nan"],
        ["--storage-units", "inf"],
    ],
    ids=["negative-int", "one-of-two-negative", "nan", "infinity"],
)
def test_a_bad_limit_is_refused_and_nothing_changes(
    cli: Cli, operator_env: dict[str, str], flags: list[str]
) -> None:
    # The refusal is the operator's command; the plan around it is read in this process.
    def plan() -> str:
        return cli_in_process(operator_env, "accounts", "plan", "--account", "shop").stdout

    before = plan()
    assert "max_concurrent_sessions" in before
    refused = cli("accounts", "plan", "--account", "shop", *flags)
    assert refused.returncode != 0
    assert "0 or more" in refused.stderr
    assert refused.stdout == ""
    assert plan() == before


def test_an_unknown_account_is_an_error(cli: Cli) -> None:
    for args in (["plan"], ["origins", "list"], ["origins", "add", "https://a.example"]):
        refused = cli("accounts", *args, "--account", "nobody")
        assert refused.returncode == 1
        assert "No account 'nobody'" in refused.stderr


def test_origins_are_added_normalised_once_and_removed(cli: Cli) -> None:
    listed = cli("accounts", "origins", "list", "--account", "shop")
    assert listed.stdout.strip() == "no allowed origins (every origin allowed)"

    added = cli("accounts", "origins", "add", "--account", "shop", "HTTPS://Shop.Example:443")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == ["https://shop.example"]
    twice = cli("accounts", "origins", "add", "--account", "shop", "https://shop.example")
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout.splitlines() == ["https://shop.example"]
    cli("accounts", "origins", "add", "--account", "shop", "http://localhost:3000")
    listed = cli("accounts", "origins", "list", "--account", "shop")
    assert listed.stdout.splitlines() == ["https://shop.example", "http://localhost:3000"]
    plan = fields(cli("accounts", "plan", "--account", "shop").stdout)
    assert plan["allowed_origins"] == "https://shop.example, http://localhost:3000"

    removed = cli("accounts", "origins", "remove", "--account", "shop", "https://SHOP.example")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["http://localhost:3000"]
    absent = cli("accounts", "origins", "remove", "--account", "shop", "https://shop.example")
    assert absent.returncode == 1
    assert "https://shop.example is not an allowed origin of shop" in absent.stderr
    last = cli("accounts", "origins", "remove", "--account", "shop", "http://localhost:3000")
    assert last.stdout.strip() == "no allowed origins (every origin allowed)"


def test_bad_origins_are_refused(cli: Cli) -> None:
    for origin in BAD_ORIGINS:
        refused = cli("accounts", "origins", "add", "--account", "shop", origin)
        assert refused.returncode == 1, origin
        assert "is not an origin" in refused.stderr, origin
    listed = cli("accounts", "origins", "list", "--account", "shop")
    assert listed.stdout.strip() == "no allowed origins (every origin allowed)"


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("HTTPS://Shop.Example:443", "https://shop.example"),
        ("http://shop.example:80", "http://shop.example"),
        ("http://shop.example:443", "http://shop.example:443"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[0:0::1]:3000", "http://[::1]:3000"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_normalise_origin(given: str, normalised: str) -> None:
    assert normalise_origin(given) == normalised


@pytest.mark.parametrize(
    "value",
    [*BAD_ORIGINS, "", "https://", "https://a.com/", "https://a.com?q", "https://a.com#f",
     "https://a.com:", "https://a.com:0", "https://a.com:65536", "https://[::g]",
     "https://a..com", "https:/a.com", " https://a.com", "https://bücher.example",
     "https://\u212aa.example"],
)  # fmt: skip
def test_normalise_origin_refuses(value: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        normalise_origin(value)
    assert refused.value.errors is not None and "origin" in refused.value.errors


def test_allows_origin() -> None:
    anyone = Plan()
    assert anyone.allows_origin("https://anything.example")
    assert anyone.allows_origin("null")
    assert anyone.allows_origin(None)

    listed = Plan(allowed_origins=["https://shop.example", "http://localhost:3000"])
    assert listed.allows_origin(None), "no Origin header: not a browser, so not restricted"
    assert listed.allows_origin("https://shop.example")
    assert listed.allows_origin("HTTPS://shop.example:443")
    assert listed.allows_origin("http://localhost:3000")
    assert not listed.allows_origin("https://other.example")
    assert not listed.allows_origin("http://shop.example")
    assert not listed.allows_origin("http://localhost:3001")
    assert not listed.allows_origin("https://shop.example.evil.example")
    assert not listed.allows_origin("null")
    assert not listed.allows_origin("https://shop.example/path")
    assert not listed.allows_origin("")


@pytest.fixture
def redis(state: Client) -> Client:
    """The account store's optimistic updates (WATCH/MULTI) on one Redis and on the cluster
    (ON_BOTH); the CLI cases above run on the test's own redis-server."""
    return state


@ON_BOTH
async def test_concurrent_updates_are_all_kept(redis: Client) -> None:
    accounts = AccountStore(redis)
    account = await accounts.create("busy")
    origins = [f"https://site{n}.example" for n in range(20)]
    await asyncio.gather(
        *(accounts.add_origin(account.id, origin) for origin in origins),
        accounts.set_plan(account.id, knowledge_units=7),
        accounts.set_default_persona(account.id, "persona-1"),
    )
    stored = await accounts.get(account.id)
    assert sorted(stored.plan.allowed_origins) == sorted(origins)
    assert stored.plan.knowledge_units == 7
    assert stored.default_persona_id == "persona-1"


@ON_BOTH
async def test_the_listing_finds_every_account(redis: Client) -> None:
    accounts = AccountStore(redis)
    created = [await accounts.create(f"listed-{n}") for n in range(8)]  # in several slots
    assert [a.id for a in await accounts.list()] == [a.id for a in created]


@ON_BOTH
async def test_store_refusals(redis: Client) -> None:
    accounts = AccountStore(redis)
    account = await accounts.create("strict")
    with pytest.raises(ValidationFailed) as refused:
        await accounts.set_plan(account.id, max_concurrent_sessions=-1, storage_units=-1)
    assert set(refused.value.errors or {}) == {"max_concurrent_sessions", "storage_units"}
    with pytest.raises(NotFound):
        await accounts.remove_origin(account.id, "https://absent.example")
    with pytest.raises(NotFound):
        await accounts.add_origin("no-such-id", "https://a.example")
    assert await accounts.get(account.id) == account
    unchanged = await accounts.set_plan(account.id)
    assert unchanged == account
