"""The live components one process holds, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from api.metrics import HttpMetrics
from engine.accounts import AccountStore
from engine.apikeys import KeyStore
from engine.balance import Balance
from engine.config import Settings
from engine.idempotency import Idempotency
from engine.llm import OpenAICompatible, OpenAIImages
from engine.memory import MemoryStore
from engine.persona_media import MediaStore
from engine.personas import PersonaStore
from engine.ratelimit import Policy, RateLimits
from engine.replies import ReplyBackend
from engine.responder import EmbeddedResponder
from engine.signin import SignInStore
from engine.speech import Transcriber
from engine.state import Client, redis_boundary
from engine.turn_runner import TurnRunner
from engine.turn_store import TurnStore
from engine.turns import TurnPipeline
from engine.users import UserStore
from engine.workers import WorkerPool
from kb.activation import Activations
from kb.documents import DocumentStore
from kb.embedder import Embedder, shared_embedder
from kb.index import VectorIndex
from kb.ingest import Ingest
from kb.prompts import StarterPrompts
from kb.queue import ProcessingQueue
from kb.retrieval import KnowledgeRetriever
from kb.worker import Processor
from sessions.capacity import Capacity, Sweep
from sessions.socket import Hub, SessionSocket
from sessions.store import CHARGE, SessionStore, session_store
from sessions.waiting_room import QueueHub, QueueSocket, WaitingRoom

# An in-flight idempotency claim outlives the longest turn by this much before it lapses.
CLAIM_MARGIN_SECONDS = 30


class ApiPolicies(NamedTuple):
    """Seed 000's policies on the /api/ routes (:mod:`api.ratelimits`)."""

    global_ip: Policy
    uploads: Policy
    mutations: Policy
    persona_uploads: Policy


class SessionPolicies(NamedTuple):
    """Seed 000's policies on live sessions: upgrades of the session and queue sockets per
    IP, joins and leaves of the waiting room per end user."""

    socket: Policy
    queue_socket: Policy
    queue: Policy


