"""The LLM reply backend against the fake server: images, and summaries it condenses."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime

import httpx

from engine.errors import UpstreamFailed
from engine.memory import MemoryStore, Turn
from engine.personas import PersonaStore
from engine.replies import RELATED, Knowledge, Snippet, on_topic
from engine.responder import EmbeddedResponder
from engine.speech import Transcriber
from engine.state import connect
from engine.turns import TurnPipeline
from kb.embedder import shared_embedder
from loadtest.fake_llm import DEFAULT_REPLY, FakeOpenAI
from tests.conftest import RedisServer, llm_env, wait_until
from tests.test_conversation_contract import PNG
from tests.test_knowledge import activate, doc_path, wait_ready

URL = "/api/v1/conversation"
IMAGE = {"image_b64": base64.b64encode(PNG).decode(), "image_mime": "image/png"}


def test_images_are_content_parts_for_vision_models(server_on, fake: FakeOpenAI) -> None:
    server = server_on(**llm_env(fake, RAPPORT_LLM_VISION="true"))
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        response = client.post(URL, json={"user_id": "u", "message": "What is this?", **IMAGE})
    assert response.status_code == 200
    text, image = fake.calls()[-1]["messages"][-1]["content"]
    assert text == {"type": "text", "text": "What is this?"}
    assert image["type"] == "image_url"
    assert image["image_url"]["url"] == "data:image/png;base64," + IMAGE["image_b64"]


def test_other_models_are_told_an_image_came(llm_server, fake: FakeOpenAI) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        assert client.post(URL, json={"user_id": "u", **IMAGE}).status_code == 200
    content = fake.calls()[-1]["messages"][-1]["content"]
    assert isinstance(content, str) and "image, which you cannot see" in content


def test_folded_turns_are_condensed_by_the_model(server_on, fake: FakeOpenAI) -> None:
    server = server_on(**llm_env(fake, RAPPORT_MEMORY_BYTES="4096"))
    long = "Tell me about plans. " + "I would like details on every option please. " * 20
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        for n in range(6):  # ~1 KB a turn: the oldest fold into the summary
            assert (
                client.post(URL, json={"user_id": "sum", "message": f"{n} {long}"}).status_code
                == 200
            )

        def condensed() -> bool:
            return any(
                call["messages"][0]["content"].startswith("Condense these notes")
                for call in fake.calls()
            )

        wait_until(condensed, 10, "the summary to be condensed")
        request = next(
            c for c in fake.calls() if c["messages"][0]["content"].startswith("Condense")
        )
        assert "user: 0 Tell me about plans." in request["messages"][1]["content"]
        assert request.get("stream") is not True and request["max_tokens"] == 200

        def summary_in_prompt() -> bool:
            client.post(URL, json={"user_id": "sum", "message": "And now?"})
            system = fake.calls()[-1]["messages"][0]["content"]
            return f"Earlier conversation, summarised: {DEFAULT_REPLY}" in system

        wait_until(summary_in_prompt, 10, "the condensed summary in the prompt")


async def test_a_failing_summary_keeps_the_plain_one(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url, 2)
    memory = MemoryStore(redis, max_bytes=600)
    asked: list[str] = []

    class Failing:
        async def summarise(self, summary: str) -> str:
            asked.append(summary)
            raise UpstreamFailed()

    class Rewriting:
        async def summarise(self, summary: str) -> str:
            return "Condensed."

    for n in range(4):
        await memory.remember("acct", "u", Turn(
            at=datetime.now(UTC), user=f"Turn {n}. " + "words " * 40, reply="Ok.",
            request_id=f"r{n}"))  # fmt: skip
    plain = (await memory.recall("acct", "u")).summary
    assert plain.startswith(datetime.now(UTC).strftime("%Y-%m-%d") + " user: Turn 0.")

    pipeline = TurnPipeline(
        personas=PersonaStore(redis), memory=memory,
        retriever=NoKnowledge(), backend=EmbeddedResponder(shared_embedder().embed),
        transcriber=Transcriber(), summariser=Failing(),
    )  # fmt: skip
    await pipeline._condense("acct", "u")
    assert asked == [plain]
    assert (await memory.recall("acct", "u")).summary == plain, "kept as it was"

    pipeline._summariser = Rewriting()
    await pipeline._condense("acct", "u")
    assert (await memory.recall("acct", "u")).summary == "Condensed."
    await memory.forget("acct", "u")
    await pipeline._condense("acct", "u")
    assert await redis.exists("rapport:{acct:acct}:user:u:meta") == 0, "forgotten stays so"
    await redis.aclose()


class NoKnowledge:
    async def retrieve(
        self, account_id: str, active: list[str], query: str, k: int, earlier: list[str]
    ) -> Knowledge:
        return Knowledge(snippets=[], topics=[])


REFUNDS = "Refunds are paid back to the original card within five business days."


def refunds_only(client: httpx.Client) -> None:
    """The tenant's one active document: the refunds policy."""
    client.put(doc_path("refunds"), json={"content": REFUNDS})
    wait_ready(client, "refunds")
    assert activate(client, ["refunds"]).status_code == 200


