"""A turn runs as the persona it belongs to (issue 21, finding 1): a live session minted for a
persona answers from that persona's active documents, with its prompt, never from the
account's default persona's. Real ``rapport serve`` processes, real sockets; the embedded
responder cites its sources, the fake LLM shows the prompt a turn was given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server
from tests.test_knowledge import activate, wait_ready
from tests.test_sessions import opened, unique

DOCS = "/api/knowledge/docs/by-external-id"
VAULT = (
    "The vault code is 4417. Only the night manager may open the vault, and the code changes "
    "every month."
)
GALLERY = (
    "The public gallery is open from ten in the morning to five in the evening. Visitors may "
    "take photographs in the gallery without a flash."
)
GARDEN = (
    "The rose garden behind the museum is watered at dawn. Its benches are free for anyone "
    "to sit on."
)
QUESTIONS = [
    "What is the vault code?",
    "When is the gallery open?",
    "Can I sit on the benches in the rose garden?",
]


class Tenant:
    def __init__(self, server: Server, client: httpx.Client, key: str) -> None:
        self.server = server
        self.client = client
        self.key = key
        self.active: dict[str, set[str]] = {}

    def persona(self, name: str, external_ids: list[str], **fields: Any) -> str:
        created = self.client.post("/api/personas", json={"name": name, **fields})
        assert created.status_code == 201, created.text
        persona_id: str = created.json()["id"]
        if external_ids:
            added = self.client.post(
                f"/api/personas/{persona_id}/knowledge", json={"external_ids": external_ids}
            )
            assert added.status_code == 200, added.text
        self.active[persona_id] = set(external_ids)
        return persona_id

    async def session_sources(self, persona_id: str, questions: list[str]) -> list[list[str]]:
        """Each question asked in one live session of ``persona_id``: the sources of each
        ``reply.done``."""
        minted = self.client.post(
            "/api/sessions",
            json={"user_id": unique("visitor"), "persona_id": persona_id, "mode": "chat"},
        )
        assert minted.status_code == 201, minted.text
        assert minted.json()["mode"] == "chat"
        cited: list[list[str]] = []
        async with opened(minted.json()["ws_url"]) as live:
            ready = await live.until("session.ready")
            assert ready[-1]["persona"]["id"] == persona_id
            for question in questions:
                await live.send("user.message", text=question)
                done = (await live.until("reply.done", 30))[-1]
                assert done["status"] == "completed", done
                cited.append(done["sources"])
            await live.send("session.end")
            await live.closed()
        return cited


@pytest.fixture(scope="module")
def tenant(server: Server) -> Iterator[Tenant]:
    key = server.new_tenant(unique("personas"))
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        for external_id, content in (("vault", VAULT), ("gallery", GALLERY), ("garden", GARDEN)):
            put = client.put(f"{DOCS}/{external_id}", json={"content": content})
            assert put.status_code == 201, put.text
        for external_id in ("vault", "gallery", "garden"):
            assert wait_ready(client, external_id)["processing_status"] == "ready"
        # The default persona holds the private document (and the garden's).
        assert activate(client, ["vault", "garden"]).status_code == 200
        running = Tenant(server, client, key)
        running.active[client.get("/api/personas/default").json()["id"]] = {"vault", "garden"}
        yield running


async def test_a_session_never_cites_a_document_its_persona_does_not_have(tenant: Tenant) -> None:
    default = next(iter(tenant.active))
    public = tenant.persona(unique("guide"), ["gallery"])
    gardener = tenant.persona(unique("gardener"), ["garden"])
    bare = tenant.persona(unique("bare"), [])
    cited = {
        persona: await tenant.session_sources(persona, QUESTIONS)
        for persona in (default, public, gardener, bare)
    }
    for persona, replies in cited.items():
        for question, sources in zip(QUESTIONS, replies, strict=True):
            assert set(sources) <= tenant.active[persona], (persona, question, sources)
    # Each persona answers from what it has (so the bound above is not met by citing nothing).
    assert "vault" in cited[default][0]
    assert "gallery" in cited[public][1]
    assert "garden" in cited[gardener][2]
    assert cited[bare] == [[], [], []]


def test_the_http_api_answers_as_the_default_persona(tenant: Tenant) -> None:
    """The other transport: the conversation API speaks as the account's default persona,
    the one a persona in another session must not borrow from."""
    default = next(iter(tenant.active))
    for question in QUESTIONS:
        answered = tenant.client.post(
            "/api/v1/conversation", json={"user_id": unique("backend"), "message": question}
        )
        assert answered.status_code == 200, answered.text
        assert set(answered.json()["sources"]) <= tenant.active[default]
    vault = tenant.client.post(
        "/api/v1/conversation", json={"user_id": unique("backend"), "message": QUESTIONS[0]}
    )
    assert "vault" in vault.json()["sources"]


async def test_a_session_whose_persona_was_deleted_says_not_found(tenant: Tenant) -> None:
    doomed = tenant.persona(unique("doomed"), ["gallery"])
    minted = tenant.client.post(
        "/api/sessions", json={"user_id": unique("visitor"), "persona_id": doomed, "mode": "chat"}
    )
    assert minted.status_code == 201, minted.text
    async with opened(minted.json()["ws_url"]) as live:
        await live.until("session.ready")
        assert tenant.client.delete(f"/api/personas/{doomed}").status_code == 204
        await live.send("user.message", text=QUESTIONS[1])
        events = await live.until("reply.done", 30)
        errors = [event for event in events if event["type"] == "error"]
        assert errors and errors[0]["code"] == "resource.not_found", events
        # Never the default persona's knowledge instead.
        assert events[-1]["sources"] == []
        assert "4417" not in events[-1]["text"]


async def test_the_prompt_of_a_session_turn_is_its_personas(
    llm_server: Server, fake: FakeOpenAI
) -> None:
    key = llm_server.new_tenant(unique("prompted"))
    with llm_server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        default_name = client.get("/api/personas/default").json()["name"]
        name = unique("Pia")
        created = client.post(
            "/api/personas", json={"name": name, "description": "a patient museum guide"}
        )
        assert created.status_code == 201, created.text
        minted = client.post(
            "/api/sessions",
            json={"user_id": unique("visitor"), "persona_id": created.json()["id"], "mode": "chat"},
        )
        assert minted.status_code == 201, minted.text
    async with opened(minted.json()["ws_url"]) as live:
        await live.until("session.ready")
        await live.send("user.message", text="Who are you?")
        assert (await live.until("reply.done", 30))[-1]["status"] == "completed"
    [call] = [body for body in fake.calls() if body.get("stream")]
    system = call["messages"][0]["content"]
    assert f"You are {name}." in system, json.dumps(call)[:2000]
    assert f"You are {default_name}." not in system
