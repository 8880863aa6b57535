"""The one error table, and the exceptions that point into it.

Every failure Rapport can report is a row of :class:`Failure`: HTTP status, the stable
``code`` of the ``/api/`` family (RFC 9457 problem details, codes of seed 000), the ``code``
of the ``/api/v1/`` family (the ``{"detail": ...}`` envelope of seed 004), a title, and the
WebSocket close code used when the failure ends a live session. Adapters translate Redis,
Chroma and OpenAI errors into these exceptions at the boundary; nothing else reaches a client.

Exception tree, grouped by cause::

    RapportError
    ├── AuthError                    the caller is not who they must be
    │   ├── MissingApiKey
    │   ├── InvalidApiKey
    │   ├── DisabledApiKey
    │   └── SessionTokenInvalid      a live session's token: bad, expired or another's
    ├── RequestError                 the request itself is wrong
    │   ├── ValidationFailed
    │   ├── NotFound
    │   ├── MethodNotAllowed
    │   ├── BodyTooLarge
    │   ├── UnsupportedMediaType     a JSON route sent a body of another type
    │   ├── Conflict
    │   ├── PreconditionFailed       the request needs something that is not there
    │   ├── IdempotencyInFlight
    │   ├── IdempotencyKeyReused
    │   ├── InvalidSignature         an upload's bytes are not its declared type
    │   ├── UnsupportedType
    │   ├── FileTooLarge
    │   └── PageLimitExceeded
    ├── LimitError                   the account or client used up an allowance
    │   ├── NoRequests               request balance at zero
    │   ├── KnowledgeQuotaExceeded   knowledge or storage units
    │   ├── RateLimited              per API key
    │   ├── RateLimitedIp            per client IP
    │   ├── SessionTimeLimit         outside the persona's opening hours
    │   ├── SessionInteractionLimit  a live session's billing units spent
    │   └── SessionDurationLimit     a live session's wall-clock time spent
    ├── SessionError                 a live session cannot go on
    │   ├── SessionGone              unknown, or ended
    │   ├── SessionReplaced          a newer connection took it
    │   └── SessionIdle              no user message for RAPPORT_SESSION_IDLE_SECONDS
    ├── UnavailableError             a component we depend on is down; retry later
    │   ├── StateUnavailable         Redis
    │   ├── RateLimiterUnavailable   Redis, as seen by the rate limiter
    │   ├── IdempotencyUnavailable   Redis, as seen by the idempotency store
    │   ├── IndexUnavailable         Chroma
    │   └── QueueUnavailable         every worker busy and the queue full
    ├── UpstreamError                the reply model failed us
    │   ├── UpstreamTimeout
    │   └── UpstreamFailed
    ├── Replayed                     a kept failure, raised again for a repeated key
    └── InternalError                a bug; the client sees the code, never the text
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar, NamedTuple


class Row(NamedTuple):
    status: int
    code: str
    v1_code: str
    title: str
    close_code: int


@enum.unique
class Failure(Row, enum.Enum):
    """The error table. Codes are a public contract: never rename one."""

    # Seed 000 names the /api/ codes; seed 004 the /api/v1/ ones. Seed 004 folds a disabled
    # key into invalid_api_key ("Key is invalid or deactivated").
    MISSING_API_KEY = Row(401, "auth.unauthorized", "missing_api_key", "Unauthorized", 4001)
    INVALID_API_KEY = Row(401, "auth.api_key_invalid", "invalid_api_key", "API key invalid", 4001)
    DISABLED_API_KEY = Row(
        401, "auth.api_key_disabled", "invalid_api_key", "API key disabled", 4001
    )
    VALIDATION_FAILED = Row(400, "validation.failed", "invalid_payload", "Validation failed", 1008)
    NOT_FOUND = Row(404, "resource.not_found", "not_found", "Resource not found", 4004)
    # Neither seed names codes for 405 and 413 outside uploads; these follow their style.
    METHOD_NOT_ALLOWED = Row(
        405, "request.method_not_allowed", "method_not_allowed", "Method not allowed", 1008
    )
    BODY_TOO_LARGE = Row(
        413, "request.body_too_large", "payload_too_large", "Request body too large", 1009
    )
    # RFC 9110 §15.5.16: a JSON route's body declared as something else (a form, text).
    UNSUPPORTED_MEDIA_TYPE = Row(
        415,
        "request.unsupported_media_type",
        "unsupported_media_type",
        "Unsupported media type",
        1008,
    )
    CONFLICT = Row(409, "resource.conflict", "conflict", "Resource conflict", 1008)
    # Seed 003 answers 400 with a message when a portrait cannot be made; no code is named.
    PRECONDITION_FAILED = Row(
        400, "request.precondition_failed", "precondition_failed", "Precondition failed", 1008
    )
    # Seed 004 names the /api/v1/ codes of idempotency, balance, rate limits and outages.
    IDEMPOTENCY_IN_FLIGHT = Row(
        409, "idempotency.in_flight", "idempotency_in_flight", "Request still in progress", 1008
    )
    IDEMPOTENCY_KEY_REUSED = Row(
        409,
        "idempotency.key_reused",
        "idempotency_key_reused_with_different_payload",
        "Idempotency key reused with a different payload",
        1008,
    )
    # Seed 000's upload errors and its knowledge quota code.
    INVALID_SIGNATURE = Row(
        400, "upload.invalid_signature", "invalid_signature", "Invalid file signature", 1008
    )
    UNSUPPORTED_TYPE = Row(
        415, "upload.unsupported_type", "unsupported_type", "Unsupported file type", 1008
    )
    FILE_TOO_LARGE = Row(413, "upload.file_too_large", "file_too_large", "File too large", 1009)
    PAGE_LIMIT_EXCEEDED = Row(
        413, "upload.page_limit_exceeded", "page_limit_exceeded", "Page limit exceeded", 1008
    )
    # Seed 004's voice codes; the /api/ family has none, these follow its naming.
    INVALID_VOICE_FORMAT = Row(
        400, "voice.invalid_format", "invalid_voice_format", "Voice format invalid", 1008
    )
    INVALID_VOICE_MIME = Row(
        400, "voice.invalid_mime", "invalid_voice_mime", "Voice type mismatch", 1008
    )
    VOICE_TRANSCRIPTION_FAILED = Row(
        400, "voice.transcription_failed", "voice_transcription_failed", "No speech", 1008
    )
    KNOWLEDGE_QUOTA_EXCEEDED = Row(
        402, "knowledge.quota_exceeded", "knowledge_quota_exceeded", "Quota exceeded", 1008
    )
    NO_REQUESTS = Row(
        402, "limits.quota_exceeded", "no_requests", "Request balance exhausted", 1008
    )
    RATE_LIMITED = Row(429, "limits.rate_exceeded", "rate_limited", "Rate limit exceeded", 1008)
    RATE_LIMITED_IP = Row(
        429, "limits.rate_exceeded", "rate_limited_ip", "Rate limit exceeded for this IP", 1008
    )
    STATE_UNAVAILABLE = Row(
        503, "server.unavailable", "service_unavailable", "State store unavailable", 1011
    )
    RATE_LIMITER_UNAVAILABLE = Row(
        503, "server.unavailable", "rate_limiter_unavailable", "Rate limiter unavailable", 1011
    )
    IDEMPOTENCY_UNAVAILABLE = Row(
        503,
        "server.unavailable",
        "idempotency_unavailable",
        "Idempotency storage unavailable",
        1011,
    )
    # RFC 6455 §7.4.1 leaves 1013 ("try again later") to the IANA registry, which has it.
    QUEUE_UNAVAILABLE = Row(503, "server.busy", "queue_unavailable", "Turn queue full", 1013)
    UPSTREAM_TIMEOUT = Row(
        504, "server.upstream_timeout", "upstream_timeout", "Reply timed out", 1011
    )
    UPSTREAM_FAILED = Row(502, "server.upstream_error", "upstream_error", "Reply failed", 1011)
    INDEX_UNAVAILABLE = Row(
        503, "server.unavailable", "service_unavailable", "Vector index unavailable", 1011
    )
    # Seed 000's session limits: the interaction and duration limits are "returned only as
    # WebSocket close 4005 / 4006, never as HTTP"; their statuses are the seed's, for the table.
    SESSION_TIME_LIMIT = Row(
        409, "limits.session_time_limit", "session_time_limit", "Session time-of-day limit", 1008
    )
    SESSION_INTERACTION_LIMIT = Row(
        429,
        "limits.session_interaction_limit",
        "session_interaction_limit",
        "Session interaction limit",
        4005,
    )
    SESSION_DURATION_LIMIT = Row(
        409,
        "limits.session_duration_limit",
        "session_duration_limit",
        "Session duration limit",
        4006,
    )
    # The seeds name no codes for these; they follow seed 000's naming, and their close codes
    # are docs/architecture.md's, "Live sessions" (4001 after accepting, so a browser sees it).
    # Seed 000's capacity and origin codes. The account's cap is never queued; a full
    # waiting room is a 503 "back off and retry" (1013, "try again later", on a socket).
    CONCURRENT_SESSION = Row(
        429, "limits.concurrent_session", "concurrent_session", "Concurrent session limit", 1008
    )
    WAITING_ROOM_FULL = Row(
        503, "limits.waiting_room_full", "waiting_room_full", "Waiting room full", 1013
    )
    ORIGIN_NOT_ALLOWED = Row(
        403, "auth.origin_not_allowed", "origin_not_allowed", "Origin not allowed", 1008
    )
    # Seed 000's dashboard codes: a failed sign-in, and credentials that may not do this (an
    # API key on a browser-only route, a viewer's write, a cookie write without CSRF proof).
    INVALID_CREDENTIALS = Row(
        401, "auth.invalid_credentials", "invalid_credentials", "Invalid credentials", 4001
    )
    FORBIDDEN = Row(403, "auth.forbidden", "forbidden", "Forbidden", 1008)
    SESSION_TOKEN_INVALID = Row(
        401, "auth.session_token_invalid", "invalid_session_token", "Session token invalid", 4001
    )
    SESSION_GONE = Row(404, "session.not_found", "session_not_found", "Session not found", 4004)
    SESSION_REPLACED = Row(409, "session.replaced", "session_replaced", "Session replaced", 4009)
    # DESIGN.md, "Slots": a quiet session gives its slot back, with its own close code (not
    # 4005/4006: no budget ran out). Close-only, like those; 408 Request Timeout for the table.
    SESSION_IDLE = Row(408, "session.idle_timeout", "session_idle_timeout", "Session idle", 4007)
    INTERNAL = Row(500, "server.error", "internal_error", "Server error", 1011)


class RapportError(Exception):
    """Root of every failure a client may be told about."""

    failure: ClassVar[Failure] = Failure.INTERNAL
    default_message: ClassVar[str] = "Unexpected internal failure."

    def __init__(
        self,
        message: str | None = None,
        *,
        errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
        scope: str | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        self.scope = scope
        """Seed 000's ``scope`` extension of a 429: which partition ran out."""
        super().__init__(self.message)