@dataclass
class Services:
    settings: Settings
    redis: Client
    index: VectorIndex
    metrics: HttpMetrics
    accounts: AccountStore = field(init=False)
    keys: KeyStore = field(init=False)
    signins: SignInStore = field(init=False)
    users: UserStore = field(init=False)
    login_policies: tuple[Policy, Policy] = field(init=False)
    """Dashboard sign-in attempts: per client IP, and per email from one IP (api/signin.py)."""
    personas: PersonaStore = field(init=False)
    memory: MemoryStore = field(init=False)
    balance: Balance = field(init=False)
    rate_limits: RateLimits = field(init=False)
    backend: ReplyBackend = field(init=False)
    pool: WorkerPool = field(init=False)
    runner: TurnRunner = field(init=False)
    docs: DocumentStore = field(init=False)
    queue: ProcessingQueue = field(init=False)
    ingest: Ingest = field(init=False)
    activations: Activations = field(init=False)
    starters: StarterPrompts = field(init=False)
    embedder: Embedder = field(init=False)
    processor: Processor = field(init=False)
    api_policies: ApiPolicies = field(init=False)
    session_policies: SessionPolicies = field(init=False)
    media: MediaStore = field(init=False)
    transcriber: Transcriber = field(init=False)
    images: OpenAIImages | None = field(init=False)
    capacity: Capacity = field(init=False)
    sessions: SessionStore = field(init=False)
    hub: Hub = field(init=False)
    socket: SessionSocket = field(init=False)
    waiting_room: WaitingRoom = field(init=False)
    queue_hub: QueueHub = field(init=False)
    queue_socket: QueueSocket = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.accounts = AccountStore(self.redis)
        self.keys = KeyStore(self.redis)
        self.signins = SignInStore(
            self.redis,
            idle_seconds=settings.dashboard_idle_seconds,
            max_seconds=settings.dashboard_max_seconds,
        )
        self.users = UserStore(self.redis, self.signins)
        self.login_policies = (
            Policy("DashboardLoginIp", settings.dashboard_login_ip_rpm, "ip"),
            Policy("DashboardLoginEmail", settings.dashboard_login_email_rpm, "ip"),
        )
        self.personas = PersonaStore(self.redis)
        self.memory = MemoryStore(self.redis, max_bytes=settings.memory_bytes)
        self.balance = Balance(self.redis)
        self.rate_limits = RateLimits(self.redis, key_rpm=settings.key_rpm, ip_rpm=settings.ip_rpm)
        self.api_policies = ApiPolicies(
            Policy("Global", settings.global_ip_rpm, "ip"),
            Policy("KnowledgeUploadsRate", settings.uploads_rpm, "user"),
            Policy("MutationDefault", settings.mutations_rpm, "user"),
            Policy("PersonaUploads", settings.persona_uploads_rpm, "user"),
        )
        self.session_policies = SessionPolicies(
            socket=Policy("SessionWebSocket", settings.session_ws_rpm, "ip"),
            queue_socket=Policy("WaitingRoomQueueWs", settings.queue_ws_rpm, "ip"),
            queue=Policy("WaitingRoomQueue", settings.queue_rpm, "user"),
        )
        self.media = MediaStore(self.redis)
        self.images = None
        if settings.llm_base_url is not None:
            self.images = OpenAIImages(
                base_url=settings.llm_base_url,
                api_key=settings.llm_api_key or "unused",
                model=settings.llm_image_model,
                timeout=settings.llm_timeout,
            )
        self.embedder = shared_embedder(model=settings.embedding_model)
        if settings.llm_base_url is None:
            self.backend = EmbeddedResponder(self.embedder.embed)
        else:
            self.backend = OpenAICompatible(
                base_url=settings.llm_base_url,
                # The openai client insists on a key; local servers ignore whatever is sent.
                api_key=settings.llm_api_key or "unused",
                model=settings.llm_model,
                timeout=settings.llm_timeout,
                max_tokens=settings.llm_max_tokens,
                vision=settings.llm_vision,
            )
        self.pool = WorkerPool(
            workers=settings.turn_workers,
            queue_size=settings.turn_queue,
            deadline=settings.llm_timeout,
        )
        self.docs = DocumentStore(self.redis)
        self.queue = ProcessingQueue(self.redis, lease_seconds=settings.kb_lease_seconds)
        self.ingest = Ingest(self.docs, self.accounts, self.queue)
        self.activations = Activations(self.redis)
        self.starters = StarterPrompts(self.redis, self.docs, self.activations, self.index)
        self.processor = Processor(
            docs=self.docs,
            queue=self.queue,
            index=self.index,
            embedder=self.embedder,
            max_pages=settings.kb_max_pages,
            document_seconds=settings.kb_document_seconds,
        )
        self.transcriber = Transcriber(
            Path(settings.stt_model) if settings.stt_model else None,
            workers=settings.stt_workers,
            account_clips=settings.stt_account_clips,
            max_seconds=settings.stt_max_seconds,
        )
        self.retriever = KnowledgeRetriever(
            docs=self.docs, index=self.index, embedder=self.embedder
        )
        pipeline = TurnPipeline(
            personas=self.personas,
            memory=self.memory,
            retriever=self.retriever,
            backend=self.backend,
            transcriber=self.transcriber,
            summariser=self.backend if isinstance(self.backend, OpenAICompatible) else None,
        )
        store = TurnStore(
            self.redis,
            memory=self.memory,
            idempotency=Idempotency(in_flight_ttl=int(settings.llm_timeout) + CLAIM_MARGIN_SECONDS),
            key_rpm=settings.key_rpm,
            budget=CHARGE,
        )
        self.runner = TurnRunner(store=store, pipeline=pipeline, pool=self.pool)
        self.sessions = session_store(self.redis, settings, observe=self._observe_sweep)
        self.capacity = self.sessions.capacity
        self.hub = Hub(self.sessions)
        self.socket = SessionSocket(store=self.sessions, runner=self.runner, hub=self.hub)
        self.waiting_room = WaitingRoom(self.sessions)
        self.queue_hub = QueueHub(self.redis, self.sessions)
        self.queue_socket = QueueSocket(self.waiting_room, self.queue_hub)

    def _observe_sweep(self, sweep: Sweep) -> None:
        self.metrics.observe_sweep(len(sweep.admitted), sweep.noshows, sweep.evicted, sweep.lapsed)

    async def close(self) -> None:
        if isinstance(self.backend, OpenAICompatible):
            await self.backend.close()
        if self.images is not None:
            await self.images.close()
        self.transcriber.close()
        await self.redis.aclose()

    @redis_boundary
    async def ping_redis(self) -> None:
        await self.redis.ping()
