"""Per-user memory against a real redis-server: order, byte bounds, the summary, facts,
concurrency, paging, forgetting, isolation and a Redis outage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import StateUnavailable
from engine.memory import FACT_BYTES, MemoryStore, Turn, clip, extract_facts
from engine.state import Client
from tests.conftest import ON_BOTH, RedisServer

ACCOUNT = "acct1"
START = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def turn(n: int, user: str | None = None, reply: str | None = None) -> Turn:
    return Turn(
        at=START + timedelta(minutes=n),
        user=user if user is not None else f"Message {n} about café ☕. More text here.",
        reply=reply if reply is not None else f"Reply {n}. With a second sentence.",
        request_id=f"req-{n}",
        sources=[f"doc-{n}"],
    )


@pytest.fixture
def client(state: Client) -> Client:
    """The test's own Redis, and the cluster as well for the cases marked ON_BOTH."""
    return state


async def stored(redis: aioredis.Redis, user_id: str) -> tuple[list[str], int]:
    """The raw stored turns and the byte count the meta hash claims for them."""
    keys = keyspace.AccountKeys(ACCOUNT)
    raws = await redis.lrange(keys.memory_turns(user_id), 0, -1)
    claimed = await redis.hget(keys.memory_meta(user_id), "bytes")
    return raws, int(claimed or 0)


def real_bytes(raws: list[str]) -> int:
    return sum(len(raw.encode()) for raw in raws)


@ON_BOTH
async def test_a_new_user_remembers_nothing(client: aioredis.Redis) -> None:
    memory = await MemoryStore(client).recall(ACCOUNT, "nobody")
    assert (memory.summary, memory.facts, memory.recent) == ("", {}, [])


@ON_BOTH
async def test_turns_come_back_oldest_first_and_recall_keeps_only_the_recent(
    client: aioredis.Redis,
) -> None:
    store = MemoryStore(client, recent_turns=3)
    turns = [turn(n) for n in range(5)]
    for each in turns:
        await store.remember(ACCOUNT, "u", each)
    memory = await store.recall(ACCOUNT, "u")
    assert memory.recent == turns[-3:]  # all fields survive the JSON round trip
    assert memory.recent[0].at.tzinfo is not None
    page, total = await store.history(ACCOUNT, "u", limit=10, offset=0)
    assert total == 5 and page == turns[::-1]


@ON_BOTH
async def test_the_byte_bound_holds_and_the_oldest_go_first(client: aioredis.Redis) -> None:
    store = MemoryStore(client, max_bytes=1000)
    for n in range(30):
        await store.remember(ACCOUNT, "u", turn(n))
        raws, claimed = await stored(client, "u")
        assert claimed == real_bytes(raws) <= 1000
    page, total = await store.history(ACCOUNT, "u", limit=100, offset=0)
    assert 1 < total < 30 and total == len(raws)
    # What survives is exactly the newest run of turns, nothing older.
    assert [t.request_id for t in page] == [f"req-{n}" for n in range(29, 29 - total, -1)]
    # Trimming removed no more than it had to: the next older turn would not have fitted.
    assert real_bytes(raws) + len(msgspec.json.encode(turn(29 - total))) > 1000


@ON_BOTH
async def test_trimming_removes_no_more_than_needed(client: aioredis.Redis) -> None:
    sizes = [len(msgspec.json.encode(turn(n))) for n in range(3)]
    store = MemoryStore(client, max_bytes=sizes[1] + sizes[2])
    for n in range(3):
        await store.remember(ACCOUNT, "u", turn(n))
    raws, claimed = await stored(client, "u")
    assert len(raws) == 2 and claimed == sizes[1] + sizes[2] == real_bytes(raws)


@ON_BOTH
async def test_a_turn_larger_than_the_bound_goes_straight_to_the_summary(
    client: aioredis.Redis,
) -> None:
    store = MemoryStore(client, max_bytes=100)
    await store.remember(ACCOUNT, "u", turn(1, user="Huge. " + "x" * 500))
    raws, claimed = await stored(client, "u")
    assert (raws, claimed) == ([], 0)
    assert (await store.recall(ACCOUNT, "u")).summary == "2025-01-31 user: Huge. | reply: Reply 1."


