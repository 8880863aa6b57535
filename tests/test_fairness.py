"""Fairness between tenants (issue 21, item 6): the processing queue takes accounts in turn,
a document has a time budget and keeps its lease while it works, units are estimated from
pages, and the transcriber caps each account, takes accounts in turn and drops the clips of
turns that gave up. Against a real redis-server, the real embedder and Chroma, the real
Whisper model and, for the upload route, a real ``rapport serve``."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import keyspace, speech
from engine.accounts import AccountStore
from engine.config import Settings
from engine.errors import RateLimited
from engine.keyspace import KbQueueKeys
from engine.speech import Transcriber
from engine.state import Client
from kb.documents import DocumentStore, knowledge_units
from kb.embedder import shared_embedder
from kb.index import VectorIndex
from kb.ingest import TOKENS_PER_PAGE, Incoming, Ingest
from kb.queue import Job, ProcessingQueue
from kb.worker import Processor
from tests.conftest import ON_BOTH, Server
from tests.test_extract import make_pdf
from tests.test_speech import clip


@pytest.fixture
def redis(state: Client) -> Client:
    """The fair queue's scripts (one ``{kb}`` slot) and the old queue's drain (other slots)
    run on one Redis and on the cluster (ON_BOTH); the lease-budget case stays on one."""
    return state


def text(external_id: str, body: str) -> Incoming:
    return Incoming(external_id=external_id, data=body.encode(), content_type="txt")


def processor(redis: Client, tmp_path: Path, queue: ProcessingQueue, **kw: Any):
    return Processor(
        docs=DocumentStore(redis),
        queue=queue,
        index=VectorIndex(Settings(data_dir=str(tmp_path))),
        embedder=shared_embedder(),
        max_pages=10,
        **kw,
    )


@ON_BOTH
async def test_a_small_tenant_is_not_stuck_behind_a_large_one(
    redis: Client, tmp_path: Path
) -> None:
    accounts = AccountStore(redis)
    big, small = await accounts.create("big"), await accounts.create("small")
    docs, queue = DocumentStore(redis), ProcessingQueue(redis)
    ingest = Ingest(docs, accounts, queue)
    await ingest.upsert(
        big.id, [text(f"p{i}", f"Page {i} of the big catalogue.") for i in range(300)], enqueue=True
    )
    await ingest.upsert(small.id, [text("one", "We open at nine.")], enqueue=True)

    stop = asyncio.Event()
    running = asyncio.create_task(processor(redis, tmp_path, queue).run(stop))
    for _ in range(600):
        mine = await docs.get(small.id, "one")
        if mine is not None and mine.processing_status == "ready":
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert mine is not None and mine.processing_status == "ready"
    theirs = await docs.get_many(big.id, [f"p{i}" for i in range(300)])
    before = [
        d
        for d in theirs
        if d is not None and d.processed_at is not None and d.processed_at <= mine.processed_at
    ]
    # Accounts take turns: one of the big tenant's pages went first, not all 300.
    assert len(before) <= 2


@ON_BOTH
async def test_jobs_of_the_old_single_queue_are_still_processed(redis: Client) -> None:
    queue = ProcessingQueue(redis)
    waiting, leased, held = Job("acct", "a", 1), Job("acct", "b", 1), Job("acct", "c", 1)
    await redis.rpush(keyspace.LEGACY_KB_QUEUE, waiting.encode())
    await redis.zadd(
        keyspace.LEGACY_KB_LEASES,
        {leased.encode(): time.time() - 1, held.encode(): time.time() + 60},
    )
    assert await queue.waiting() == 3
    assert {await queue.claim(), await queue.claim()} == {waiting, leased}
    assert await queue.claim() is None  # an old worker still holds "c" under its lease
    assert await redis.llen(keyspace.LEGACY_KB_QUEUE) == 0
    assert await redis.zcard(keyspace.LEGACY_KB_LEASES) == 1


async def test_a_slow_document_keeps_its_lease_then_fails_at_its_budget(
    redis: Client, tmp_path: Path
) -> None:
    accounts = AccountStore(redis)
    account = await accounts.create("slow")
    docs, queue = DocumentStore(redis), ProcessingQueue(redis, lease_seconds=0.3)
    # ~1,500 distinct sentences: far more embedding than 2 seconds allow on any machine here.
    body = " ".join(f"Item {i} ships from depot {i * 7 % 97} on day {i % 28}." for i in range(1500))
    await Ingest(docs, accounts, queue).upsert(account.id, [text("big", body)], enqueue=True)
    job = KbQueueKeys.leases, Job(account.id, "big", 1).encode()

    stop = asyncio.Event()
    worker = processor(redis, tmp_path, queue, document_seconds=2.0)
    running = asyncio.create_task(worker.run(stop))
    for _ in range(500):
        if await redis.zscore(*job) is not None:
            break
        await asyncio.sleep(0.02)
    other = ProcessingQueue(redis, lease_seconds=0.3)
    for _ in range(12):  # four leases' worth: each would have run out without renewal
        assert await other.claim() is None
        await asyncio.sleep(0.1)

    for _ in range(600):
        doc = await docs.get(account.id, "big")
        if doc is not None and doc.processing_status != "pending":
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert doc is not None and doc.processing_status == "failed"
    assert doc.error_message is not None and "RAPPORT_KB_DOCUMENT_SECONDS" in doc.error_message
    assert doc.charged_units == 0
    assert await queue.waiting() == 0


def test_units_are_estimated_from_the_page_count(server: Server) -> None:
    key = server.new_tenant(f"pages-{uuid.uuid4().hex[:8]}")
    data = make_pdf([f"Page {i}." for i in range(100)])
    assert len(data) < 30_000
    with server.client(headers={"X-Api-Key": key}, timeout=60) as http:
        response = http.post(
            "/api/knowledge/files", files={"file": ("thin.pdf", data, "application/pdf")}
        )
    assert response.status_code == 201, response.text
    accepted = response.json()
    assert accepted["estimated_pages"] == 100
    assert accepted["estimated_knowledge_units"] == knowledge_units(100 * TOKENS_PER_PAGE)


def long_clip(sentences: int) -> bytes:
    """ada.wav's sentence ``sentences`` times, each in a 30 s window of its own (silence
    after it), as a 16 kHz WAV: Whisper then hears one sentence a window, one segment each
    (the same words again and again in one window make it retry at higher temperatures)."""
    once = speech.decode(clip("ada.wav"), "audio/wav", max_seconds=120)
    window = np.zeros(30 * speech.SAMPLE_RATE, dtype=np.float32)
    window[: len(once)] = once
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(speech.SAMPLE_RATE)
        wav.writeframes((np.tile(window, sentences) * 32767).astype("<i2").tobytes())
    return out.getvalue()


async def test_accounts_take_turns_for_the_transcriber_and_each_is_capped() -> None:
    stt = Transcriber(workers=1, account_clips=3)
    stt.load()
    done: list[str] = []

    async def one(account: str) -> None:
        await stt.transcribe(clip("ada.wav"), "audio/wav", account=account)
        done.append(account)

    try:
        loud = [asyncio.create_task(one("loud")) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(RateLimited) as refused:
            await stt.transcribe(clip("ada.wav"), "audio/wav", account="loud")
        assert refused.value.failure.status == 429
        assert refused.value.headers == {"Retry-After": "1"}
        await asyncio.gather(*loud, one("quiet"))
    finally:
        stt.close()
    # Turns: the loud account's clip running and the one whose turn came before the quiet
    # account arrived, then the quiet one, not after all of the loud one's (FIFO).
    assert done == ["loud", "loud", "quiet", "loud"]


async def test_a_clip_whose_turn_gave_up_is_not_transcribed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stt = Transcriber(workers=1, vad=False)  # VAD would cut the silences out
    model = stt.load()
    decoded: list[bytes] = []
    finished: list[int] = []
    first_segment = threading.Event()
    decode, transcribe = speech.decode, model.transcribe

    def seen_decode(data: bytes, *args: Any) -> np.ndarray:
        decoded.append(data)
        return decode(data, *args)

    def counted(audio: np.ndarray, **kwargs: Any):  # the real model, its segments watched
        segments, info = transcribe(audio, **kwargs)

        def watched():
            for segment in segments:
                first_segment.set()
                yield segment
            finished.append(len(audio))

        return watched(), info

    long, short = long_clip(4), clip("ada.wav")
    monkeypatch.setattr(speech, "decode", seen_decode)
    monkeypatch.setattr(model, "transcribe", counted)
    try:
        running = asyncio.create_task(stt.transcribe(long, "audio/wav", account="a"))
        assert await asyncio.to_thread(first_segment.wait, 60)
        # A turn whose deadline passes while its clip waits behind the long one.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stt.transcribe(short, "audio/wav", account="b"), 0.05)
        running.cancel()  # the long clip's caller leaves while it is transcribed
        with pytest.raises(asyncio.CancelledError):
            await running
        after = await stt.transcribe(clip("ada.ogg"), "audio/ogg", account="c")
    finally:
        stt.close()
    assert "price" in after.text.lower()
    assert short not in decoded  # the timed-out clip was never decoded, let alone heard
    # The long clip stopped at a segment: only the last clip's transcription ran to its end.
    assert len(finished) == 1
