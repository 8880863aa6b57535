"""POST /api/v1/conversation against seed 004: its own examples, its fields, its errors."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from engine.media import MAX_IMAGE_B64, MAX_VOICE_B64
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server

URL = "/api/v1/conversation"
SEED = Path(__file__).parent / "contracts" / "seed_004_conversation_api.txt"
ROLE = (
    "You are the private AI assistant for Acme. You answer product and support questions, "
    "rely on the official knowledge base, keep replies concise, and escalate billing "
    "disputes to a human."
)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
# Real 8x6 images, encoded with the mjpeg and libwebp encoders bundled with PyAV.
JPEG = base64.b64decode(
    "/9j//gAQTGF2YzYyLjI4LjEwMgD/2wBDAAgEBAQEBAUFBQUFBQYGBgYGBgYGBgYGBgYHBwcICAgH"
    "BwcGBgcHCAgICAkJCQgICAgJCQoKCgwMCwsODg4RERT/xABLAAEBAAAAAAAAAAAAAAAAAAAACAEB"
    "AAAAAAAAAAAAAAAAAAAAABABAAAAAAAAAAAAAAAAAAAAABEBAAAAAAAAAAAAAAAAAAAAAP/AABEI"
    "AAYACAMBIgACEQADEQD/2gAMAwEAAhEDEQA/AJ/AB//Z"
)
WEBP = base64.b64decode("UklGRiQAAABXRUJQVlA4IBgAAAAwAQCdASoIAAYAAgA0JaQAA3AA/vv9UAA=")
WAV_HEAD = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def seed_example(language: str) -> str:
    """The example of ``language`` exactly as seed 004 prints it, base URL and key replaced."""
    text = SEED.read_text()
    start = {"curl": "curl -X POST", "js": "const API_URL", "python": "import requests"}[language]
    end = {
        "curl": "}'",
        "js": "console.log(response.status, await response.json());",
        "python": "print(resp.status_code, resp.json())",
    }[language]
    body = text[text.index(start) :]
    return body[: body.index(end) + len(end)]


def localise(snippet: str, server: Server, key: str) -> str:
    return (
        snippet.replace("https://<PRIVATE_DEPLOYMENT_URL>", server.base_url)
        .replace("YOUR_API_KEY", key)
        .replace("req-usr-42-001", f"req-usr-42-{uuid.uuid4().hex}")
    )


def assert_reply(body: dict) -> None:
    assert set(body) == {"reply", "latency_ms", "latency_breakdown", "request_id", "sources"}
    assert isinstance(body["reply"], str) and body["reply"]
    breakdown = body["latency_breakdown"]
    assert set(breakdown) == {"queue_latency_ms", "worker_latency_ms", "total_latency_ms"}
    assert all(isinstance(v, int) and v >= 0 for v in breakdown.values())
    assert body["latency_ms"] == breakdown["total_latency_ms"]
    assert isinstance(body["sources"], list)


def test_the_seed_curl_example_works_unchanged(llm_server: Server, fake: FakeOpenAI) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    command = localise(seed_example("curl"), llm_server, llm_server.demo_key)
    done = subprocess.run(
        ["bash", "-c", command + " -sS -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200", done.stdout + done.stderr
    reply = json.loads(body)
    assert_reply(reply)
    assert reply["reply"] == "This is the fake model speaking."
    # The seed's persona went into the prompt.
    system = fake.calls()[-1]["messages"][0]["content"]
    assert "You are Nora." in system and ROLE in system


def test_the_seed_python_example_works_unchanged(llm_server: Server, fake: FakeOpenAI) -> None:
    # The seed writes JSON's null inside its Python; the only change is to define it.
    program = "null = None\n" + localise(seed_example("python"), llm_server, llm_server.demo_key)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 {"), done.stdout


def test_the_seed_javascript_example_works_unchanged(llm_server: Server, fake: FakeOpenAI) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    program = localise(seed_example("js"), llm_server, llm_server.demo_key)
    done = subprocess.run(
        ["node", "--input-type=module", "-e", program],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 {"), done.stdout


def test_the_reply_and_its_request_id(llm_server: Server, fake: FakeOpenAI) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        response = client.post(URL, json={"user_id": "usr-1", "message": "Hello"})
    assert response.status_code == 200
    body = response.json()
    assert_reply(body)
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["ratelimit-limit"] == "1000000"


def test_an_image_with_text_reaches_the_model_and_voice_is_checked(
    llm_server: Server, fake: FakeOpenAI
) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        for mime, data in (("image/png", PNG), ("image/jpg", JPEG), ("image/webp", WEBP)):
            response = client.post(
                URL,
                json={"user_id": "u", "message": "What is this?", "image_b64": b64(data),
                      "image_mime": mime},
            )  # fmt: skip
            assert response.status_code == 200, response.text
        # Text wins over voice, which still has to be real audio of its declared type.
        both = client.post(
            URL,
            json={"user_id": "u", "message": "Hi", "voice_b64": b64(WAV_HEAD),
                  "voice_mime": "audio/wav"},
        )  # fmt: skip
        assert both.status_code == 400
        assert both.json()["detail"]["code"] == "invalid_voice_format"


def v1_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["code"] == code
    assert detail["request_id"] == response.headers["x-request-id"]
    return detail["message"]


BAD_REQUESTS = {
    "no user_id": {"message": "hi"},
    "empty user_id": {"user_id": "", "message": "hi"},
    "long user_id": {"user_id": "u" * 129, "message": "hi"},
    "user_id not a string": {"user_id": 42, "message": "hi"},
    "nothing to answer": {"user_id": "u"},
    "all null": {"user_id": "u", "message": None, "image_b64": None, "voice_b64": None},
    "empty message": {"user_id": "u", "message": ""},
    "long message": {"user_id": "u", "message": "m" * 4001},
    "mime without image": {"user_id": "u", "message": "hi", "image_mime": "image/png"},
    "image without mime": {"user_id": "u", "image_b64": b64(PNG)},
    "gif": {"user_id": "u", "image_b64": b64(PNG), "image_mime": "image/gif"},
    "png called jpeg": {"user_id": "u", "image_b64": b64(PNG), "image_mime": "image/jpeg"},
    "not an image": {"user_id": "u", "image_b64": b64(b"hello world"), "image_mime": "image/png"},
    "png without a header": {"user_id": "u", "image_b64": b64(PNG[:16]), "image_mime": "image/png"},
    "jpeg without a frame": {"user_id": "u", "image_b64": b64(JPEG[:20]),
                             "image_mime": "image/jpeg"},
    "broken image base64": {"user_id": "u", "image_b64": "%%%bad", "image_mime": "image/png"},
    "data url": {"user_id": "u", "image_b64": "data:image/png;base64," + b64(PNG),
                 "image_mime": "image/png"},
    "image over 5 MiB": {"user_id": "u", "image_b64": "A" * (MAX_IMAGE_B64 + 4),
                         "image_mime": "image/png"},
    "broken voice base64": {"user_id": "u", "message": "hi", "voice_b64": "@@@@",
                            "voice_mime": "audio/wav"},
    "unknown voice mime": {"user_id": "u", "message": "hi", "voice_b64": b64(WAV_HEAD),
                           "voice_mime": "audio/flac"},
    "voice over 25 MiB": {"user_id": "u", "message": "hi", "voice_b64": "A" * (MAX_VOICE_B64 + 4),
                          "voice_mime": "audio/wav"},
    "persona not an object": {"user_id": "u", "message": "hi", "persona": "Nora"},
}  # fmt: skip


@pytest.mark.parametrize("payload", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_invalid_requests_are_invalid_payload(llm_server: Server, payload: dict) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}, timeout=60) as client:
        v1_error(client.post(URL, json=payload), 400, "invalid_payload")


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"user_id": "u", "message": "hi"', b"\xff\xfe"],
    ids=["empty", "text", "array", "truncated", "not utf-8"],
)
def test_bodies_that_are_not_a_json_object(llm_server: Server, body: bytes) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        v1_error(client.post(URL, content=body), 400, "invalid_payload")


def test_validation_names_the_field(llm_server: Server) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        message = v1_error(
            client.post(URL, json={"user_id": "u", "message": "m" * 4001}), 400, "invalid_payload"
        )
    assert message.startswith("message:")


BAD_PERSONAS = {
    "empty name": {"name": ""},
    "long name": {"name": "n" * 65},
    "age 0": {"age": 0},
    "age 121": {"age": 121},
    "gender": {"gender": "robot"},
    "zodiac": {"zodiac": "Ophiuchus"},
    "sociality": {"sociality": "shy"},
    "17 archetypes": {"archetypes": ["Sage"] * 17},
    "unknown archetype": {"archetypes": ["Wizard"]},
    "empty role": {"role": ""},
    "long role": {"role": "r" * 1001},
    "negative weight": {"temperament": {"sanguine": -1}},
    "unknown temperament": {"temperament": {"bilious": 1}},
    "unknown field": {"nickname": "N"},
}


@pytest.mark.parametrize("bad", BAD_PERSONAS.values(), ids=BAD_PERSONAS.keys())
def test_an_invalid_persona_field_rejects_everything_and_changes_nothing(
    llm_server: Server, fake: FakeOpenAI, bad: dict
) -> None:
    key = llm_server.new_tenant(f"persona-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        ok = client.post(URL, json={"user_id": "u", "message": "hi", "persona": {"name": "Nora"}})
        assert ok.status_code == 200
        # A valid change beside the invalid one must not be applied either.
        payload = {"user_id": "u", "message": "hi", "persona": {"role": "Changed.", **bad}}
        v1_error(client.post(URL, json=payload), 400, "invalid_payload")
        assert client.post(URL, json={"user_id": "u", "message": "again"}).status_code == 200
    system = fake.calls()[-1]["messages"][0]["content"]
    assert system.startswith("You are Nora.") and "Changed." not in system


def test_persona_merges_into_the_default_persona(llm_server: Server, fake: FakeOpenAI) -> None:
    key = llm_server.new_tenant(f"merge-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        for payload in (
            {"user_id": "u", "message": "hi", "persona": {"name": "Nora", "role": "You sell."}},
            {
                "user_id": "u",
                "message": "hi",
                "persona": {"age": 30, "temperament": {"choleric": 3}},
            },
            {"user_id": "other", "message": "hi"},
        ):
            assert client.post(URL, json=payload).status_code == 200
    system = fake.calls()[-1]["messages"][0]["content"]
    # Earlier fields stay, later ones add; another user_id sees the same profile (per key).
    assert system.startswith("You are Nora.\nYou sell.")
    assert "age 30" in system and "mostly choleric" in system


def test_persona_renamed_to_a_name_it_already_has_is_fine(llm_server: Server) -> None:
    key = llm_server.new_tenant(f"same-{uuid.uuid4().hex[:8]}")
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        for _ in range(2):
            payload = {"user_id": "u", "message": "hi", "persona": {"name": "Rapport"}}
            assert client.post(URL, json=payload).status_code == 200


def test_an_oversized_idempotency_key_is_invalid(llm_server: Server) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        response = client.post(
            URL, json={"user_id": "u", "message": "hi"}, headers={"Idempotency-Key": "k" * 256}
        )
    v1_error(response, 400, "invalid_payload")
