"""The moving-window log on its own, against a real redis-server with a clock the test
moves: exact counts, room that opens hit by hit as the window moves, the trim of hits
that left the window (by the tail and by bisection after an idle spell), exactness under
concurrency."""

from __future__ import annotations

import asyncio

import pytest

from engine import keyspace
from engine.errors import RateLimited, RateLimitedIp
from engine.ratelimit import Policy, RateLimits
from engine.state import Client
from tests.conftest import ON_BOTH, Clock

START = 1_000_000.0


@pytest.fixture
def redis(state: Client) -> Client:
    """Every case runs on one Redis and on the cluster (ON_BOTH): the window is a Lua script."""
    return state


@ON_BOTH
async def test_a_key_gets_its_limit_then_room_as_the_window_moves(redis) -> None:
    clock = Clock(START)
    limits = RateLimits(redis, key_rpm=3, ip_rpm=100, clock=clock)
    remaining = []
    for second in (0, 10, 20):
        clock.now = START + second
        remaining.append((await limits.hit_key("acct", "primary")).remaining)
    assert remaining == [2, 1, 0]
    clock.now = START + 30
    with pytest.raises(RateLimited) as refused:
        await limits.hit_key("acct", "primary")
    assert refused.value.headers["Retry-After"] == "60"
    assert refused.value.headers["RateLimit-Reset"] == "30", "the first hit leaves at 60 s"
    clock.now = START + 60.001  # the first hit has left; the refused one never counted
    quota = await limits.hit_key("acct", "primary")
    assert quota.remaining == 0 and quota.reset_seconds == 10
    stored = await redis.lrange(
        keyspace.AccountKeys("acct").rate_window("v1-key", "primary"), 0, -1
    )
    assert len(stored) == 3, "only the hits inside the window are kept"


@ON_BOTH
async def test_an_idle_spell_empties_the_window(redis) -> None:
    clock = Clock(START)
    limits = RateLimits(redis, key_rpm=50, ip_rpm=100, clock=clock)
    for n in range(30):
        clock.now = START + n * 0.1
        await limits.hit_key("acct", "primary")
    clock.now = START + 600  # every hit is stale, more than the tail shows
    assert (await limits.hit_key("acct", "primary")).remaining == 49
    key = keyspace.AccountKeys("acct").rate_window("v1-key", "primary")
    assert await redis.llen(key) == 1
    for n in range(20):
        clock.now = START + 610 + n * 0.5
        await limits.hit_key("acct", "primary")
    clock.now = START + 675  # the window now holds the nine hits after 615 s, and this one
    assert (await limits.hit_key("acct", "primary")).remaining == 50 - 10


@ON_BOTH
async def test_the_ip_limit_and_policies_are_exact_under_concurrency(redis) -> None:
    limits = RateLimits(redis, key_rpm=1000, ip_rpm=60)
    results = await asyncio.gather(
        *(limits.hit_ip("10.0.0.1") for _ in range(200)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 60
    assert all(isinstance(r, RateLimitedIp) for r in results if r is not None)
    policy = Policy("MutationDefault", 25, "user")
    outcomes = await asyncio.gather(
        *(limits.enforce(policy, "acct") for _ in range(100)), return_exceptions=True
    )
    refused = [r for r in outcomes if r is not None]
    assert len(refused) == 75 and all(isinstance(r, RateLimited) for r in refused)
    assert refused[0].scope == "user" and int(refused[0].headers["Retry-After"]) >= 1


@ON_BOTH
async def test_keys_and_ips_have_their_own_windows(redis) -> None:
    limits = RateLimits(redis, key_rpm=2, ip_rpm=2)
    for partition in ("a", "b"):
        await limits.hit_key("acct", partition)
        await limits.hit_key("acct", partition)
        await limits.hit_ip(partition)
        await limits.hit_ip(partition)
    with pytest.raises(RateLimited):
        await limits.hit_key("acct", "a")
    with pytest.raises(RateLimitedIp):
        await limits.hit_ip("b")
