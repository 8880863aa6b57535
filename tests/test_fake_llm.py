"""The fake OpenAI server, checked with the real ``openai`` client, so that tests built on it
fail because of the code under test and not because of the fake; and ``rapport fake-llm``,
the same server paced like a model for load tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from loadtest.fake_llm import DEFAULT_REPLY, FakeOpenAI, add_arguments, listen, paced
from tests.conftest import free_port

USER = [{"role": "user", "content": "tell me a secret"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    running = FakeOpenAI().start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def clean(fake: FakeOpenAI) -> None:
    fake.reset()


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=5
    ) as client:
        yield client


async def stream_deltas(client: openai.AsyncOpenAI) -> list[str | None]:
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    return [chunk.choices[0].delta.content async for chunk in stream]


async def test_streams_one_chunk_per_word(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.configure(reply="alpha beta gamma")
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]

    assert [c.choices[0].delta.content for c in chunks] == ["", "alpha", " beta", " gamma", None]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, None, "stop"]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1


async def test_stream_wire_format(fake: FakeOpenAI) -> None:
    fake.configure(reply="one two")
    async with httpx.AsyncClient(headers={"Authorization": "Bearer sk-test"}) as http:
        response = await http.post(
            f"{fake.base_url}/chat/completions",
            json={"model": "m", "messages": USER, "stream": True},
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\ndata: [DONE]\n\n")
    events = response.text.split("\n\n")[:-2]
    assert all(event.startswith("data: ") for event in events)
    chunks = [json.loads(event.removeprefix("data: ")) for event in events]
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "m"
    choices = [chunk["choices"] for chunk in chunks]
    assert choices[0] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [c[0]["delta"] for c in choices[1:-1]] == [{"content": "one"}, {"content": " two"}]
    assert choices[-1][0]["delta"] == {}
    assert choices[-1][0]["finish_reason"] == "stop"


async def test_stream_usage_when_asked(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.configure(reply="alpha beta gamma")
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert [c.usage for c in chunks[:-1]] == [None] * 5
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_completion_without_stream(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.configure(reply="alpha beta gamma")
    completion = await client.chat.completions.create(model="m", messages=USER)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "alpha beta gamma"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 7


async def test_default_reply_echoes_nothing(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert "secret" not in DEFAULT_REPLY


async def test_echo_answers_the_last_user_message(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.configure(echo=True)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hello there"},
    ]
    completion = await client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "echo: hello there"
    assert "".join(filter(None, await stream_deltas(client))) == "echo: tell me a secret"


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
async def test_configured_status_is_an_openai_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    fake.configure(status=status)
    for stream in (False, True):
        with pytest.raises(error) as raised:
            await client.chat.completions.create(model="m", messages=USER, stream=stream)
        assert raised.value.status_code == status
        assert isinstance(raised.value.body, dict)
        assert set(raised.value.body) == {"message", "type", "param", "code"}
    assert len(fake.calls()) == 2  # failing calls are recorded too


async def test_fail_times_then_recovers(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.configure(status=500, fail_times=2, reply="back again")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=USER)
    completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "back again"
    assert len(fake.calls()) == 3


async def test_missing_key_is_401(fake: FakeOpenAI) -> None:
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
            response = await http.post(
                f"{fake.base_url}/chat/completions", json={"messages": USER}, headers=headers
            )
            assert response.status_code == 401
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert (await http.get(f"{fake.base_url}/models")).status_code == 401
    assert len(fake.calls()) == 3


async def test_delay_longer_than_client_timeout(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.configure(delay_s=3)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - started < 2


async def test_chunk_delay_paces_the_stream(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.configure(reply="a b c", chunk_delay_s=0.1)
    started = time.monotonic()
    assert await stream_deltas(client) == ["", "a", " b", " c", None]
    assert time.monotonic() - started >= 0.3


async def test_stall_times_out_and_frees_the_stream(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.configure(reply="one two three four", stall_after_chunks=2)
    received: list[str | None] = []
    with pytest.raises(openai.APITimeoutError):
        stream = await client.with_options(timeout=0.3).chat.completions.create(
            model="m", messages=USER, stream=True
        )
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
            if len(received) == 3:
                assert fake.open_streams() == 1
    assert received == ["", "one", " two"]

    # The client has gone, so the server must have dropped the stalled stream.
    for _ in range(60):
        if fake.open_streams() == 0:
            break
        await asyncio.sleep(0.05)
    assert fake.open_streams() == 0


async def test_calls_are_recorded_in_order(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="first", messages=USER)
    await stream_deltas(client)
    calls = fake.calls()
    assert [call["model"] for call in calls] == ["first", "m"]
    assert [call.get("stream", False) for call in calls] == [False, True]
    assert calls[0]["messages"] == USER

    fake.reset()
    assert fake.calls() == []


async def test_configure_rejects_unknown_keys(fake: FakeOpenAI) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        fake.configure(replay="typo")


async def test_lists_one_model(client: openai.AsyncOpenAI) -> None:
    models = [model async for model in client.models.list()]
    assert [model.id for model in models] == ["fake-model"]


TTFT_S, TOKENS_PER_S, WORDS = 0.3, 20, 10
PACE = ("--ttft-ms", "300", "--tokens-per-s", "20", "--words", "10")


@pytest.fixture(scope="module")
def paced_fake() -> Iterator[FakeOpenAI]:
    running = FakeOpenAI(*PACE).start()
    yield running
    running.stop()


async def test_the_pace_flags_hold(paced_fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(
        base_url=paced_fake.base_url, api_key="sk-test", max_retries=0, timeout=5
    ) as client:
        started = time.monotonic()
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        arrivals = [
            (time.monotonic() - started, chunk.choices[0].delta.content)
            async for chunk in stream
            if chunk.choices[0].delta.content
        ]
    assert "".join(word for _, word in arrivals) == " ".join((DEFAULT_REPLY.split() * 2)[:WORDS])
    # Lower bounds only, with slack: a loaded machine is slow, never early.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first >= 0.9 * TTFT_S
    assert last >= 0.9 * (TTFT_S + (WORDS - 1) / TOKENS_PER_S)


async def test_reset_goes_back_to_the_flags(paced_fake: FakeOpenAI) -> None:
    paced_fake.configure(reply="other", delay_s=0, chunk_delay_s=0, status=500)
    paced_fake.reset()
    behaviour = paced_fake.configure()
    assert behaviour["delay_s"] == pytest.approx(TTFT_S - 1 / TOKENS_PER_S)
    assert behaviour["chunk_delay_s"] == pytest.approx(1 / TOKENS_PER_S)
    assert len(behaviour["reply"].split()) == WORDS
    assert behaviour["status"] is None


def test_the_first_word_waits_ttft_or_one_word() -> None:
    # delay_s answers late as a whole; every word, the first too, waits chunk_delay_s.
    assert paced("a b", 0.3, None).delay_s == 0.3
    assert paced("a b", 0.3, 10).delay_s == pytest.approx(0.2)
    assert paced("a b", 0.3, 10).chunk_delay_s == pytest.approx(0.1)
    assert paced("a b", 0.05, 10).delay_s == 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--tokens-per-s", "0"],
        ["--ttft-ms", "-1"],
        ["--ttft-ms", "inf"],
        ["--words", "0"],
        ["--port", "65536"],
        ["--reply", " "],
    ],
)
def test_bad_flags_are_refused(flags: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(flags)


def test_port_0_is_a_free_loopback_port() -> None:
    with listen(0) as sock:
        host, port = sock.getsockname()
    assert host == "127.0.0.1"
    assert port > 0


def test_rapport_fake_llm_streams_until_ctrl_c() -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "api.cli", "fake-llm", "--port", str(port)]
    command += ["--ttft-ms", "50", "--tokens-per-s", "100", "--reply", "hello from the fake"]
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        with openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=5) as llm:
            while True:
                assert process.poll() is None, "rapport fake-llm exited"
                try:
                    assert [model.id for model in llm.models.list()] == ["fake-model"]
                    break
                except openai.APIConnectionError:
                    assert time.monotonic() < deadline, "rapport fake-llm did not answer"
                    time.sleep(0.05)
            stream = llm.chat.completions.create(model="fake-model", messages=USER, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == "hello from the fake"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    assert process.returncode == 0, err
    assert f"RAPPORT_LLM_BASE_URL={base_url} RAPPORT_LLM_MODEL=fake-model" in out
    assert "Traceback" not in err


def test_a_long_run_keeps_only_the_latest_request_bodies() -> None:
    fake = FakeOpenAI("--keep-calls", "2").start()
    try:
        with httpx.Client(base_url=fake.base_url, timeout=10) as client:
            for n in range(3):
                body = {"model": "fake-model", "messages": [{"role": "user", "content": str(n)}]}
                answer = client.post(
                    "/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}
                )
                assert answer.status_code == 200, answer.text
        assert [call["messages"][0]["content"] for call in fake.calls()] == ["1", "2"]
    finally:
        fake.stop()
