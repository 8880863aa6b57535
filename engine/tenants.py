"""A new tenant: the account, its default persona and the binding between them.

Every account has a default persona (docs/architecture.md, "Data model"): the "global
persona profile per key" of seed 004, which a conversation request's ``persona`` object
merges into.
"""

from __future__ import annotations

from engine.accounts import Account, AccountStore
from engine.personas import PersonaStore

DEFAULT_PERSONA: dict[str, object] = {
    "name": "Rapport",
    "description": "The default persona, made with the account.",
    "role": (
        "You are a friendly assistant. Answer from the knowledge base, say plainly when it "
        "does not cover a question, and keep replies short."
    ),
    "sociality": "ambivert",
    "archetypes": ["Sage", "Caregiver"],
}


async def create_tenant(accounts: AccountStore, personas: PersonaStore, name: str) -> Account:
    account = await accounts.create(name)
    persona = await personas.create(account.id, **DEFAULT_PERSONA)
    return await accounts.set_default_persona(account.id, persona.id)
