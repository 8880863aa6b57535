"""Follow-up questions: one that points back ("How heavy is it?") is searched for with the
topic of the document the conversation's last grounded reply drew on
(:func:`kb.retrieval.follow_up`, :meth:`engine.memory.Memory.grounded_on`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from engine.memory import Memory, Turn
from engine.words import refers_back
from kb.retrieval import follow_up
from loadtest.fake_llm import FakeOpenAI
from tests.test_knowledge import activate, doc_path, wait_ready
from tests.test_sessions import mint, opened

URL = "/api/v1/conversation"
NAMED = {"tent": "Lumen tent", "lamp": "Boulder headlamp", "stove": "Aspen stove"}
SHOP = {
    "tent": "The Lumen tent sleeps two people and packs down small. It weighs 1,800 grams. "
    "It costs 240 dollars.",
    "lamp": "The Boulder headlamp weighs 90 grams, the lightest weight of any lamp we sell. "
    "It costs 35 dollars.",
    "stove": "The Aspen stove boils a litre of water in four minutes. Fuel is not included.",
}


def test_a_question_that_points_back_is_searched_with_its_subject() -> None:
    assert follow_up("How heavy is it?", ["tent", "lamp"], NAMED) == "How heavy is it? Lumen tent"
    assert follow_up("Are they waterproof?", ["tent"], NAMED) == "Are they waterproof? Lumen tent"
    # A message that opens by going on from the last one points back without a pronoun.
    assert follow_up("And the price?", ["tent"], NAMED) == "And the price? Lumen tent"
    assert follow_up("What about the warranty?", ["tent"], NAMED).endswith("? Lumen tent")
    assert follow_up("How about the colours?", ["tent"], NAMED).endswith("? Lumen tent")
    assert not refers_back("Andes boots: how warm are the Andes boots?")  # a word, not "and"
    assert not refers_back("Is there anything about warranties?")
    # The first of the last reply's sources that is still live is its subject.
    assert follow_up("Is it light?", ["gone", "lamp"], NAMED) == "Is it light? Boulder headlamp"


def test_a_question_that_stands_alone_is_searched_as_asked() -> None:
    assert follow_up("How heavy is the stove?", ["tent"], NAMED) == "How heavy is the stove?"
    # It names a topic of its own, pronoun or not.
    named = "How heavy is the Aspen stove? I might buy it."
    assert follow_up(named, ["tent"], NAMED) == named
    # "that" begins as many new questions as it points back.
    assert not refers_back("Is there a tent that sleeps four?")
    assert follow_up("Is there a tent that sleeps four?", ["tent"], NAMED).endswith("four?")
    # Nothing earlier to point back at, or it is gone.
    assert follow_up("How heavy is it?", [], NAMED) == "How heavy is it?"
    assert follow_up("How heavy is it?", ["gone"], NAMED) == "How heavy is it?"


def test_a_topic_many_documents_share_names_no_subject() -> None:
    faq = {"q1": "Python FAQ", "q2": "Python FAQ", "q3": "Installing"}
    assert follow_up("Why is that so?", ["q1"], faq) == "Why is that so?"
    assert follow_up("Why is it so?", ["q1"], faq) == "Why is it so?"
    assert follow_up("Why is it so?", ["q3"], faq) == "Why is it so? Installing"


def turn(user: str, sources: list[str]) -> Turn:
    return Turn(at=datetime(2026, 1, 1, tzinfo=UTC), user=user, reply="...", request_id="r",
                sources=sources)  # fmt: skip


def test_the_subject_is_the_last_grounded_reply_s_within_three_turns() -> None:
    def grounded(*turns: Turn) -> list[str]:
        return Memory(summary="", facts={}, recent=list(turns)).grounded_on()

    assert grounded() == []
    assert grounded(turn("Tell me about the Lumen tent.", ["tent", "lamp"])) == ["tent", "lamp"]
    # A reply in between with nothing to say ("Is it vegan?") does not change the subject...
    assert grounded(turn("Tent?", ["tent"]), turn("Is it vegan?", [])) == ["tent"]
    assert grounded(turn("Tent?", ["tent"]), turn("Lamp?", ["lamp"])) == ["lamp"]
    # ... but three turns on, "it" is more likely something said since.
    assert grounded(turn("Tent?", ["tent"]), *[turn("Hm?", [])] * 3) == []


def shop(client: httpx.Client) -> None:
    for external_id, text in SHOP.items():
        label = NAMED[external_id]
        assert client.put(doc_path(external_id), json={"content": text, "label": label}).is_success
    for external_id in SHOP:
        wait_ready(client, external_id)
    assert activate(client, list(SHOP)).status_code == 200


def ask(client: httpx.Client, user: str, message: str) -> dict:
    response = client.post(URL, json={"user_id": user, "message": message})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_follow_up_is_answered_about_what_the_conversation_is_about(server) -> None:
    key = server.new_tenant(f"follow-{uuid.uuid4().hex[:8]}")
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        shop(client)
        # Asked first, "How heavy is it?" is about whatever says most about weight.
        cold = ask(client, "cold", "How heavy is it?")
        assert cold["sources"][:1] != ["tent"], cold
        assert ask(client, "ada", "Tell me about the Lumen tent.")["sources"][:1] == ["tent"]
        heavy = ask(client, "ada", "How heavy is it?")
        assert heavy["sources"][:1] == ["tent"] and "1,800 grams" in heavy["reply"], heavy
        price = ask(client, "ada", "And the price?")
        assert price["sources"][:1] == ["tent"] and "240 dollars" in price["reply"], price
        # A question that names its own subject is asked as it is.
        lamp = ask(client, "ada", "How much does the Boulder headlamp weigh? I might buy it.")
        assert lamp["sources"][:1] == ["lamp"] and "90 grams" in lamp["reply"], lamp


def test_an_llm_is_given_the_conversation_s_document_for_a_follow_up(
    llm_server, fake: FakeOpenAI
) -> None:
    key = llm_server.new_tenant(f"follow-llm-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        shop(client)
        cold = ask(client, "cold", "Does it fit in a backpack?")
        ask(client, "ada", "Tell me about the Lumen tent.")
        answer = ask(client, "ada", "Does it fit in a backpack?")
    system = fake.calls()[-1]["messages"][0]["content"]
    assert cold["sources"][:1] != ["tent"], cold
    assert f"[tent] (Lumen tent) {SHOP['tent']}" in system
    assert answer["sources"][:1] == ["tent"]


async def test_a_live_session_s_follow_up_is_about_what_the_conversation_is_about(server) -> None:
    # The widget's socket runs the same turn with the same memory.
    key = server.new_tenant(f"follow-live-{uuid.uuid4().hex[:8]}")
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        shop(client)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Api-Key": key}, timeout=10
    ) as http:
        minted = await mint(http, "ada")
        async with opened(minted["ws_url"]) as live:
            assert (await live.next())["type"] == "session.ready"
            dones = []
            for text in ("Tell me about the Lumen tent.", "How heavy is it?"):
                await live.send("user.message", text=text)
                dones.append((await live.until("reply.done"))[-1])
        await http.delete(f"/api/sessions/{minted['session_id']}")
    assert [d["sources"][:1] for d in dones] == [["tent"], ["tent"]], dones
    assert "1,800 grams" in dones[1]["text"]
