"""``POST /api/v1/conversation`` and the per-user memory routes, as seed 004 documents them.

The route parses, calls the turn runner (:mod:`engine.turn_runner`) and renders. Order of
work, each step before anything costlier: the body is decoded and validated by msgspec
(base64 sizes checked on the text, before any decoding), media is decoded and checked, then
the runner claims the Idempotency-Key, spends a request and runs the turn. A validation
failure stores nothing and spends nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.operations import Operation
from api.problems import invalid_input, nested_too_deeply, render
from api.queries import parse_query
from api.responses import JSON
from api.services import Services
from engine.apikeys import Principal
from engine.errors import Failure, NotFound, ValidationFailed
from engine.idempotency import MAX_KEY_LENGTH, IdempotencyKey
from engine.ids import UserId, is_user_id
from engine.media import (
    MAX_IMAGE_B64,
    MAX_VOICE_B64,
    ImageMime,
    VoiceMime,
    check_image,
    decode_base64,
)
from engine.memory import TurnStatus
from engine.personas import PersonaPatch
from engine.replies import Image
from engine.turn_runner import TurnFailure, TurnResult
from engine.turns import TurnInput, Voice

MAX_MESSAGE = 4000
Message = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE)]
# The two base64 payloads at their limits, plus room for every other field.
BODY_LIMIT = MAX_IMAGE_B64 + MAX_VOICE_B64 + 256 * 1024


class ConversationRequest(msgspec.Struct):
    user_id: UserId
    message: Message | None = None
    image_b64: Annotated[str, msgspec.Meta(max_length=MAX_IMAGE_B64)] | None = None
    image_mime: ImageMime | None = None
    voice_b64: Annotated[str, msgspec.Meta(max_length=MAX_VOICE_B64)] | None = None
    voice_mime: VoiceMime | None = None
    persona: PersonaPatch | None = None


class LatencyBreakdown(msgspec.Struct):
    queue_latency_ms: int
    worker_latency_ms: int
    total_latency_ms: int


class ConversationReply(msgspec.Struct, omit_defaults=True):
    reply: str
    latency_ms: int
    latency_breakdown: LatencyBreakdown
    request_id: str
    sources: list[str]
    """Addition to seed 004: external_ids of the knowledge the reply used."""
    transcript: str | None = None
    """Addition to seed 004: what the voice note said, when one was sent."""


class TurnView(msgspec.Struct):
    at: datetime
    message: str
    reply: str
    request_id: str
    sources: list[str]
    status: TurnStatus
    """``cancelled`` when the reply was stopped (a live session's cancel, barge-in or a socket
    gone): ``reply`` is then what had been said of it."""


class HistoryPage(msgspec.Struct):
    user_id: str
    items: list[TurnView]
    total: int
    limit: int
    offset: int


_decode_request = msgspec.json.Decoder(ConversationRequest).decode
# Sorted keys: two payloads that differ only in key order or spacing are the same payload.
_canonical = msgspec.json.Encoder(order="sorted").encode


def parse(body: bytes) -> ConversationRequest:
    try:
        request = _decode_request(body)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
    except msgspec.DecodeError:
        raise ValidationFailed("The body is not valid JSON.") from None
    except RecursionError:
        raise nested_too_deeply() from None
    # Seed 004's rules between fields.
    if request.message is None and request.image_b64 is None and request.voice_b64 is None:
        raise ValidationFailed(
            "At least one of message, image_b64 or voice_b64 is required.",
            errors={"message": ["message, image_b64 or voice_b64 is required"]},
        )
    if request.image_mime is not None and request.image_b64 is None:
        raise ValidationFailed(
            "image_mime was sent without image_b64.",
            errors={"image_mime": ["only allowed together with image_b64"]},
        )
    if request.image_b64 is not None and request.image_mime is None:
        raise ValidationFailed(
            "image_b64 needs image_mime.", errors={"image_mime": ["required with image_b64"]}
        )
    return request


def turn_input(request: ConversationRequest, account_id: str, request_id: str) -> TurnInput:
    image = None
    if request.image_b64 is not None and request.image_mime is not None:
        data = decode_base64("image_b64", request.image_b64)
        check_image(data, request.image_mime)
        image = Image(data=data, mime=request.image_mime)
    voice = None
    if request.voice_b64 is not None:
        voice = Voice(decode_base64("voice_b64", request.voice_b64), request.voice_mime)
    return TurnInput(
        account_id=account_id,
        user_id=request.user_id,
        message=request.message or "",
        request_id=request_id,
        image=image,
        voice=voice,
        persona_changes=request.persona.changes() if request.persona else None,
    )


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.",
            errors={"Idempotency-Key": [f"1..{MAX_KEY_LENGTH} characters"]},
        )
    return key


async def conversation(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    payload = parse(await request.body())
    turn = turn_input(payload, principal.account_id, request.state.request_id)
    key = idempotency_key(request)
    answer = await services.runner.run(
        turn,
        key=None if key is None else IdempotencyKey(key, fingerprint(payload)),
        # The per-key window is counted with the rest of the turn's opening reads.
        key_slot=principal.window,
        started=request.state.started,
    )
    headers = answer.quota.headers() if answer.quota else {}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    match answer.record:
        case TurnResult() as result:
            return JSON(reply_body(result), headers=headers)
        case TurnFailure() as failure:
            # The first request's body, its request id included (seed 004: byte for byte).
            state = {**request.scope["state"], "request_id": failure.request_id}
            response = render({**request.scope, "state": state}, failure.error())
            response.headers.update(headers)
            return response


def fingerprint(payload: ConversationRequest) -> str:
    return hashlib.sha256(_canonical(payload)).hexdigest()


def reply_body(result: TurnResult) -> ConversationReply:
    return ConversationReply(
        reply=result.reply,
        latency_ms=result.latency.total_ms,
        latency_breakdown=LatencyBreakdown(
            queue_latency_ms=result.latency.queue_ms,
            worker_latency_ms=result.latency.worker_ms,
            total_latency_ms=result.latency.total_ms,
        ),
        request_id=result.request_id,
        sources=result.sources,
        transcript=result.transcript,
    )


def user_id_of(request: Request) -> str:
    user_id: str = request.path_params["user_id"]
    if not is_user_id(user_id):
        raise NotFound("No such user: a user_id is 1 to 128 characters, none of them a control.")
    return user_id


class HistoryQuery(msgspec.Struct):
    """``GET /api/v1/users/{user_id}/history`` paging; other parameters are ignored."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0