class Replayed(RapportError):
    """A failure kept for an idempotency key, raised again for a repeat: its row and its
    message are the first request's."""

    def __init__(
        self, failure: Failure, message: str, *, errors: Mapping[str, list[str]] | None = None
    ) -> None:
        super().__init__(message, errors=errors)
        self.failure = failure  # type: ignore[misc]  # this instance's row, not the class's


class AuthError(RapportError):
    pass


class MissingApiKey(AuthError):
    failure = Failure.MISSING_API_KEY
    default_message = "No API key provided: send X-Api-Key or Authorization: Bearer."


class InvalidApiKey(AuthError):
    failure = Failure.INVALID_API_KEY
    default_message = "The API key is not valid."


class DisabledApiKey(AuthError):
    failure = Failure.DISABLED_API_KEY
    default_message = "The API key slot is disabled; use the other slot or regenerate this one."


class SessionTokenInvalid(AuthError):
    failure = Failure.SESSION_TOKEN_INVALID
    default_message = "The session token is not valid for this session."


class SignedOut(AuthError):
    """A dashboard session cookie that names no live session (signed out, expired)."""

    failure = Failure.MISSING_API_KEY
    default_message = "The dashboard session has ended; sign in again."


class InvalidCredentials(AuthError):
    """One answer for an unknown email, a wrong password, a disabled user and a user with
    no password yet (seed 000; OWASP ASVS V6.3.8): none tells a stranger who exists."""

    failure = Failure.INVALID_CREDENTIALS
    default_message = "Email or password is incorrect."