@ON_BOTH
async def test_trimmed_turns_are_folded_into_a_bounded_summary(client: aioredis.Redis) -> None:
    store = MemoryStore(client, max_bytes=600, summary_bytes=300)
    for n in range(40):
        await store.remember(ACCOUNT, "u", turn(n))
        summary = (await store.recall(ACCOUNT, "u")).summary
        assert len(summary.encode()) <= 300
        summary.encode().decode()  # still valid UTF-8: no character was cut in half
    lines = summary.split("\n")
    assert len(lines) > 1
    # Oldest dropped first: the summary ends with the newest trimmed turn, and its lines are
    # consecutive turns holding each message's first sentence only.
    page, _ = await store.history(ACCOUNT, "u", limit=1, offset=0)
    total = len((await stored(client, "u"))[0])
    newest_trimmed = 39 - total
    assert lines[-1] == (
        f"2025-01-31 user: Message {newest_trimmed} about café ☕. | reply: Reply {newest_trimmed}."
    )
    first = newest_trimmed - len(lines) + 1
    assert lines[0].startswith(f"2025-01-31 user: Message {first} about")
    assert "More text here" not in summary and "second sentence" not in summary
    assert page[0].request_id == "req-39"


@ON_BOTH
async def test_long_sentences_are_clipped_on_a_character_boundary(client: aioredis.Redis) -> None:
    store = MemoryStore(client, max_bytes=50, summary_bytes=120)
    await store.remember(ACCOUNT, "u", turn(1, user="☕" * 400, reply="é" * 400))
    summary = (await store.recall(ACCOUNT, "u")).summary
    assert 100 < len(summary.encode()) <= 120
    assert summary.startswith("2025-01-31 user: ☕☕") and summary.endswith("…")
    assert clip("aé", 2) == "a" and clip("☕☕☕", 7) == "☕…" and clip("short", 5) == "short"


@ON_BOTH
async def test_concurrent_remembers_lose_nothing(client: aioredis.Redis) -> None:
    store = MemoryStore(client)
    await asyncio.gather(*(store.remember(ACCOUNT, "u", turn(n)) for n in range(50)))
    raws, claimed = await stored(client, "u")
    assert len(raws) == 50 and claimed == real_bytes(raws)
    page, total = await store.history(ACCOUNT, "u", limit=50, offset=0)
    assert total == 50 and {t.request_id for t in page} == {f"req-{n}" for n in range(50)}


@ON_BOTH
async def test_concurrent_remembers_that_trim_neither_lose_nor_double_a_turn(
    client: aioredis.Redis,
) -> None:
    store = MemoryStore(client, max_bytes=1500, summary_bytes=100_000)
    await asyncio.gather(*(store.remember(ACCOUNT, "u", turn(n)) for n in range(50)))
    raws, claimed = await stored(client, "u")
    assert claimed == real_bytes(raws) <= 1500
    page, _ = await store.history(ACCOUNT, "u", limit=50, offset=0)
    kept = {int(t.request_id.removeprefix("req-")) for t in page}
    lines = (await store.recall(ACCOUNT, "u")).summary.split("\n")
    folded = [int(line.split("Message ")[1].split(" ")[0]) for line in lines]
    assert len(folded) == 50 - len(kept) and set(folded) | kept == set(range(50))


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("my name is Ada", "Ada"),
        ("Hi! My name is ada lovelace, nice to meet you", "Ada Lovelace"),
        ("Call me Ishmael.", "Ishmael"),
        ("CALL ME AL", "Al"),
        ("I'm called Ada-Mae O'Neil!", "Ada-Mae O'Neil"),
        ("i am called bob", "Bob"),
        ("I\u2019m called Grace", "Grace"),
        ("Name's Bond. James Bond.", "Bond"),
        ("my name\u2019s Grace Hopper and I write compilers", "Grace Hopper"),
        ("My name is Ada Augusta King Lovelace", "Ada Augusta King"),
        ("my name is McDonald", "McDonald"),
        ("you can call me ÉLODIE", "Élodie"),
        ("My name is Ada. Actually, call me Grace.", "Grace"),
    ],
)
def test_a_stated_name_is_extracted(text: str, name: str) -> None:
    assert extract_facts(text) == {"name": name}


