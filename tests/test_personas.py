"""/api/personas: CRUD (seed 003 semantics), knowledge activation (seed 000), the default."""

from __future__ import annotations

import uuid

import httpx
import msgspec
import pytest

from engine.personas import PersonaPatch
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server
from tests.test_knowledge import DOCS, doc_path

PERSONAS = "/api/personas"
IMPATIENT = {
    "name": "impatient-user",
    "description": "A user who wants quick answers",
    "systemPrompt": "You are an impatient user who values brevity and expects quick, concise "
    "responses.",
    "headers": {"X-User-Language": "en"},
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(server: Server):
    key = server.new_tenant(unique("personas"))
    with server.client(headers={"X-Api-Key": key}) as http:
        yield http


def code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return response.json()["code"]


def test_crud_as_seed_003_describes_it(client: httpx.Client) -> None:
    created = client.post(PERSONAS, json=IMPATIENT)
    assert created.status_code == 201
    persona = created.json()
    assert {k: persona[k] for k in IMPATIENT} == IMPATIENT
    assert persona["imageUrl"] is None and persona["isDefault"] is False
    assert persona["createdAt"] == persona["updatedAt"]
    path = f"{PERSONAS}/{persona['id']}"
    assert client.get(path).json() == persona

    # PUT changes only what it is given (seed 003).
    prompt = "You are a technical user who expects detailed, accurate responses."
    updated = client.put(path, json={"systemPrompt": prompt}).json()
    assert updated["systemPrompt"] == prompt
    assert updated["name"] == "impatient-user" and updated["headers"] == IMPATIENT["headers"]
    assert updated["updatedAt"] > persona["updatedAt"]
    # snake_case is accepted too; PATCH behaves the same.
    patched = client.patch(path, json={"system_prompt": "Short.", "age": 30}).json()
    assert (patched["systemPrompt"], patched["age"]) == ("Short.", 30)

    listing = client.get(PERSONAS).json()
    assert listing["total_count"] == 2  # the account's default persona and this one
    assert [p["name"] for p in listing["items"]] == ["Rapport", "impatient-user"]
    assert (
        client.get(PERSONAS, params={"limit": 1, "offset": 1}).json()["items"][0]["id"]
        == (persona["id"])
    )

    assert client.delete(path).status_code == 204
    assert client.get(path).status_code == 404
    assert code(client.delete(path)) == "resource.not_found"


def test_names_are_unique_in_an_account_only(server: Server, client: httpx.Client) -> None:
    first = client.post(PERSONAS, json={"name": "Nora"}).json()
    duplicate = client.post(PERSONAS, json={"name": "Nora", "description": "again"})
    assert duplicate.status_code == 409 and code(duplicate) == "resource.conflict"
    assert duplicate.json()["detail"] == "Persona with name already exists"
    other = client.post(PERSONAS, json={"name": "Sam"}).json()
    taken = client.put(f"{PERSONAS}/{other['id']}", json={"name": "Nora"})
    assert taken.status_code == 409
    assert client.get(f"{PERSONAS}/{other['id']}").json()["name"] == "Sam"
    assert client.put(f"{PERSONAS}/{first['id']}", json={"name": "Nora"}).status_code == 200
    # Renaming frees the old name.
    assert client.patch(f"{PERSONAS}/{first['id']}", json={"name": "Nora B"}).status_code == 200
    assert client.post(PERSONAS, json={"name": "Nora"}).status_code == 201
    elsewhere = server.new_tenant(unique("elsewhere"))
    with server.client(headers={"X-Api-Key": elsewhere}) as stranger:
        assert stranger.post(PERSONAS, json={"name": "Nora"}).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"description": "no name"},
        {"name": ""},
        {"name": "n" * 65},
        {"name": "A", "age": 0},
        {"name": "A", "zodiac": "Ophiuchus"},
        {"name": "A", "archetypes": ["Wizard"]},
        {"name": "A", "headers": {"X-Bad": "line\r\nbreak"}},
        {"name": "A", "headers": {"bad header": "v"}},
        {"name": "A", "publishSettings": {"sessionInteractionLimit": 0}},
        {"name": "A", "publishSettings": {"allowedModes": []}},
        {"name": "A", "publishSettings": {"allowedModes": ["video"]}},
        {"name": "A", "publishSettings": {"availability": {"timeZone": "Mars/X", "windows": []}}},
        {"name": "A", "publishSettings": {"availability": {"timeZone": "UTC", "windows": [
            {"day": "mon", "start": "18:00", "end": "09:00"}]}}},
        {"name": "A", "nickname": "x"},
    ],
)  # fmt: skip
def test_invalid_personas_are_refused(client: httpx.Client, body: dict) -> None:
    response = client.post(PERSONAS, json=body)
    assert response.status_code == 400 and code(response) == "validation.failed"
    assert client.get(PERSONAS).json()["total_count"] == 1


