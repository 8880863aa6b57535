"""Which documents are active for which persona (seed 000, "Persona activation").

Two sets mirror each other: the persona's external_ids and each document's persona ids,
so ``active_persona_count`` in the document DTO is one SCARD and stays exact. Every change
updates both in one Lua step (all keys share the account's hash tag), and bumps the persona's
activation version, so what is cached from its active set (kb.prompts) knows to reload.
"""

from __future__ import annotations

from engine import keyspace
from engine.errors import Conflict, ValidationFailed
from engine.state import Client, redis_boundary

# KEYS[1]: the persona's set; KEYS[2]: its version; KEYS[3..n+2]: the persona sets of the n
# documents to have; KEYS[n+3..]: those of the documents to drop. ARGV: persona id, n, the n
# external_ids, then the ids to drop. Returns -1 when the persona's set holds an id neither
# kept nor dropped (it changed since the caller read it), so the caller reads again.
_CHANGE = """
local n = tonumber(ARGV[2])
local known = {}
for i = 3, #ARGV do known[ARGV[i]] = true end
for _, eid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not known[eid] then return -1 end
end
local dropped = 0
for i = 3 + n, #ARGV do
  dropped = dropped + redis.call('SREM', KEYS[1], ARGV[i])
  redis.call('SREM', KEYS[i], ARGV[1])
end
local added = 0
for i = 3, 2 + n do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[i], ARGV[1])
    added = added + 1
  end
end
if added + dropped > 0 then redis.call('INCR', KEYS[2]) end
return added
"""
MAX_TRIES = 5


class Activations:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._change = redis.register_script(_CHANGE)

    @redis_boundary
    async def replace(self, account_id: str, persona_id: str, external_ids: list[str]) -> None:
        await self._apply(account_id, persona_id, external_ids, replace=True)

    @redis_boundary
    async def add(
        self, account_id: str, persona_id: str, external_ids: list[str]
    ) -> tuple[int, int]:
        """Returns (added, skipped): already-active ids are skipped, not duplicated."""
        added = await self._apply(account_id, persona_id, external_ids, replace=False)
        return added, len(external_ids) - added

    @redis_boundary
    async def remove(self, account_id: str, persona_id: str, external_id: str) -> None:
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.srem(keys.persona_docs(persona_id), external_id)
        pipe.srem(keys.doc_personas(external_id), persona_id)
        pipe.incr(keys.persona_docs_version(persona_id))
        await pipe.execute()

    @redis_boundary
    async def active(self, account_id: str, persona_id: str) -> list[str]:
        members = await self._redis.smembers(
            keyspace.AccountKeys(account_id).persona_docs(persona_id)
        )
        return sorted(members)

    @redis_boundary
    async def forget_persona(self, account_id: str, persona_id: str) -> None:
        """Drop every activation of a persona (it is being deleted), and its version."""
        await self._apply(account_id, persona_id, [], replace=True)
        await self._redis.delete(keyspace.AccountKeys(account_id).persona_docs_version(persona_id))

    async def _apply(
        self, account_id: str, persona_id: str, external_ids: list[str], *, replace: bool
    ) -> int:
        keys = keyspace.AccountKeys(account_id)
        wanted = list(dict.fromkeys(external_ids))
        if wanted:
            known = await self._redis.hmget(keys.docs, wanted)
            unknown = [eid for eid, row in zip(wanted, known, strict=True) if row is None]
            if unknown:
                raise ValidationFailed(
                    f"Unknown external_ids: {', '.join(unknown)}. Nothing was changed.",
                    errors={"external_ids": [f"unknown: {eid}" for eid in unknown]},
                )
        for _ in range(MAX_TRIES):
            current = await self._redis.smembers(keys.persona_docs(persona_id))
            keep = set(wanted)
            dropped = sorted(current - keep) if replace else []
            # Without replace, the ones already there are simply kept.
            held = [eid for eid in sorted(current) if eid in keep or not replace]
            ids = list(dict.fromkeys([*wanted, *held]))
            added = await self._change(
                keys=[
                    keys.persona_docs(persona_id),
                    keys.persona_docs_version(persona_id),
                    *(keys.doc_personas(e) for e in ids),
                    *(keys.doc_personas(e) for e in dropped),
                ],
                args=[persona_id, len(ids), *ids, *dropped],
            )
            if added >= 0:
                return int(added)
        raise Conflict("The persona's knowledge changed too often to apply this; retry.")