@pytest.mark.parametrize(
    "text",
    [
        "I'm fine",
        "I am tired",
        "Hi, I'm Ada",
        "call me back later",
        "please call me at 5",
        "call me crazy, but I like it",
        "I am called to testify tomorrow",
        "his name's Bob",
        "don't call me Bob",
        "my name is not important",
        "my name is Ada123",
        "what's my name?",
        "my name is",
        "",
    ],
)
def test_other_words_are_not_names(text: str) -> None:
    assert extract_facts(text) == {}


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("I live in Lisbon", {"location": "Lisbon"}),
        ("i live in new york city and love it", {"location": "New York City"}),
        ("I currently live in Berlin.", {"location": "Berlin"}),
        ("I'm based in the UK", {"location": "the UK"}),
        ("I am located in rio de janeiro", {"location": "Rio de Janeiro"}),
        ("Hi, I reside in S\u00e3o Paulo, Brazil", {"location": "S\u00e3o Paulo"}),
        ("I'm from Porto", {"origin": "Porto"}),
        ("I come from Stratford-upon-Avon", {"origin": "Stratford-upon-Avon"}),
        ("I work as a nurse at a clinic", {"job": "a nurse"}),
        ("i\u2019m working as an Engineer", {"job": "an Engineer"}),
        ("I now work as the head chef.", {"job": "the head chef"}),
        (
            "My name is Ana and I live in Lisbon, but I'm originally from Porto.",
            {"name": "Ana", "location": "Lisbon", "origin": "Porto"},
        ),
        ("I live in Lisbon. Actually, I live in Porto now.", {"location": "Porto"}),
    ],
)
def test_where_users_live_come_from_and_work_is_extracted(text: str, facts: dict[str, str]) -> None:
    assert extract_facts(text) == facts


@pytest.mark.parametrize(
    "text",
    [
        "If I live in Spain, can I order?",
        "Do you deliver where I live in Spain?",
        "where do I live in Lisbon",
        "Should I live in Lisbon or Porto?",
        "I don't live in Lisbon",
        "I used to live in Lisbon",
        "I no longer live in Lisbon",
        "I'm not from Porto",
        "I live in a flat",
        "I live in hope",
        "I live at 12 Main Street",
        "I'm staying in Lisbon for a week",
        "I'm from here",
        "I'm from a small town",
        "I'm a bit tired",
        "I'm a teacher",
        "I work as hard as I can",
        "I work as well as anyone",
        "can I work as a nurse there?",
        "I work as a senior freelance backend software engineer",
        "where am I from?",
        "what's my job?",
    ],
)
def test_other_words_are_no_place_or_job(text: str) -> None:
    assert extract_facts(text) == {}


def test_facts_are_short_values() -> None:
    long_word = "A" + "a" * 200
    assert len(extract_facts(f"I live in {long_word}")["location"].encode()) <= FACT_BYTES


@ON_BOTH
async def test_a_later_name_replaces_an_earlier_one(client: aioredis.Redis) -> None:
    store = MemoryStore(client)
    await store.remember(ACCOUNT, "u", turn(1, user="Hello, my name is ada lovelace."))
    assert (await store.recall(ACCOUNT, "u")).facts == {"name": "Ada Lovelace"}
    await store.remember(ACCOUNT, "u", turn(2, user="I'm fine, thanks."))
    assert (await store.recall(ACCOUNT, "u")).facts == {"name": "Ada Lovelace"}
    # Non-ASCII survives the Lua side's JSON (cjson) merge.
    await store.remember(ACCOUNT, "u", turn(3, user="Actually, call me élodie Ørsted"))
    assert (await store.recall(ACCOUNT, "u")).facts == {"name": "Élodie Ørsted"}


