"""Seed 002's "Chat" and "Chat History": ``POST /api/kb/v2/chat``, ``GET /api/persona/chats``
and ``GET /api/persona/messages/{chat_id}``.

Bodies are the seed's, ``{"status": "success", ...}``; where the seed is silent (errors,
limits, paging) these are ``/api/`` routes like the others: problem+json, seed 000's rate
limits, seed 001's paging.

**A chat is an end user's conversation.** The account's end users each have one memory
(:mod:`engine.memory`, keyed by account and ``user_id``) that every transport adds to: the
conversation API, this chat and live sessions. So ``chat_id`` names a user's conversation:
``chat_`` followed by the user_id's UTF-8 bytes in unpadded base64url (RFC 4648 §5), e.g.
``user123`` → ``chat_dXNlcjEyMw``. It is reversible, URL-safe (``[A-Za-z0-9_-]``, never a
``/``) and the same on every node; anything that does not decode to a user_id of 1..128
characters in exactly that spelling (padding, other alphabets, non-canonical trailing bits)
is no chat: 404. It is only a name, never a credential: it resolves within the caller's
account, so another account's chat_id finds nothing there (404), never its turns.

**A chat turn is a conversation turn.** ``POST /api/kb/v2/chat`` runs one turn through the
same turn runner as ``POST /api/v1/conversation`` and live sessions, as the account's default
persona: one request of the balance (402 ``limits.quota_exceeded`` at zero), the reply
under the same deadline, the turn remembered. ``context`` goes to the model with the
message, as a voice note's transcript does (:func:`engine.prompt.build_messages`); the
embedded responder, which answers from knowledge only, does not use it. Limits: as an
``/api/`` mutation, seed 000's ``Global`` (per IP) and ``MutationDefault`` (per account)
apply (:mod:`api.ratelimits`); and, being a turn, it also counts against the sending key's
turn window (``RAPPORT_KEY_RPM``, counted by the runner in the turn's opening round trip,
with ``RateLimit-*`` headers), so that moving turns from one API to the other never lifts
the per-key limit on turns.

**History.** ``messages`` are a user's stored turns, oldest first, flattened as the seed
shows them: each turn's user text, then its reply text (a cancelled reply is what was said
of it, possibly ``""``), so even positions are the user's and odd ones the persona's. They
are what memory keeps: its byte bound (``RAPPORT_MEMORY_BYTES``, oldest turns
folded into the summary first) bounds each chat, so neither endpoint pages messages.
``/api/persona/chats`` lists the account's users who have a memory, the latest turn first,
from an index kept by the same script that stores a turn (exact under concurrency);
forgetting a user (``DELETE /api/v1/users/{user_id}/memory``) removes their chat.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.conversation import MAX_MESSAGE, Message
from api.operations import Operation
from api.problems import invalid_input
from api.queries import Paging, parse_query
from api.responses import JSON
from api.services import Services
from engine.apikeys import Principal
from engine.errors import Failure, NotFound, ValidationFailed
from engine.ids import UserId, is_user_id
from engine.memory import Turn
from engine.turn_runner import TurnResult
from engine.turns import TurnInput

CHAT_PREFIX = "chat_"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class ChatData(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    message: Message
    context: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE)] | None = None
    """Extra context for this turn, read by the model with the message; "" is none."""


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    chat_data: ChatData


class ChatReply(msgspec.Struct, kw_only=True):
    status: Literal["success"] = "success"
    chat_id: str
    response: str
    sources: list[str]
    """Addition to seed 002: external_ids of the knowledge the reply used."""


class Chat(msgspec.Struct, kw_only=True):
    chat_id: str
    user_id: str
    messages: list[str]


class ChatPage(msgspec.Struct, kw_only=True):
    status: Literal["success"] = "success"
    chats: list[Chat]
    total_count: int


class ChatMessages(msgspec.Struct, kw_only=True):
    status: Literal["success"] = "success"
    messages: list[str]


_decode_request = msgspec.json.Decoder(ChatRequest).decode


def chat_id_of(user_id: str) -> str:
    """The chat of one end user: ``chat_`` + unpadded base64url of the user_id's UTF-8."""
    return CHAT_PREFIX + base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode()


def user_id_of(chat_id: str) -> str | None:
    """The user_id a chat_id names; None when it is not one :func:`chat_id_of` makes."""
    if not chat_id.startswith(CHAT_PREFIX):
        return None
    body = chat_id.removeprefix(CHAT_PREFIX)
    if not _BASE64URL.fullmatch(body):
        return None
    try:
        user_id = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not is_user_id(user_id) or chat_id_of(user_id) != chat_id:
        return None
    return user_id


def flattened(turns: list[Turn]) -> list[str]:
    """Seed 002's ``messages``: each turn's user text, then its reply, oldest first."""
    return [text for turn in turns for text in (turn.user, turn.reply)]


def parse(body: bytes) -> ChatRequest:
    try:
        return _decode_request(body)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
    except msgspec.DecodeError:
        raise ValidationFailed("The body is not valid JSON.") from None


async def chat(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    data = parse(await request.body()).chat_data
    turn = TurnInput(
        account_id=principal.account_id,
        user_id=data.user_id,
        message=data.message,
        request_id=request.state.request_id,
        context=data.context or None,
    )
    answer = await services.runner.run(
        turn, key_slot=principal.window, started=request.state.started
    )
    # Without an idempotency key, a turn either answers or raises: never a kept record.
    result = answer.record
    assert isinstance(result, TurnResult)
    body = ChatReply(
        chat_id=chat_id_of(data.user_id), response=result.reply, sources=result.sources
    )
    return JSON(body, headers=answer.quota.headers() if answer.quota else {})


async def list_chats(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    page = parse_query(request.query_params, Paging)
    found, total = await services.memory.conversations(
        principal.account_id, limit=page.limit, offset=page.offset
    )
    chats = [
        Chat(chat_id=chat_id_of(user_id), user_id=user_id, messages=flattened(turns))
        for user_id, turns in found
    ]
    return JSON(ChatPage(chats=chats, total_count=total))


async def chat_messages(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    user_id = user_id_of(request.path_params["chat_id"])
    turns = None
    if user_id is not None:
        turns = await services.memory.conversation(principal.account_id, user_id)
    if turns is None:
        raise NotFound("Chat not found.")
    return JSON(ChatMessages(messages=flattened(turns)))


OPERATIONS = [
    Operation(
        "POST",
        "/api/kb/v2/chat",
        chat,
        "One chat turn of an end user with the account's default persona (seed 002); "
        "`chat_id` names the user's conversation.",
        "digital clone",
        ChatReply,
        request=ChatRequest,
        failures=(
            Failure.VALIDATION_FAILED,
            Failure.BODY_TOO_LARGE,
            Failure.NO_REQUESTS,
            Failure.RATE_LIMITED,
            Failure.QUEUE_UNAVAILABLE,
            Failure.UPSTREAM_FAILED,
            Failure.UPSTREAM_TIMEOUT,
        ),
    ),
    Operation(
        "GET",
        "/api/persona/chats",
        list_chats,
        "The conversations of the account's end users, from every transport, latest first; "
        "`limit` 1..200 (50), `offset`.",
        "digital clone",
        ChatPage,
        failures=(Failure.VALIDATION_FAILED,),
    ),
    Operation(
        "GET",
        "/api/persona/messages/{chat_id}",
        chat_messages,
        "One conversation's messages, oldest first: user text, reply, user text, ...",
        "digital clone",
        ChatMessages,
        failures=(Failure.NOT_FOUND,),
    ),
]
