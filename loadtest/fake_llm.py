"""A fake OpenAI-compatible LLM server, so that Rapport runs without a model.

Two users:

- load tests and anyone trying Rapport: ``rapport fake-llm`` (or ``python -m
  loadtest.fake_llm``) serves it in the foreground, paced like a real model by
  ``--ttft-ms`` and ``--tokens-per-s``, so that what a load test measures is Rapport, not a
  model;
- the test suite, where it is the one stand-in allowed for the LLM: ``FakeOpenAI`` starts it
  as a subprocess on a free loopback port and drives it.

It speaks the wire format of ``POST /v1/chat/completions`` (streamed, one word a chunk, and
not), ``GET /v1/models`` and ``POST /v1/images/generations``, and wants any non-empty bearer
key. Its behaviour is changed while it runs through ``POST /_control/configure`` (the fields
of ``Behaviour``) and put back to the one it started with by ``POST /_control/reset``; the
request bodies it received are read back from ``GET /_control/calls`` (kept until a reset,
so a long load test grows its memory). It only ever listens on the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import math
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

HOST = "127.0.0.1"
"""The only address it listens on: a fake model has no business on a network."""
MODEL = "fake-model"
DEFAULT_REPLY = "This is the fake model speaking."
ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclasses.dataclass
class Behaviour:
    """How the server answers; every field can be changed through ``/_control/configure``."""

    reply: str = DEFAULT_REPLY
    echo: bool = False
    # Before answering at all: the status line and headers, then the role chunk, come late.
    delay_s: float = 0.0
    # Before every word of a stream, the first one included.
    chunk_delay_s: float = 0.0
    status: int | None = None
    # None: every call answers `status`; N: only the next N calls do.
    fail_times: int | None = None
    stall_after_chunks: int | None = None
    # After N words, a chunk whose content is a number: a server that breaks the schema.
    malformed_after_chunks: int | None = None


class State:
    def __init__(self) -> None:
        self.baseline = Behaviour()
        """What the server started with, and what ``reset`` goes back to."""
        self.behaviour = Behaviour()
        self.keep: int | None = None
        """How many request bodies ``calls`` keeps (the latest); None: all, as tests need.
        A long load test against ``rapport fake-llm`` must not grow without bound."""
        self.calls: collections.deque[dict[str, Any]] = collections.deque()
        self.open_streams = 0
        self.departed = 0
        """Requests whose client hung up before the answer began."""

    def reset(self) -> None:
        # A copy: should_fail counts fail_times down in place.
        self.behaviour = dataclasses.replace(self.baseline)
        self.calls = collections.deque(maxlen=self.keep)
        self.departed = 0


state = State()


def error(status: int, message: str) -> JSONResponse:
    kind, code = ERROR_TYPES.get(status, ("server_error", None))
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def authorized(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


async def client_left_during(request: Request, seconds: float | None) -> bool:
    """Sleep ``seconds`` (None: forever); True as soon as the client disconnects instead."""

    # The body has been read, so the next message the server hands us is the disconnect.
    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnect(), timeout=seconds)
    except TimeoutError:
        return False
    state.departed += 1
    return True


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def reply_for(body: dict[str, Any], behaviour: Behaviour) -> str:
    if not behaviour.echo:
        return behaviour.reply
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return "echo: " + (message_text(users[-1]) if users else "")


def should_fail(behaviour: Behaviour) -> bool:
    if behaviour.status is None and behaviour.fail_times is None:
        return False
    if behaviour.fail_times is None:
        return True
    if behaviour.fail_times <= 0:
        return False
    behaviour.fail_times -= 1
    return True


async def chat_completions(request: Request) -> Response:
    try:
        body = await request.json()
    except ValueError:
        return error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object.")
    state.calls.append(body)
    behaviour = state.behaviour

    if not authorized(request):
        return error(401, "You didn't provide an API key.")
    if behaviour.delay_s and await client_left_during(request, behaviour.delay_s):
        return Response(status_code=499)
    if should_fail(behaviour):
        status = behaviour.status or 500
        return error(status, f"The fake server was configured to answer {status}.")

    model = str(body.get("model") or MODEL)
    words = reply_for(body, behaviour).split()
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            stream(model, words, behaviour, usage(body, words) if include_usage else None),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    if behaviour.stall_after_chunks is not None:
        await client_left_during(request, None)
        return Response(status_code=499)
    return JSONResponse(
        {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(body, words),
        }
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(body: dict[str, Any], words: list[str]) -> dict[str, int]:
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    prompt = sum(len(message_text(m).split()) for m in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(words),
        "total_tokens": prompt + len(words),
    }


async def stream(
    model: str, words: list[str], behaviour: Behaviour, final_usage: dict[str, int] | None
) -> AsyncIterator[str]:
    cid, created = completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if final_usage is not None:
            data["usage"] = None
        return f"data: {json.dumps(data)}\n\n"

    state.open_streams += 1
    try:
        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            if i == behaviour.stall_after_chunks:
                # Starlette cancels this generator when the client disconnects.
                await asyncio.Event().wait()
            if i == behaviour.malformed_after_chunks:
                yield chunk({"content": 42})
            if behaviour.chunk_delay_s:
                await asyncio.sleep(behaviour.chunk_delay_s)
            # Like real tokens, every word but the first carries its leading space.
            yield chunk({"content": word if i == 0 else " " + word})
        if behaviour.stall_after_chunks is not None and behaviour.stall_after_chunks >= len(words):
            await asyncio.Event().wait()
        yield chunk({}, "stop")
        if final_usage is not None:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": final_usage,
            }
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        state.open_streams -= 1


# A real 1x1 PNG, as OpenAI's image models answer: base64 in data[0].b64_json.
PORTRAIT_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="  # noqa: E501


async def image_generations(request: Request) -> Response:
    """POST /v1/images/generations, recorded like chat calls; honours status/fail_times."""
    try:
        body = await request.json()
    except ValueError:
        return error(400, "We could not parse the JSON body of your request.")
    state.calls.append(body)
    if not authorized(request):
        return error(401, "You didn't provide an API key.")
    if should_fail(state.behaviour):
        status = state.behaviour.status or 500
        return error(status, f"The fake server was configured to answer {status}.")
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": PORTRAIT_PNG_B64}]})


async def models(request: Request) -> JSONResponse:
    if not authorized(request):
        return error(401, "You didn't provide an API key.")
    model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "rapport-tests"}
    return JSONResponse({"object": "list", "data": [model]})


async def configure(request: Request) -> JSONResponse:
    try:
        settings = await request.json()
        state.behaviour = dataclasses.replace(state.behaviour, **settings)
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(dataclasses.asdict(state.behaviour))


async def calls(request: Request) -> JSONResponse:
    return JSONResponse(
        {"calls": list(state.calls), "open_streams": state.open_streams, "departed": state.departed}
    )


async def reset(request: Request) -> JSONResponse:
    state.reset()
    return JSONResponse(dataclasses.asdict(state.behaviour))


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/images/generations", image_generations, methods=["POST"]),
        Route("/_control/configure", configure, methods=["POST"]),
        Route("/_control/calls", calls, methods=["GET"]),
        Route("/_control/reset", reset, methods=["POST"]),
    ]
)


class FakeOpenAI:
    """The fake server in a subprocess on a free loopback port, stopped by its own pid.

    ``flags`` are more of the command's flags, e.g. ``"--ttft-ms", "300"``."""

    def __init__(self, *flags: str) -> None:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port: int = sock.getsockname()[1]
        self.flags = flags
        self.url = f"http://{HOST}:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> FakeOpenAI:
        # Only a failed start needs the server's stderr; the child keeps its own handle.
        with tempfile.TemporaryFile() as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    "--port",
                    str(self.port),
                    "--keep-calls",
                    "0",
                    *self.flags,
                ],
                cwd=Path(__file__).resolve().parent.parent,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            deadline = time.monotonic() + timeout
            while not self._answers():
                if self.process.poll() is not None:
                    stderr.seek(0)
                    raise RuntimeError(f"fake_llm exited:\n{stderr.read().decode()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"fake_llm did not answer on port {self.port}")
                time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_control/calls", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _control(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = httpx.request(method, f"{self.url}/_control/{path}", timeout=5, **kwargs)
        response.raise_for_status()
        return response.json()

    def configure(self, **behaviour: Any) -> dict[str, Any]:
        """Change the given settings, keep the others; returns the whole behaviour now."""
        return self._control("POST", "configure", json=behaviour)

    def reset(self) -> None:
        """The behaviour it started with and no recorded calls."""
        self._control("POST", "reset")

    def calls(self) -> list[dict[str, Any]]:
        return self._control("GET", "calls")["calls"]

    def open_streams(self) -> int:
        """Streamed responses still being written; 0 once every client is done or gone."""
        return self._control("GET", "calls")["open_streams"]

    def departed(self) -> int:
        """Requests whose client hung up while the server was still to start answering."""
        return self._control("GET", "calls")["departed"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags, shared by ``rapport fake-llm`` and ``python -m loadtest.fake_llm``."""
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="P",
        help="port on 127.0.0.1; 0 (default): any free one",
    )
    parser.add_argument(
        "--ttft-ms",
        type=_milliseconds,
        default=0.0,
        metavar="T",
        help="time to first token: a streamed reply's first word comes T ms after the request, "
        "or one word's time if that is longer (default 0)",
    )
    parser.add_argument(
        "--tokens-per-s",
        type=_rate,
        metavar="R",
        help="streaming pace after the first word: R words a second, one word a chunk "
        "(default: as fast as it can)",
    )
    parser.add_argument(
        "--reply", type=_words, default=DEFAULT_REPLY, metavar="TEXT", help="the words streamed"
    )
    parser.add_argument(
        "--keep-calls",
        type=_whole,
        default=1000,
        metavar="N",
        help="request bodies kept for GET /_control/calls, the latest (default 1000; 0: all)",
    )
    parser.add_argument(
        "--words",
        type=_count,
        metavar="N",
        help="a reply of N words: TEXT's words repeated or cut to N",
    )


def paced(reply: str, ttft_s: float, tokens_per_s: float | None) -> Behaviour:
    """The behaviour of a model whose first word comes ``ttft_s`` after the request, the next
    ones ``tokens_per_s`` a second.

    The time to first token is the existing ``delay_s`` plus one ``chunk_delay_s``: the
    server answers late as a whole, then waits one word's time before each word."""
    chunk_delay_s = 1 / tokens_per_s if tokens_per_s else 0.0
    return Behaviour(
        reply=reply, delay_s=max(ttft_s - chunk_delay_s, 0.0), chunk_delay_s=chunk_delay_s
    )


def listen(port: int) -> socket.socket:
    """A listening TCP socket on the loopback; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def run(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGINT (Ctrl-C) or SIGTERM."""
    reply = args.reply
    if args.words is not None:
        reply = " ".join(itertools.islice(itertools.cycle(reply.split()), args.words))
    state.baseline = paced(reply, args.ttft_ms / 1000, args.tokens_per_s)
    state.keep = args.keep_calls or None
    state.reset()
    try:
        sock = listen(args.port)
    except OSError as exc:
        print(f"fake-llm: cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    base_url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
    pace = f"{args.tokens_per_s:g} words/s" if args.tokens_per_s else "unpaced"
    print(
        f"fake LLM at {base_url}, model {MODEL}: {len(reply.split())} words a reply, first "
        f"after {max(args.ttft_ms, 1000 / (args.tokens_per_s or math.inf)):g} ms, then "
        f"{pace}; Ctrl-C stops it\n"
        f"  RAPPORT_LLM_BASE_URL={base_url} RAPPORT_LLM_MODEL={MODEL}",
        flush=True,
    )
    # Stalled streams never end by themselves, so shutdown must not wait long for them.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, backlog=2048)
    with sock, contextlib.suppress(KeyboardInterrupt):
        # uvicorn shuts down gracefully, then raises the SIGINT again.
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def _port(text: str) -> int:
    port = _whole(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return port


def _whole(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def _count(text: str) -> int:
    count = _whole(text)
    if count < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return count


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def _milliseconds(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _rate(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _words(text: str) -> str:
    if not text.split():
        raise argparse.ArgumentTypeError("the reply needs at least one word")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.fake_llm", description="A fake OpenAI-compatible LLM server."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