@ON_BOTH
async def test_facts_outlive_the_turns_that_stated_them(client: aioredis.Redis) -> None:
    store = MemoryStore(client, max_bytes=300)
    await store.remember(ACCOUNT, "u", turn(0, user="My name is Ada."))
    for n in range(1, 10):
        await store.remember(ACCOUNT, "u", turn(n))
    memory = await store.recall(ACCOUNT, "u")
    assert all(t.request_id != "req-0" for t in memory.recent)
    assert memory.facts == {"name": "Ada"} and "My name is Ada." in memory.summary


@ON_BOTH
async def test_history_pages_newest_first_with_the_total(client: aioredis.Redis) -> None:
    store = MemoryStore(client)
    for n in range(7):
        await store.remember(ACCOUNT, "u", turn(n))

    async def ids(limit: int, offset: int) -> tuple[list[int], int]:
        page, total = await store.history(ACCOUNT, "u", limit=limit, offset=offset)
        return [int(t.request_id.removeprefix("req-")) for t in page], total

    assert await ids(3, 0) == ([6, 5, 4], 7)
    assert await ids(3, 3) == ([3, 2, 1], 7)
    assert await ids(3, 6) == ([0], 7)
    assert await ids(3, 7) == ([], 7)
    assert await ids(0, 0) == ([], 7)
    assert await store.history(ACCOUNT, "nobody", limit=5, offset=0) == ([], 0)
    with pytest.raises(ValueError):
        await store.history(ACCOUNT, "u", limit=-1, offset=0)


@ON_BOTH
async def test_forget_erases_the_user_and_says_whether_there_was_anything(
    client: aioredis.Redis,
) -> None:
    store = MemoryStore(client, max_bytes=300)
    for n in range(5):
        await store.remember(ACCOUNT, "u", turn(n, user=f"Call me Ada. Message {n}."))
    assert await store.forget(ACCOUNT, "u") is True
    memory = await store.recall(ACCOUNT, "u")
    assert (memory.summary, memory.facts, memory.recent) == ("", {}, [])
    keys = keyspace.AccountKeys(ACCOUNT)
    assert await client.exists(keys.memory_turns("u"), keys.memory_meta("u")) == 0
    assert await store.forget(ACCOUNT, "u") is False
    # Memory starts afresh: the byte count did not survive the forgetting.
    await store.remember(ACCOUNT, "u", turn(9))
    raws, claimed = await stored(client, "u")
    assert len(raws) == 1 and claimed == real_bytes(raws)


@ON_BOTH
async def test_users_and_accounts_are_isolated(client: aioredis.Redis) -> None:
    store = MemoryStore(client)
    # ids that would collide if a ':' or '/' could reach into the key, or if escaping did
    owners = [
        (ACCOUNT, "a:b"),
        (ACCOUNT, "a/b"),
        (ACCOUNT, "a%3Ab"),
        (ACCOUNT, "a"),
        (ACCOUNT, "a:b:turns"),
        ("acct2", "a:b"),
    ]
    for n, (account, user_id) in enumerate(owners):
        await store.remember(account, user_id, turn(n, user=f"Call me Name{chr(97 + n)}."))
    for n, (account, user_id) in enumerate(owners):
        memory = await store.recall(account, user_id)
        assert [t.request_id for t in memory.recent] == [f"req-{n}"]
        assert memory.facts == {"name": f"Name{chr(97 + n)}"}
    assert await store.forget("acct2", "a:b") is True
    assert (await store.recall(ACCOUNT, "a:b")).recent != []
    assert (await store.recall("acct2", "a:b")).recent == []


async def test_a_stopped_redis_is_state_unavailable(
    client: aioredis.Redis, redis_server: RedisServer
) -> None:
    store = MemoryStore(client)
    await store.remember(ACCOUNT, "u", turn(1))
    redis_server.stop()
    with pytest.raises(StateUnavailable):
        await store.recall(ACCOUNT, "u")
    with pytest.raises(StateUnavailable):
        await store.remember(ACCOUNT, "u", turn(2))
    with pytest.raises(StateUnavailable):
        await store.history(ACCOUNT, "u", limit=1, offset=0)
    with pytest.raises(StateUnavailable):
        await store.forget(ACCOUNT, "u")