def test_an_invalid_update_changes_nothing(client: httpx.Client) -> None:
    persona = client.post(PERSONAS, json={"name": "Keep", "age": 40}).json()
    path = f"{PERSONAS}/{persona['id']}"
    refused = client.put(path, json={"age": 30, "gender": "robot"})
    assert refused.status_code == 400
    assert client.get(path).json()["age"] == 40
    assert client.put(path, content=b"{broken").status_code == 400


def test_publish_settings_merge_field_by_field(client: httpx.Client) -> None:
    persona = client.post(
        PERSONAS,
        json={"name": "Shop", "publish_settings": {
            "session_interaction_limit": 20, "session_duration_limit_seconds": 600,
            "availability": {"time_zone": "Europe/Lisbon",
                             "windows": [{"day": "mon", "start": "09:00", "end": "17:30"}]},
            "allowed_modes": ["chat"]}},
    ).json()  # fmt: skip
    settings = persona["publishSettings"]
    assert settings["sessionInteractionLimit"] == 20 and settings["allowedModes"] == ["chat"]
    assert settings["availability"]["timeZone"] == "Europe/Lisbon"
    path = f"{PERSONAS}/{persona['id']}"
    changed = client.patch(path, json={"publishSettings": {"sessionDurationLimitSeconds": 60}})
    settings = changed.json()["publishSettings"]
    assert settings["sessionDurationLimitSeconds"] == 60
    assert settings["sessionInteractionLimit"] == 20, "untouched fields stay"
    cleared = client.patch(path, json={"publishSettings": {"availability": None}}).json()
    assert cleared["publishSettings"]["availability"] is None


def test_the_default_persona(llm_server: Server, fake: FakeOpenAI) -> None:
    key = llm_server.new_tenant(unique("default"))
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        default = client.get(f"{PERSONAS}/default").json()
        assert default["isDefault"] is True and default["name"] == "Rapport"
        refused = client.delete(f"{PERSONAS}/{default['id']}")
        assert refused.status_code == 409 and code(refused) == "resource.conflict"
        nora = client.post(PERSONAS, json={"name": "Nora", "systemPrompt": "You sell plans."})
        chosen = client.put(f"{PERSONAS}/default", json={"persona_id": nora.json()["id"]})
        assert chosen.status_code == 200 and chosen.json()["isDefault"] is True
        client.post("/api/v1/conversation", json={"user_id": "u", "message": "Hi"})
        assert fake.calls()[-1]["messages"][0]["content"].startswith("You are Nora.\nYou sell")
        # The old default can go now.
        assert client.delete(f"{PERSONAS}/{default['id']}").status_code == 204
        missing = client.put(f"{PERSONAS}/default", json={"persona_id": "nope"})
        assert missing.status_code == 404


