"""Persona media (voice samples, videos, images) and portrait generation."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import struct
import uuid
import wave

import httpx
import pytest

from engine.persona_media import MediaStore
from engine.state import connect
from loadtest.fake_llm import PORTRAIT_PNG_B64, FakeOpenAI
from tests.conftest import RedisServer, Server
from tests.test_knowledge import state_of

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0003860180"
    "5a347d6b0000000049454e44ae426082"
)
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(64)
OGG = b"OggS\x00\x02" + bytes(64)


def wav_tone(seconds: float = 0.2, rate: int = 16_000) -> bytes:
    """A real WAV file: a 440 Hz tone."""
    frames = b"".join(
        struct.pack("<h", int(12_000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(frames)
    return out.getvalue()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(server: Server):
    key = server.new_tenant(unique("media"))
    with server.client(headers={"X-Api-Key": key}) as http:
        yield http


def new_persona(client: httpx.Client, **fields: object) -> str:
    response = client.post("/api/personas", json={"name": unique("p"), **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload(client: httpx.Client, persona_id: str, name: str, data: bytes, mime: str):
    return client.post(f"/api/personas/{persona_id}/media", files={"file": (name, data, mime)})


def test_voice_video_and_image_are_stored_listed_and_served(client: httpx.Client) -> None:
    persona_id = new_persona(client)
    files = {
        "voice": ("hello.wav", wav_tone(), "audio/wav"),
        "video": ("intro.mp4", MP4, "video/mp4"),
        "image": ("face.png", PNG, "image/png"),
    }
    stored = {}
    for kind, (name, data, mime) in files.items():
        response = upload(client, persona_id, name, data, mime)
        assert response.status_code == 201, response.text
        media = response.json()
        assert (media["kind"], media["mime"], media["sizeBytes"], media["fileName"]) == (
            kind, mime, len(data), name)  # fmt: skip
        stored[kind] = media
    persona = client.get(f"/api/personas/{persona_id}").json()
    assert [m["kind"] for m in persona["media"]] == ["voice", "video", "image"]
    for kind, (_, data, mime) in files.items():
        served = client.get(stored[kind]["url"])
        assert served.status_code == 200 and served.content == data
        assert served.headers["content-type"].startswith(mime)
    assert client.delete(stored["video"]["url"]).status_code == 204
    assert client.get(stored["video"]["url"]).status_code == 404
    assert client.delete(stored["video"]["url"]).status_code == 404
    assert len(client.get(f"/api/personas/{persona_id}/media").json()) == 2
    ogg = upload(client, persona_id, "note.ogg", OGG, "audio/ogg")
    assert ogg.status_code == 201 and ogg.json()["kind"] == "voice"


@pytest.mark.parametrize(
    ("name", "data", "mime", "status", "code"),
    [
        ("fake.wav", PNG, "audio/wav", 400, "upload.invalid_signature"),
        ("fake.png", wav_tone(), "image/png", 400, "upload.invalid_signature"),
        ("fake.mp4", OGG, "video/mp4", 400, "upload.invalid_signature"),
        ("doc.pdf", b"%PDF-1.4", "application/pdf", 415, "upload.unsupported_type"),
        ("anim.gif", b"GIF89a" + bytes(20), "image/gif", 415, "upload.unsupported_type"),
        ("huge.png", PNG + bytes(5 * 1024 * 1024), "image/png", 413, "upload.file_too_large"),
    ],
)  # fmt: skip
def test_media_upload_errors(
    client: httpx.Client, name: str, data: bytes, mime: str, status: int, code: str
) -> None:
    persona_id = new_persona(client)
    response = upload(client, persona_id, name, data, mime)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert client.get(f"/api/personas/{persona_id}/media").json() == []


def test_media_goes_with_its_persona(server: Server, client: httpx.Client) -> None:
    persona_id = new_persona(client)
    url = upload(client, persona_id, "face.png", PNG, "image/png").json()["url"]
    assert client.delete(f"/api/personas/{persona_id}").status_code == 204
    assert client.get(url).status_code == 404

    async def leftovers() -> list[str]:
        redis = state_of(server)
        try:
            return [key async for key in redis.scan_iter(f"*persona:{persona_id}*")]
        finally:
            await redis.aclose()

    assert asyncio.run(leftovers()) == []


def test_another_accounts_persona_media_is_404(server: Server, client: httpx.Client) -> None:
    persona_id = new_persona(client)
    url = upload(client, persona_id, "face.png", PNG, "image/png").json()["url"]
    stranger = server.new_tenant(unique("stranger"))
    with server.client(headers={"X-Api-Key": stranger}) as other:
        attempts = [
            upload(other, persona_id, "face.png", PNG, "image/png"),
            other.get(f"/api/personas/{persona_id}/media"),
            other.get(url),
            other.delete(url),
            other.post(f"/api/personas/{persona_id}/generate-image"),
        ]
    assert [r.status_code for r in attempts] == [404] * 5
    assert client.get(url).status_code == 200


def test_persona_uploads_are_rate_limited(persona_uploads_limited: Server) -> None:
    server = persona_uploads_limited
    with server.client(headers={"X-Api-Key": server.new_tenant(unique("uploads"))}) as http:
        persona_id = new_persona(http)
        codes = [upload(http, persona_id, "f.png", PNG, "image/png").status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        limited = upload(http, persona_id, "f.png", PNG, "image/png").json()
        assert limited["code"] == "limits.rate_exceeded" and limited["scope"] == "user"


def test_portraits_need_a_provider_and_a_system_prompt(client: httpx.Client) -> None:
    persona_id = new_persona(client, systemPrompt="You are cheerful.")
    refused = client.post(f"/api/personas/{persona_id}/generate-image")
    assert refused.status_code == 400
    assert refused.json()["code"] == "request.precondition_failed"
    assert refused.json()["detail"] == "No LLM provider configured"


def test_a_generated_portrait_becomes_the_persona_image(
    llm_server: Server, fake: FakeOpenAI
) -> None:
    key = llm_server.new_tenant(unique("portrait"))
    with llm_server.client(headers={"X-Api-Key": key}) as client:
        blank = new_persona(client)
        no_prompt = client.post(f"/api/personas/{blank}/generate-image")
        assert no_prompt.status_code == 400
        assert no_prompt.json()["detail"] == "Persona has no system prompt"

        persona_id = new_persona(client, systemPrompt="You are a cheerful travel guide.")
        made = client.post(f"/api/personas/{persona_id}/generate-image")
        assert made.status_code == 200, made.text
        persona = made.json()
        image = persona["media"][0]
        assert persona["imageUrl"] == f"{image['id']}.png"
        assert client.get(image["url"]).content == base64.b64decode(PORTRAIT_PNG_B64)
        request = fake.calls()[-1]
        assert request["model"] == "gpt-image-1"
        assert "cheerful travel guide" in request["prompt"]

        fake.configure(status=500)
        failed = client.post(f"/api/personas/{persona_id}/generate-image")
        assert failed.status_code == 502 and failed.json()["code"] == "server.upstream_error"
        assert len(client.get(f"/api/personas/{persona_id}/media").json()) == 1


async def test_a_page_of_personas_reads_its_media_in_one_round_trip(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = connect(redis_server.url, 2)
    store = MediaStore(redis)
    await store.add("acct", "p1", "image/png", PNG, "one.png")
    await store.add("acct", "p1", "audio/ogg", OGG, "two.ogg")
    await store.add("acct", "p3", "video/mp4", MP4, "three.mp4")
    pipelines = []
    pipeline = redis.pipeline

    def counted(*args, **kwargs):
        pipelines.append(args)
        return pipeline(*args, **kwargs)

    async def one_by_one(*args, **kwargs):
        raise AssertionError("one read per persona")

    monkeypatch.setattr(redis, "pipeline", counted)
    monkeypatch.setattr(redis, "hvals", one_by_one)
    found = await store.list_many("acct", ["p1", "p2", "p3"])
    assert len(pipelines) == 1
    assert {p: [m.file_name for m in media] for p, media in found.items()} == {
        "p1": ["one.png", "two.ogg"], "p2": [], "p3": ["three.mp4"]}  # fmt: skip
    assert await store.list_many("acct", []) == {}
    await redis.aclose()