async def history(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    user_id = user_id_of(request)
    page = parse_query(request.query_params, HistoryQuery)
    turns, total = await services.memory.history(
        principal.account_id, user_id, limit=page.limit, offset=page.offset
    )
    items = [
        TurnView(
            at=t.at,
            message=t.user,
            reply=t.reply,
            request_id=t.request_id,
            sources=t.sources,
            status=t.status,
        )
        for t in turns
    ]
    return JSON(
        HistoryPage(user_id=user_id, items=items, total=total, limit=page.limit, offset=page.offset)
    )


async def forget(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    await services.memory.forget(principal.account_id, user_id_of(request))
    return Response(status_code=204)


OPERATIONS = [
    Operation(
        "POST",
        "/api/v1/conversation",
        conversation,
        "One turn of conversation: text, image or voice in; a grounded reply out (seed 004).",
        "conversation",
        ConversationReply,
        request=ConversationRequest,
        failures=(
            Failure.VALIDATION_FAILED,
            Failure.INVALID_VOICE_FORMAT,
            Failure.INVALID_VOICE_MIME,
            Failure.VOICE_TRANSCRIPTION_FAILED,
            Failure.BODY_TOO_LARGE,
            Failure.NO_REQUESTS,
            Failure.IDEMPOTENCY_IN_FLIGHT,
            Failure.IDEMPOTENCY_KEY_REUSED,
            Failure.RATE_LIMITED,
            Failure.RATE_LIMITED_IP,
            Failure.QUEUE_UNAVAILABLE,
            Failure.RATE_LIMITER_UNAVAILABLE,
            Failure.IDEMPOTENCY_UNAVAILABLE,
            Failure.UPSTREAM_FAILED,
            Failure.UPSTREAM_TIMEOUT,
        ),
        body_limit=BODY_LIMIT,
    ),
    Operation(
        "GET",
        "/api/v1/users/{user_id:path}/history",
        history,
        "One end user's stored turns, newest first; `limit` 1..100 (20), `offset`.",
        "conversation",
        HistoryPage,
        failures=(Failure.VALIDATION_FAILED, Failure.RATE_LIMITED, Failure.RATE_LIMITED_IP),
    ),
    Operation(
        "DELETE",
        "/api/v1/users/{user_id:path}/memory",
        forget,
        "Forget an end user: their turns, summary and facts. 204 whether or not any existed.",
        "conversation",
        status=204,
        failures=(Failure.RATE_LIMITED, Failure.RATE_LIMITED_IP),
    ),
]
