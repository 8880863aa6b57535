"""Starter prompts (issue 24, item 5): a mint's 201 and 202 carry up to three questions
picked from the persona's active knowledge, kept per process until that knowledge changes;
and seed 002's ``auto-generate-prompts`` answers 200 with what the knowledge covers when
nothing is about the topics. One server, its deployment capped at one session so that a
second mint queues."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from kb.pages import page_id
from tests.conftest import Server
from tests.seed_002 import examples
from tests.test_knowledge import unique, wait_ready

ROUTER = (
    "How do I reset my router? Hold the reset button for ten seconds.\n\n"
    "Why is my router blinking red? It has lost its connection to the internet.\n\n"
    "Can I use my own modem? Yes, any DOCSIS 3.1 modem works."
)
OPERA = "# Box office\n\nWhen do the doors open? Doors open at 19:00 at the Teatro Nacional."
PAGES = {"Router help": ROUTER, "Opera nights": OPERA}
FRAME = "What can you tell me about"
"""The one frame kb.prompts puts around a document's label or heading."""


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("starters") / "data", RAPPORT_MAX_SESSIONS="1")
    yield running.start()
    running.retire()


@pytest.fixture(scope="module")
def shop(capped: Server) -> Iterator[tuple[httpx.Client, str, str]]:
    """A tenant with both pages processed, none active yet; its default persona and a
    second one."""
    key = capped.new_tenant(unique("starters"))
    with capped.client(timeout=60, headers={"X-Api-Key": key}) as client:
        pages = [{"title": title, "content": text} for title, text in PAGES.items()]
        assert client.post("/api/kb/store-pages", json={"pages": pages}).status_code == 200
        for title in PAGES:
            assert wait_ready(client, page_id(title))["processing_status"] == "ready"
        default = client.get("/api/personas/default").json()["id"]
        other = client.post("/api/personas", json={"name": "Box office"}).json()["id"]
        yield client, default, other


def activate(client: httpx.Client, persona_id: str, *titles: str) -> None:
    body = {"external_ids": [page_id(t) for t in titles]}
    assert client.put(f"/api/personas/{persona_id}/knowledge", json=body).status_code == 200


def mint(client: httpx.Client, persona_id: str) -> httpx.Response:
    body = {"user_id": "visitor", "mode": "chat", "persona_id": persona_id}
    return client.post("/api/sessions", json=body)


def starters(client: httpx.Client, persona_id: str) -> list[str]:
    """A ready session's starter prompts; the session is ended, its slot free again."""
    minted = mint(client, persona_id)
    assert minted.status_code == 201, minted.text
    assert client.delete(f"/api/sessions/{minted.json()['session_id']}").status_code == 204
    return minted.json()["starter_prompts"]


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+(?:[.:]\w+)*", text.casefold().replace(FRAME.casefold(), "")))


def drawn_from(prompts: list[str], *titles: str) -> bool:
    """Every word of every prompt, but the frame, is in those pages (labels included): no
    number, name or address of the prompts' own."""
    source = words(" ".join(f"{t}\n{PAGES[t]}" for t in titles))
    return all(p.endswith("?") and words(p.rstrip("?")) <= source for p in prompts)


def test_a_mint_offers_questions_from_its_personas_active_documents_only(shop) -> None:
    client, default, other = shop
    assert starters(client, default) == []
    activate(client, default, "Router help")
    activate(client, other, "Opera nights")
    router = starters(client, default)
    # The FAQ's own questions, up to three, none from the other persona's page.
    assert router == [
        "How do I reset my router?",
        "Why is my router blinking red?",
        "Can I use my own modem?",
    ]
    opera = starters(client, other)
    assert opera == ["When do the doors open?", f"{FRAME} Opera nights?"]
    assert drawn_from(router, "Router help") and drawn_from(opera, "Opera nights")
    # Queued (the deployment's one slot held): the 202 carries them too.
    held = mint(client, other)
    queued = mint(client, default)
    assert (held.status_code, queued.status_code) == (201, 202), queued.text
    assert queued.json()["starter_prompts"] == router
    assert client.delete(queued.json()["poll_url"]).status_code == 204
    assert client.delete(f"/api/sessions/{held.json()['session_id']}").status_code == 204


def test_seed_002s_example_answers_what_the_knowledge_covers(capped: Server, shop) -> None:
    client, default, _ = shop
    asked = examples()["POST /api/kb/auto-generate-prompts"]["request"]
    activate(client, default, "Router help")
    covered = client.post("/api/kb/auto-generate-prompts", json=asked)
    assert covered.status_code == 200, covered.text
    assert covered.json() == {"status": "success", "prompts": starters(client, default)}
    assert covered.json()["prompts"] and drawn_from(covered.json()["prompts"], "Router help")
    with capped.client(headers={"X-Api-Key": capped.new_tenant(unique("bare"))}) as bare:
        empty = bare.post("/api/kb/auto-generate-prompts", json=asked)
        assert (empty.status_code, empty.json()) == (200, {"status": "success", "prompts": []})


def test_the_prompts_follow_changes_of_the_personas_knowledge(shop) -> None:
    client, default, _ = shop
    activate(client, default, "Router help")
    assert starters(client, default)[0] == "How do I reset my router?"
    # A change of the active set (its version), then of the documents (theirs).
    activate(client, default, "Opera nights")
    assert starters(client, default)[0] == "When do the doors open?"
    remove = f"/api/personas/{default}/knowledge/{page_id('Opera nights')}"
    assert client.delete(remove).status_code in (200, 204)
    assert starters(client, default) == []
    activate(client, default, "Router help")
    changed = {"title": "Router help", "content": "Is the router under warranty? Two years."}
    assert client.post("/api/kb/store-pages", json={"pages": [changed]}).status_code == 200
    wait_ready(client, page_id("Router help"))
    assert starters(client, default) == ["Is the router under warranty?", f"{FRAME} Router help?"]
