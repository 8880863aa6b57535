"""Replies from any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp, Ollama).

Streaming chat completions through the ``openai`` client. ``max_tokens`` is sent rather
than ``max_completion_tokens``, which several of those servers ignore. The client's own
retries are off: a retry is the caller's decision (and the idempotency key's purpose).

The request goes through the client's documented raw ``post`` rather than
``chat.completions.create``: ``create`` walks every message through its TypedDict
transform, about 0.2 ms of CPU per message, which with a dozen remembered turns was most
of a turn's CPU (BENCHMARKS.md). Our messages are plain JSON already. On the way back the
client frames the server-sent events and maps errors as usual, but each chunk is converted
into the few fields we read (``StreamChunk``, msgspec) instead of the library's pydantic
``ChatCompletionChunk``, whose loose construction cost ~25 µs of CPU a chunk (issue 10).
OpenAI errors become ours here, at the boundary: a timeout is ``upstream_timeout``, any
other failure of the upstream ``upstream_error``.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import openai
from openai import AsyncStream
from openai.types.chat import ChatCompletion

from engine.errors import UpstreamFailed, UpstreamTimeout
from engine.prompt import build_messages, questions_messages, summary_messages
from engine.replies import (
    Emit,
    Reply,
    ReplyDelta,
    ReplyDone,
    ReplySources,
    ReplyStarted,
    TurnContext,
    ignore,
)
from engine.sentences import sentences

SUMMARY_TOKENS = 200


class ChunkDelta(msgspec.Struct):
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChunkDelta = msgspec.field(default_factory=ChunkDelta)


class StreamChunk(msgspec.Struct):
    """What we read of a streamed ``chat.completion.chunk`` (OpenAI's Chat Completions
    streaming reference); unknown fields are ignored, a wrong type is the upstream's fault.
    A chunk without choices (a final usage chunk) carries no text."""

    choices: list[ChunkChoice] = []

    @property
    def text(self) -> str | None:
        return self.choices[0].delta.content if self.choices else None


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """The one boundary where the openai client's errors become ours: a timeout is
    ``upstream_timeout``; any other failure of the upstream (status, connection, a body
    that does not parse) ``upstream_error``. Anything else is our bug and goes on as one."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (openai.OpenAIError, msgspec.ValidationError) as exc:
        raise UpstreamFailed() from exc


class OpenAICompatible:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        timeout: float,
        max_tokens: int,
        vision: bool,
    ) -> None:
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0
        )
        self._model = model
        self._max_tokens = max_tokens
        self._vision = vision

    async def reply(self, context: TurnContext, emit: Emit = ignore) -> Reply:
        parts: list[str] = []
        with upstream_errors():
            stream = await self._client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body={
                    "model": self._model,
                    "messages": build_messages(context, vision=self._vision),
                    "max_tokens": self._max_tokens,
                    "stream": True,
                },
                stream=True,
                # ``object``: the client hands each event's JSON over as decoded, unbuilt.
                stream_cls=AsyncStream[object],
            )
            # The context manager closes the HTTP response on every exit: a cancelled turn
            # (asyncio cancel, a client's reply.cancel) ends the upstream request at once
            # instead of leaving the model generating for nobody.
            async with stream:
                emit(ReplyStarted())
                async for data in stream:
                    delta = msgspec.convert(data, StreamChunk).text
                    if delta:
                        parts.append(delta)
                        emit(ReplyDelta(delta))
        # The documents the model was given, each once, best first (a document comes as up
        # to three of its chunks).
        sources = list(dict.fromkeys(s.external_id for s in context.snippets))
        reply = Reply(text="".join(parts).strip(), sources=sources)
        emit(ReplySources(reply.sources))
        emit(ReplyDone(reply))
        return reply

    async def summarise(self, summary: str) -> str:
        """A condensed version of a memory summary (one short, non-streamed request)."""
        text = await self._complete(summary_messages(summary))
        if not text.strip():
            raise UpstreamFailed("The model returned an empty summary.")
        return text.strip()

    async def questions(
        self, topics: list[str], context: str | None, passages: list[str], count: int
    ) -> list[str]:
        """Questions the passages answer, written by the model (one short request): the
        sentences of its answer that are questions, numbering and bullets dropped."""
        text = await self._complete(questions_messages(topics, context, passages, count))
        said = sentences(text, lowercase_starts=True)
        asked = (_LIST_MARK.sub("", sentence).strip() for sentence in said)
        return list(dict.fromkeys(q for q in asked if q.endswith("?")))[:count]

    async def _complete(self, messages: list[dict[str, Any]]) -> str:
        """One short, non-streamed completion's text ("" for none)."""
        with upstream_errors():
            completion = await self._client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body={"model": self._model, "messages": messages, "max_tokens": SUMMARY_TOKENS},
            )
        return (completion.choices[0].message.content if completion.choices else None) or ""

    async def close(self) -> None:
        await self._client.close()


_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d{1,3}[.)])\s*")


class OpenAIImages:
    """Portraits from an OpenAI-compatible image model (seed 003: gpt-image-1)."""

    def __init__(self, *, base_url: str, api_key: str, model: str, timeout: float) -> None:
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0
        )
        self._model = model

    async def generate(self, prompt: str) -> bytes:
        with upstream_errors():
            result = await self._client.images.generate(
                model=self._model, prompt=prompt, n=1, size="1024x1024"
            )
        # gpt-image-1 always answers base64; a URL would need a download we do not make.
        encoded = result.data[0].b64_json if result.data else None
        if not encoded:
            raise UpstreamFailed("The image model returned no image data.")
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise UpstreamFailed("The image model returned broken image data.") from exc

    async def close(self) -> None:
        await self._client.close()