def test_activation_replace_add_remove_and_counts(client: httpx.Client) -> None:
    client.put(DOCS, json={"items": [{"external_id": f"k{i}", "content": f"Doc {i}."}
                                     for i in range(4)]})  # fmt: skip
    a = client.post(PERSONAS, json={"name": "A"}).json()["id"]
    b = client.post(PERSONAS, json={"name": "B"}).json()["id"]
    knowledge_a, knowledge_b = f"{PERSONAS}/{a}/knowledge", f"{PERSONAS}/{b}/knowledge"

    replaced = client.put(knowledge_a, json={"external_ids": ["k0", "k1", "k2"]})
    assert replaced.status_code == 200 and replaced.json() == {"external_ids": ["k0", "k1", "k2"]}
    assert client.put(knowledge_a, json={"external_ids": ["k1", "k3"]}).json() == {
        "external_ids": ["k1", "k3"]
    }
    unknown = client.put(knowledge_a, json={"external_ids": ["k0", "ghost", "phantom"]})
    assert unknown.status_code == 400 and code(unknown) == "validation.failed"
    assert "ghost" in unknown.json()["detail"] and "phantom" in unknown.json()["detail"]
    assert client.get(knowledge_a).json() == {"external_ids": ["k1", "k3"]}, "nothing changed"

    assert client.post(knowledge_b, json={"external_ids": ["k1", "k2"]}).json() == {
        "added": 2, "skipped": 0}  # fmt: skip
    assert client.post(knowledge_b, json={"external_ids": ["k2", "k3"]}).json() == {
        "added": 1, "skipped": 1}  # fmt: skip

    def counts() -> list[int]:
        return [client.get(doc_path(f"k{i}")).json()["active_persona_count"] for i in range(4)]

    assert counts() == [0, 2, 1, 2]
    assert client.delete(f"{knowledge_b}/k2").status_code == 204
    assert client.delete(f"{knowledge_b}/k2").status_code == 204, "idempotent"
    assert client.delete(f"{knowledge_b}/never").status_code == 204
    assert counts() == [0, 2, 0, 2]

    # Deleting a persona drops its activations and leaves the documents alone.
    assert client.delete(f"{PERSONAS}/{b}").status_code == 204
    assert counts() == [0, 1, 0, 1]
    assert client.get(DOCS).json()["total_count"] == 4
    bad = client.put(knowledge_a, json={"external_ids": ["bad id!"]})
    assert bad.status_code == 400


def test_another_accounts_persona_is_404_everywhere(server: Server, client: httpx.Client) -> None:
    mine = client.post(PERSONAS, json={"name": "Mine"}).json()["id"]
    client.put(DOCS, json={"items": [{"external_id": "d", "content": "x"}]})
    stranger_key = server.new_tenant(unique("stranger"))
    path = f"{PERSONAS}/{mine}"
    with server.client(headers={"X-Api-Key": stranger_key}) as stranger:
        attempts = [
            stranger.get(path),
            stranger.put(path, json={"name": "Taken over"}),
            stranger.patch(path, json={"name": "Taken over"}),
            stranger.delete(path),
            stranger.get(f"{path}/knowledge"),
            stranger.put(f"{path}/knowledge", json={"external_ids": []}),
            stranger.post(f"{path}/knowledge", json={"external_ids": []}),
            stranger.delete(f"{path}/knowledge/d"),
            stranger.put(f"{PERSONAS}/default", json={"persona_id": mine}),
        ]
    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert all(code(r) == "resource.not_found" for r in attempts)
    assert client.get(path).json()["name"] == "Mine"


def test_both_apis_share_seed_004s_persona_fields(client: httpx.Client) -> None:
    # A temperament is taken whole: weights left out count as 0, then it is normalised.
    persona = client.post(PERSONAS, json={"name": "T", "temperament": {"choleric": 3}}).json()
    assert persona["temperament"] == {
        "sanguine": 0.0, "choleric": 1.0, "phlegmatic": 0.0, "melancholic": 0.0}  # fmt: skip
    path = f"{PERSONAS}/{persona['id']}"
    for bad in (
        {"temperament": {"bilious": 1}},
        {"systemPrompt": ""},  # seed 004: role 1..1000
        {"systemPrompt": "r" * 1001},
        {"description": "d" * 2001},
    ):
        refused = client.patch(path, json=bad)
        assert refused.status_code == 400 and code(refused) == "validation.failed", bad
    assert client.patch(path, json={"description": "d" * 2000}).status_code == 200


def test_the_seed_004_persona_object() -> None:
    patch = msgspec.json.decode(
        b'{"name": "Nora", "age": null, "temperament": {"sanguine": 1}}', type=PersonaPatch
    )
    assert patch.changes() == {
        "name": "Nora",
        "temperament": {"sanguine": 1.0, "choleric": 0.0, "phlegmatic": 0.0, "melancholic": 0.0},
    }
    for bad in (b'{"role": ""}', b'{"nickname": "x"}', b'{"temperament": {"bilious": 1}}',
                b'{"archetypes": ["Sage"' + b', "Sage"' * 16 + b"]}"):  # fmt: skip
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=PersonaPatch)