class Forbidden(AuthError):
    failure = Failure.FORBIDDEN
    default_message = "These credentials may not do this."


class RequestError(RapportError):
    pass


class ValidationFailed(RequestError):
    failure = Failure.VALIDATION_FAILED
    default_message = "One or more request fields failed validation."


class NotFound(RequestError):
    failure = Failure.NOT_FOUND
    default_message = "No resource exists at this address."


class MethodNotAllowed(RequestError):
    failure = Failure.METHOD_NOT_ALLOWED
    default_message = "This method is not allowed on this address."


class BodyTooLarge(RequestError):
    failure = Failure.BODY_TOO_LARGE
    default_message = "The request body is larger than this endpoint accepts."


class UnsupportedMediaType(RequestError):
    failure = Failure.UNSUPPORTED_MEDIA_TYPE
    default_message = "Send the body as JSON, with Content-Type: application/json."


class Conflict(RequestError):
    failure = Failure.CONFLICT
    default_message = "The request conflicts with the resource's current state."


class PreconditionFailed(RequestError):
    failure = Failure.PRECONDITION_FAILED
    default_message = "The request needs something this server or resource does not have."


class IdempotencyInFlight(RequestError):
    failure = Failure.IDEMPOTENCY_IN_FLIGHT
    default_message = "A request with this Idempotency-Key is still being processed."


class IdempotencyKeyReused(RequestError):
    failure = Failure.IDEMPOTENCY_KEY_REUSED
    default_message = "This Idempotency-Key was used with a different payload."