def test_the_prompt_carries_persona_memory_and_snippets(llm_server, fake: FakeOpenAI) -> None:
    key = llm_server.new_tenant(f"prompt-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        refunds_only(client)
        client.post(URL, json={"user_id": "ada", "message": "Hello, my name is Ada."})
        answer = client.post(
            URL, json={"user_id": "ada", "message": "How are refunds paid back?",
                       "persona": {"name": "Nora", "role": "You handle refunds."}},
        ).json()  # fmt: skip
    system, *turns = fake.calls()[-1]["messages"]
    assert system["content"].startswith("You are Nora.\nYou handle refunds.")
    assert "name: Ada" in system["content"]
    assert f"[refunds] {REFUNDS}" in system["content"]
    assert [t["content"] for t in turns][:1] == ["Hello, my name is Ada."]
    assert answer["sources"] == ["refunds"]


def test_sources_name_each_document_the_model_was_given_once_best_first(
    llm_server, fake: FakeOpenAI
) -> None:
    # A document comes to the model as up to three of its chunks; its id was listed once a
    # chunk.
    key = llm_server.new_tenant(f"once-{uuid.uuid4().hex[:8]}")
    policy = " ".join(
        f"Rule {n}: a refund for an order of type {n} is paid back to the original card."
        for n in range(40)
    )
    with llm_server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        client.put(doc_path("policy"), json={"content": policy})
        client.put(doc_path("cards"), json={"content": "Gift cards cannot be refunded."})
        wait_ready(client, "policy")
        wait_ready(client, "cards")
        assert activate(client, ["policy", "cards"]).status_code == 200
        answer = client.post(URL, json={"user_id": "ada", "message": "How is a refund paid?"})
    given = re.findall(r"^\[([^\]]+)\]", fake.calls()[-1]["messages"][0]["content"], re.M)
    assert given.count("policy") >= 2
    assert answer.json()["sources"] == list(dict.fromkeys(given))


def test_a_question_no_document_is_about_gets_no_knowledge_and_cites_nothing(
    llm_server, fake: FakeOpenAI
) -> None:
    # Retrieval always finds the least unrelated documents; given to the model for a question
    # the knowledge base does not cover, they were listed as the reply's sources.
    key = llm_server.new_tenant(f"off-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        refunds_only(client)
        off = client.post(URL, json={"user_id": "ada", "message": "Who painted the Mona Lisa?"})
        system = fake.calls()[-1]["messages"][0]["content"]
        on = client.post(URL, json={"user_id": "ada", "message": "How are refunds paid back?"})
    assert off.status_code == 200 and off.json()["sources"] == []
    assert "[refunds]" not in system and "No knowledge base entry matches" in system
    assert on.json()["sources"] == ["refunds"]
    assert f"[refunds] {REFUNDS}" in fake.calls()[-1]["messages"][0]["content"]


def test_knowledge_is_handed_on_when_one_snippet_or_its_document_reaches_the_floor() -> None:
    near = Snippet("near", "Somewhat related.", RELATED)
    far = Snippet("far", "Unrelated.", RELATED - 0.01)
    assert on_topic([far, near]) == [far, near], "the ranking is kept whole"
    assert on_topic([far]) == []
    assert on_topic([]) == []
    # A chunk under the floor whose whole document reaches it: the answer is spread over
    # the document (the Perl FAQ's "I grabbed the sources and tried to compile but ...").
    spread = Snippet("spread", "Part of it.", RELATED - 0.02, document_score=RELATED)
    assert on_topic([far, spread]) == [far, spread]
    apart = Snippet("apart", "Part of it.", RELATED - 0.02, document_score=RELATED - 0.01)
    assert on_topic([far, apart]) == []
