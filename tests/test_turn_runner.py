"""The turn runner on its own, with no transport: events as the model streams, cancellation
at every stage (the upstream request closed, memory and balance consistent), a slow
consumer that never turns into a timeout, the deadline, and idempotent replays.

Real parts: a real redis-server, the fake OpenAI-compatible server streaming over HTTP
through the real ``openai`` client (the LLM backend's streaming path)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import keyspace
from engine.accounts import AccountStore
from engine.balance import Balance
from engine.errors import NoRequests, UpstreamFailed, UpstreamTimeout, VoiceTranscriptionFailed
from engine.idempotency import Idempotency, IdempotencyKey
from engine.llm import OpenAICompatible
from engine.memory import MemoryStore
from engine.personas import PersonaStore
from engine.replies import Knowledge, ReplyDelta, ReplyDone, ReplySources, ReplyStarted
from engine.speech import Transcriber
from engine.state import Client, connect
from engine.tenants import create_tenant
from engine.turn_runner import Answer, TurnFailure, TurnResult, TurnRunner
from engine.turn_store import TurnStore
from engine.turns import TurnEvent, TurnInput, TurnPipeline, Voice
from engine.workers import WorkerPool
from loadtest.fake_llm import DEFAULT_REPLY, FakeOpenAI
from sessions.store import CHARGE
from tests.conftest import ON_BOTH, RedisServer, wait_until

BALANCE = 10


class NoKnowledge:
    async def retrieve(
        self, account_id: str, active: list[str], query: str, k: int, earlier: list[str]
    ) -> Knowledge:
        return Knowledge(snippets=[], topics=[])


class Rig:
    def __init__(self, redis: Client, fake: FakeOpenAI, deadline: float) -> None:
        self.redis = redis
        self.memory = MemoryStore(redis)
        self.balance = Balance(redis)
        self.backend = OpenAICompatible(
            base_url=fake.base_url, api_key="sk-test", model="fake-model",
            timeout=30, max_tokens=64, vision=False,
        )  # fmt: skip
        self.pool = WorkerPool(workers=2, queue_size=4, deadline=deadline)
        self.runner = TurnRunner(
            store=TurnStore(
                redis, memory=self.memory, idempotency=Idempotency(in_flight_ttl=60),
                key_rpm=60, budget=CHARGE,
            ),
            pipeline=TurnPipeline(
                personas=PersonaStore(redis), memory=self.memory, retriever=NoKnowledge(),
                backend=self.backend, transcriber=Transcriber(),
            ),
            pool=self.pool,
        )  # fmt: skip
        self.account_id = ""

    async def open(self) -> Rig:
        account = await create_tenant(
            AccountStore(self.redis), PersonaStore(self.redis), f"runner-{uuid.uuid4().hex[:8]}"
        )
        self.account_id = account.id
        await self.redis.set(keyspace.AccountKeys(account.id).balance, BALANCE)
        return self

    def turn(self, message: str = "Hello there", **extra: object) -> TurnInput:
        return TurnInput(
            account_id=self.account_id, user_id="ada", message=message,
            request_id=uuid.uuid4().hex, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    async def left(self) -> int:
        return await self.balance.get(self.account_id)

    async def turns(self) -> list:
        return (await self.memory.recall(self.account_id, "ada")).recent


@pytest.fixture
async def rig(state: Client, fake: FakeOpenAI) -> AsyncIterator[Rig]:
    """On the test's own Redis, and on the cluster as well for the cases marked ON_BOTH
    (every one with a rig: each turn runs the turn store's scripts)."""
    built = await Rig(state, fake, deadline=5).open()
    yield built
    await built.backend.close()


async def wait_for(check, what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@ON_BOTH
async def test_events_follow_the_model_stream(rig: Rig, fake: FakeOpenAI) -> None:
    events: list[TurnEvent] = []
    answer = await rig.runner.run(rig.turn(), emit=events.append)
    assert isinstance(answer.record, TurnResult) and not answer.replayed
    assert isinstance(events[0], ReplyStarted)
    deltas = [e.text for e in events if isinstance(e, ReplyDelta)]
    # The fake streams word by word, each word after the first with its leading space.
    assert deltas == [w if i == 0 else " " + w for i, w in enumerate(DEFAULT_REPLY.split())]
    assert events[-2:] == [ReplySources([]), ReplyDone(events[-1].reply)]  # type: ignore[union-attr]
    assert answer.record.reply == DEFAULT_REPLY
    assert [(t.user, t.reply, t.status) for t in await rig.turns()] == [
        ("Hello there", DEFAULT_REPLY, "completed")
    ]
    assert await rig.left() == BALANCE - 1


@ON_BOTH
async def test_cancel_before_the_first_token(rig: Rig, fake: FakeOpenAI) -> None:
    fake.configure(delay_s=30)
    events: list[TurnEvent] = []
    task = asyncio.create_task(rig.runner.run(rig.turn(), emit=events.append))
    await wait_for(lambda: len(fake.calls()) == 1, "the upstream request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The fake server sees its client leave while it is still to answer.
    await asyncio.to_thread(wait_until, lambda: fake.departed() == 1, 5, "the upstream close")
    assert not any(isinstance(e, ReplyStarted) for e in events)
    assert [(t.user, t.reply, t.status) for t in await rig.turns()] == [
        ("Hello there", "", "cancelled")
    ]
    assert await rig.left() == BALANCE - 1, "charged once, not refunded"


@ON_BOTH
async def test_a_cancel_while_the_turn_opens_is_not_lost(rig: Rig, fake: FakeOpenAI) -> None:
    """Cancelled while its opening script waits for Redis (a reply.cancel right behind its
    message): redis-py can swallow that cancellation; the turn must stop all the same, not
    run on to the model's answer."""
    fake.configure(delay_s=30)
    key = IdempotencyKey("k-open", "fingerprint")
    for _ in range(5):  # the cancel lands at a different point of the open each time
        task = asyncio.create_task(rig.runner.run(rig.turn(), key=key))
        await asyncio.sleep(0)  # the task has started: it waits in the opening script
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    # Each time the key was released and nothing was kept: a run now goes through.
    fake.configure(delay_s=0)
    answer = await rig.runner.run(rig.turn(), key=key)
    assert isinstance(answer.record, TurnResult) and not answer.replayed


@ON_BOTH
async def test_cancel_mid_stream_closes_the_upstream(rig: Rig, fake: FakeOpenAI) -> None:
    fake.configure(stall_after_chunks=3)
    events: list[TurnEvent] = []
    task = asyncio.create_task(rig.runner.run(rig.turn(), emit=events.append))
    await wait_for(lambda: sum(isinstance(e, ReplyDelta) for e in events) == 3, "3 deltas")
    assert fake.open_streams() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(wait_until, lambda: fake.open_streams() == 0, 5, "the stream closed")
    said = " ".join(DEFAULT_REPLY.split()[:3])
    assert [(t.user, t.reply, t.status) for t in await rig.turns()] == [
        ("Hello there", said, "cancelled")
    ]
    assert await rig.left() == BALANCE - 1


@ON_BOTH
async def test_a_cancel_after_done_keeps_the_whole_turn(rig: Rig, fake: FakeOpenAI) -> None:
    task: asyncio.Task[Answer] | None = None

    def cancel_when_done(event: TurnEvent) -> None:
        if isinstance(event, ReplyDone):
            assert task is not None
            task.cancel()  # lands while the turn is being remembered

    task = asyncio.create_task(rig.runner.run(rig.turn(), emit=cancel_when_done))
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: not rig.runner._finishing, "the store to finish")
    assert [(t.reply, t.status) for t in await rig.turns()] == [(DEFAULT_REPLY, "completed")]
    assert await rig.left() == BALANCE - 1


async def test_a_slow_consumer_is_no_timeout(redis_server: RedisServer, fake: FakeOpenAI) -> None:
    redis = connect(redis_server.url, 2)
    rig = await Rig(redis, fake, deadline=0.5).open()
    queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
    read: list[TurnEvent] = []

    async def slow_reader() -> None:
        while not read or not isinstance(read[-1], ReplyDone):
            read.append(await queue.get())
            await asyncio.sleep(0.1)  # 12 events: 1.2 s, well past the 0.5 s deadline

    reader = asyncio.create_task(slow_reader())
    answer = await rig.runner.run(rig.turn(), emit=queue.put_nowait)
    assert isinstance(answer.record, TurnResult)
    assert not reader.done(), "the turn ended (and freed its worker) before the reader"
    await reader
    assert "".join(e.text for e in read if isinstance(e, ReplyDelta)) == DEFAULT_REPLY
    await rig.backend.close()
    await redis.aclose()


async def test_a_slow_model_times_out_and_is_refunded(
    redis_server: RedisServer, fake: FakeOpenAI
) -> None:
    redis = connect(redis_server.url, 2)
    rig = await Rig(redis, fake, deadline=0.3).open()
    fake.configure(chunk_delay_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await rig.runner.run(rig.turn())
    assert await rig.left() == BALANCE
    assert await rig.turns() == []
    await asyncio.to_thread(wait_until, lambda: fake.open_streams() == 0, 5, "the stream closed")
    await rig.backend.close()
    await redis.aclose()


@ON_BOTH
async def test_a_key_runs_once_and_replays(rig: Rig, fake: FakeOpenAI) -> None:
    key = IdempotencyKey("k-1", "fingerprint")
    first = await rig.runner.run(rig.turn(), key=key)
    again = await rig.runner.run(rig.turn(), key=key)
    assert again == Answer(first.record, replayed=True)
    assert len(fake.calls()) == 1 and await rig.left() == BALANCE - 1


@ON_BOTH
async def test_a_cancelled_turn_releases_its_key(rig: Rig, fake: FakeOpenAI) -> None:
    fake.configure(delay_s=30)
    key = IdempotencyKey("k-2", "fingerprint")
    task = asyncio.create_task(rig.runner.run(rig.turn(), key=key))
    await wait_for(lambda: len(fake.calls()) == 1, "the upstream request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.configure(delay_s=0)
    retried = await rig.runner.run(rig.turn(), key=key)
    assert isinstance(retried.record, TurnResult) and not retried.replayed


@ON_BOTH
async def test_a_final_failure_is_kept_and_refunded(rig: Rig, fake: FakeOpenAI) -> None:
    silence = (Path(__file__).parent / "audio" / "silence.wav").read_bytes()
    key = IdempotencyKey("k-3", "fingerprint")
    turn = rig.turn("", voice=Voice(silence, "audio/wav"))
    with pytest.raises(VoiceTranscriptionFailed):
        await rig.runner.run(turn, key=key)
    again = await rig.runner.run(turn, key=key)
    assert again.replayed and isinstance(again.record, TurnFailure)
    assert again.record.failure == "VOICE_TRANSCRIPTION_FAILED"
    assert again.record.request_id == turn.request_id
    assert await rig.left() == BALANCE and fake.calls() == []


@ON_BOTH
async def test_a_chunk_that_breaks_the_schema_fails_upstream(rig: Rig, fake: FakeOpenAI) -> None:
    fake.configure(malformed_after_chunks=2)
    events: list[TurnEvent] = []
    with pytest.raises(UpstreamFailed):
        await rig.runner.run(rig.turn(), emit=events.append)
    first, second = DEFAULT_REPLY.split()[:2]
    assert [e.text for e in events if isinstance(e, ReplyDelta)] == [first, " " + second]
    assert await rig.left() == BALANCE, "an upstream failure is refunded"
    assert await rig.turns() == []


@ON_BOTH
async def test_no_balance_runs_nothing(rig: Rig, fake: FakeOpenAI) -> None:
    await rig.redis.set(keyspace.AccountKeys(rig.account_id).balance, 0)
    with pytest.raises(NoRequests):
        await rig.runner.run(rig.turn(), key=IdempotencyKey("k-4", "fingerprint"))
    assert fake.calls() == [] and await rig.turns() == []