class InvalidSignature(RequestError):
    failure = Failure.INVALID_SIGNATURE
    default_message = "The file's content does not match its declared type."


class UnsupportedType(RequestError):
    failure = Failure.UNSUPPORTED_TYPE
    default_message = "This file type is not accepted here: send txt, md, html, pdf or docx."


class FileTooLarge(RequestError):
    failure = Failure.FILE_TOO_LARGE
    default_message = "The file is larger than this endpoint accepts."


class PageLimitExceeded(RequestError):
    failure = Failure.PAGE_LIMIT_EXCEEDED
    default_message = "The document has more pages than can be ingested; split it."


class InvalidVoiceFormat(RequestError):
    failure = Failure.INVALID_VOICE_FORMAT
    default_message = "The voice payload is not audio this server can decode."


class InvalidVoiceMime(RequestError):
    failure = Failure.INVALID_VOICE_MIME
    default_message = "voice_mime does not match the audio that was sent."


class VoiceTranscriptionFailed(RequestError):
    failure = Failure.VOICE_TRANSCRIPTION_FAILED
    default_message = "No speech could be recognised in the voice payload."


class LimitError(RapportError):
    pass


class KnowledgeQuotaExceeded(LimitError):
    failure = Failure.KNOWLEDGE_QUOTA_EXCEEDED
    default_message = "The account's knowledge or storage quota would be exceeded."


class NoRequests(LimitError):
    failure = Failure.NO_REQUESTS
    default_message = "Not enough request balance; ask the operator to refill it."


class RateLimited(LimitError):
    failure = Failure.RATE_LIMITED
    default_message = "Too many requests for this API key; retry after the Retry-After delay."


class RateLimitedIp(LimitError):
    failure = Failure.RATE_LIMITED_IP
    default_message = "Too many requests from this IP; retry after the Retry-After delay."


class SessionTimeLimit(LimitError):
    failure = Failure.SESSION_TIME_LIMIT
    default_message = "Sessions cannot start now: retry within the persona's opening hours."


class SessionInteractionLimit(LimitError):
    failure = Failure.SESSION_INTERACTION_LIMIT
    default_message = "The session's interaction budget is spent."


class SessionDurationLimit(LimitError):
    failure = Failure.SESSION_DURATION_LIMIT
    default_message = "The session's time is up."


class ConcurrentSessionLimit(LimitError):
    failure = Failure.CONCURRENT_SESSION
    default_message = "The account already has the maximum number of active sessions."


class WaitingRoomFull(LimitError):
    failure = Failure.WAITING_ROOM_FULL
    default_message = "The waiting room is full; back off and retry after a short delay."


class OriginNotAllowed(AuthError):
    failure = Failure.ORIGIN_NOT_ALLOWED
    default_message = "The request's origin is not in the account's allowed origins."


class SessionError(RapportError):
    pass


class SessionGone(SessionError):
    failure = Failure.SESSION_GONE
    default_message = "No such session, or it has ended."


class SessionReplaced(SessionError):
    failure = Failure.SESSION_REPLACED
    default_message = "A newer connection took this session over."


class SessionIdle(SessionError):
    failure = Failure.SESSION_IDLE
    default_message = "The session ended: no user message within RAPPORT_SESSION_IDLE_SECONDS."


class UnavailableError(RapportError):
    # RFC 9110 §10.2.3: Retry-After tells the client when a 503 may be over.
    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class StateUnavailable(UnavailableError):
    failure = Failure.STATE_UNAVAILABLE
    default_message = "The state store is unreachable; retry shortly."


class RateLimiterUnavailable(UnavailableError):
    failure = Failure.RATE_LIMITER_UNAVAILABLE
    default_message = "The rate limiter is unreachable; retry shortly."


class IdempotencyUnavailable(UnavailableError):
    failure = Failure.IDEMPOTENCY_UNAVAILABLE
    default_message = "The idempotency store is unreachable; retry shortly."


class QueueUnavailable(UnavailableError):
    failure = Failure.QUEUE_UNAVAILABLE
    default_message = "Every worker is busy and the queue is full; retry shortly."


class IndexUnavailable(UnavailableError):
    failure = Failure.INDEX_UNAVAILABLE
    default_message = "The vector index is unreachable; retry shortly."


class UpstreamError(RapportError):
    pass


class UpstreamTimeout(UpstreamError):
    failure = Failure.UPSTREAM_TIMEOUT
    default_message = "The reply was not ready in time."


class UpstreamFailed(UpstreamError):
    failure = Failure.UPSTREAM_FAILED
    default_message = "The reply model failed; retry shortly."


class InternalError(RapportError):
    failure = Failure.INTERNAL
