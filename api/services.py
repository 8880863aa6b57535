"""The live components one process holds, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from api.metrics import HttpMetrics
from engine.accounts import AccountStore
from engine.apikeys import KeyStore
from engine.config import Settings
from engine.personas import PersonaStore
from engine.state import redis_boundary
from kb.index import VectorIndex


@dataclass
class Services:
    settings: Settings
    redis: aioredis.Redis
    index: VectorIndex
    metrics: HttpMetrics
    accounts: AccountStore = field(init=False)
    keys: KeyStore = field(init=False)
    personas: PersonaStore = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = AccountStore(self.redis)
        self.keys = KeyStore(self.redis)
        self.personas = PersonaStore(self.redis)

    @redis_boundary
    async def ping_redis(self) -> None:
        await self.redis.ping()
