"""Seed 003's paths, ``/api/projects/{project_id}/personas``: every example of the seed run as
it is printed (copy in ``tests/contracts/``), only its base URL, project id, persona id and key
filled in; the responses checked against the seed's shapes and messages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

SEED = Path(__file__).parent / "contracts" / "seed_003_personas_api.txt"
SEED_PERSONA_ID = re.compile(r"987fcdeb(?:-51a2-3bc4-d567-890123456789)?")
# The DTO the seed prints for every persona.
SEED_FIELDS = {"id", "name", "description", "systemPrompt", "createdAt", "updatedAt"}


def seed_examples() -> dict[str, str]:
    """Each "Example" of the seed, by method and path, as the seed prints it."""
    text = SEED.read_text()
    found = {}
    for block in re.findall(r"\nExample\n\n(curl .*?)(?:\n\n|\Z)", text, re.DOTALL):
        method = re.search(r"-X (\w+)", block)
        url = block.split()[3] if method else block.split()[1]
        found[f"{method.group(1) if method else 'GET'} {url.split('/personas', 1)[1]}"] = block
    return found


def run(example: str, server: Server, key: str, project: str, persona_id: str) -> tuple[int, str]:
    command = (
        example.replace("http://localhost:3000", server.base_url)
        .replace("PROJECT_ID", project)
        .replace("curl ", f"curl -sS -H 'X-Api-Key: {key}' -w '\\n%{{http_code}}' ", 1)
    )
    command = SEED_PERSONA_ID.sub(persona_id, command)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), body


def test_the_seed_has_an_example_for_each_endpoint() -> None:
    assert sorted(seed_examples()) == [
        "DELETE /987fcdeb-51a2-3bc4-d567-890123456789",
        "GET ",
        "GET /987fcdeb-51a2-3bc4-d567-890123456789",
        "POST ",
        "POST /987fcdeb/generate-image",
        "PUT /987fcdeb-51a2-3bc4-d567-890123456789",
    ]


def test_every_seed_example_works_unchanged(llm_server: Server) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: the seed's examples are curl commands")
    examples = seed_examples()
    key = llm_server.new_tenant("project-seed")
    for project in ("project-seed", account_id(llm_server, "project-seed")):  # name, then id
        created_status, created = run(examples["POST "], llm_server, key, project, "-")
        assert created_status == 201, created
        persona = json.loads(created)
        assert persona.keys() >= SEED_FIELDS
        assert persona["name"] == "impatient-user"
        assert persona["description"] == "A user who wants quick answers"
        assert persona["systemPrompt"].startswith("You are an impatient user")
        pid = persona["id"]

        status, body = run(examples["GET "], llm_server, key, project, pid)
        assert status == 200
        listed = json.loads(body)
        assert isinstance(listed, list) and pid in [p["id"] for p in listed]
        assert all(p.keys() >= SEED_FIELDS for p in listed)

        one = "GET /987fcdeb-51a2-3bc4-d567-890123456789"
        status, body = run(examples[one], llm_server, key, project, pid)
        assert status == 200 and json.loads(body)["id"] == pid

        put = "PUT /987fcdeb-51a2-3bc4-d567-890123456789"
        status, body = run(examples[put], llm_server, key, project, pid)
        assert status == 200, body
        changed = json.loads(body)
        assert changed["systemPrompt"] == (
            "You are a technical user who expects detailed, accurate responses."
        )
        assert changed["name"] == "impatient-user" and changed["updatedAt"] >= persona["updatedAt"]

        image = "POST /987fcdeb/generate-image"
        status, body = run(examples[image], llm_server, key, project, pid)
        assert status == 200, body
        assert json.loads(body)["imageUrl"].endswith(".png")

        delete = "DELETE /987fcdeb-51a2-3bc4-d567-890123456789"
        status, body = run(examples[delete], llm_server, key, project, pid)
        assert (status, body) == (204, "")
        status, body = run(examples[one], llm_server, key, project, pid)
        assert status == 404 and "Persona not found" in body


def account_id(server: Server, name: str) -> str:
    """The id ``rapport accounts list`` prints first on the account's line."""
    listed = server.cli("accounts", "list")
    assert listed.returncode == 0, listed.stderr
    return next(line.split()[0] for line in listed.stdout.splitlines() if name in line.split())


def test_seed_messages_and_other_projects(server: Server) -> None:
    key = server.new_tenant("project-rules")
    server.new_tenant("project-other")
    base = "/api/projects/project-rules/personas"
    with server.client(headers={"X-Api-Key": key}) as client:
        nameless = client.post(base, json={"description": "no name"})
        assert nameless.status_code == 400 and nameless.json()["detail"] == "Name is required"
        assert client.post(base, json={"name": "twin"}).status_code == 201
        twin = client.post(base, json={"name": "twin"})
        assert twin.status_code == 409
        assert twin.json()["detail"] == "Persona with name already exists"
        missing = client.get(base + "/no-such-persona")
        assert missing.status_code == 404 and missing.json()["detail"] == "Persona not found"
        assert client.delete(base + "/no-such-persona").status_code == 404
        assert client.put(base + "/no-such-persona", json={"name": "x"}).status_code == 404
        # Another account's project, or one that does not exist, is not found: the same
        # answer for both, and nothing of the other account is read or changed.
        for other in ("project-other", "no-such-project"):
            path = f"/api/projects/{other}/personas"
            for response in (
                client.get(path),
                client.post(path, json={"name": "intruder"}),
                client.get(path + "/anything"),
                client.delete(path + "/anything"),
            ):
                assert response.status_code == 404, response.text
                assert response.json()["detail"] == "Project not found"
        # Bad bodies are validation failures, never a 500.
        for body in ([1, 2], {"name": 5}, {"name": "x", "unknown": 1}, "nope"):
            bad = client.post(base, json=body)
            assert bad.status_code == 400, bad.text
            assert bad.json()["code"] == "validation.failed"
        broken = client.post(base, content=b"{", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get(base).status_code == 401
