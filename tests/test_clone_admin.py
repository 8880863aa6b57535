"""Seed 002's admin endpoints against a real server: the seed's examples as printed
(``tests/seed_002.py``), voice samples and videos on the default persona with the seed's
metadata, instances as personas with a configuration, and bad bodies answered 4xx."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from engine.errors import InvalidSignature
from engine.media import MAX_VOICE_BYTES, base64_length
from engine.persona_media import MediaStore, VideoDetails, VoiceProfile
from engine.state import connect
from tests.conftest import RedisServer, Server
from tests.seed_002 import examples
from tests.test_http_plumbing import raw_exchange

SEED = examples()
AUDIO = Path(__file__).parent / "audio"
VOICE = "/api/admin/add_voice"
VIDEO = "/api/admin/video"
INSTANCE = "/api/instance"
ADMIN_INSTANCE = "/api/admin/instance"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0003860180"
    "5a347d6b0000000049454e44ae426082"
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def video(fmt: str = "mp4", codec: str = "mpeg4", frames: int = 10) -> bytes:
    """A real, tiny video: 32x32 grey frames at 10 fps."""
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for n in range(frames):
            picture = np.full((32, 32, 3), n * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code, body
    return body


def seed_shaped(response: httpx.Response, endpoint: str) -> dict[str, Any]:
    """200 with exactly the seed's keys, its status and its message."""
    assert response.status_code == 200, response.text
    body = response.json()
    expected = SEED[endpoint]["response"]
    assert body.keys() == expected.keys(), body
    assert (body["status"], body["message"]) == ("success", expected["message"])
    return body


@pytest.fixture
def client(server: Server):
    key = server.new_tenant(unique("clone-admin"))
    with server.client(timeout=60, headers={"X-Api-Key": key}) as http:
        yield http


@pytest.fixture(scope="module")
def one_account(server: Server):
    """One account for tests that must leave it as they found it."""
    key = server.new_tenant(unique("clone-admin"))
    with server.client(timeout=60, headers={"X-Api-Key": key}) as http:
        yield http


def default_media(client: httpx.Client) -> list[dict[str, Any]]:
    persona = client.get("/api/personas/default").json()
    listed = client.get(f"/api/personas/{persona['id']}/media")
    assert listed.status_code == 200
    assert listed.json() == persona["media"]
    return listed.json()


def voice_body(data: bytes, **fields: Any) -> dict[str, Any]:
    given = {"language": "en", "tone": "friendly", "pitch": "medium", **fields}
    return {"voice_data": {**given, "sample_audio": b64(data)}}


def video_body(data: bytes, **fields: Any) -> dict[str, Any]:
    given = {"title": "Intro", "duration": 1, "resolution": "32x32", **fields}
    return {"video_data": {**given, "file": b64(data)}}


# -- the seed's examples ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [(f"POST {VOICE}", "voice_data.sample_audio"), (f"POST {VIDEO}", "video_data.file")],
)
def test_the_seeds_media_examples_are_refused_clearly(
    client: httpx.Client, endpoint: str, field: str
) -> None:
    """The seed's placeholders ("base64_encoded_audio") are not base64: '_' is not in its
    alphabet (RFC 4648 §4). The answer names the field; nothing is stored."""
    method, path = endpoint.split()
    response = client.request(method, path, json=SEED[endpoint]["request"])
    body = problem(response, 400, "validation.failed")
    assert body["errors"] == {field: ["broken base64"]}
    assert body["detail"] == f"{field} is not valid base64."
    assert default_media(client) == []


def test_the_seeds_instance_examples_run_as_printed(client: httpx.Client) -> None:
    example = SEED[f"POST {ADMIN_INSTANCE}"]["request"]["instance_data"]
    created = seed_shaped(
        client.post(ADMIN_INSTANCE, json=SEED[f"POST {ADMIN_INSTANCE}"]["request"]),
        f"POST {ADMIN_INSTANCE}",
    )
    persona = client.get(f"/api/personas/{created['instance_id']}").json()
    assert (persona["name"], persona["description"], persona["configuration"]) == (
        example["name"], example["description"], example["configuration"])  # fmt: skip
    assert persona["isDefault"] is False

    # The seed's id is no instance of this account's.
    unknown = client.request("DELETE", INSTANCE, json=SEED[f"DELETE {INSTANCE}"]["request"])
    problem(unknown, 404, "resource.not_found")
    deleted = client.request("DELETE", INSTANCE, json={"instance_id": created["instance_id"]})
    assert seed_shaped(deleted, f"DELETE {INSTANCE}") == SEED[f"DELETE {INSTANCE}"]["response"]
    assert client.get(f"/api/personas/{created['instance_id']}").status_code == 404

    # The other path takes the same body, and the name is free again.
    again = seed_shaped(
        client.post(INSTANCE, json=SEED[f"POST {INSTANCE}"]["request"]), f"POST {INSTANCE}"
    )
    assert again["instance_id"] != created["instance_id"]
    taken = client.post(ADMIN_INSTANCE, json=SEED[f"POST {ADMIN_INSTANCE}"]["request"])
    assert problem(taken, 409, "resource.conflict")["detail"] == "Persona with name already exists"


# -- voice samples and videos ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "mime"),
    [("ada.wav", "audio/wav"), ("ada.mp3", "audio/mpeg"), ("ada.ogg", "audio/ogg"),
     ("ada.m4a", "audio/mp4"), ("ada_live.webm", "audio/webm")],
)  # fmt: skip
def test_a_voice_sample_goes_to_the_default_persona(
    client: httpx.Client, file: str, mime: str
) -> None:
    data = (AUDIO / file).read_bytes()
    body = voice_body(data, language="pt-BR", tone="warm", pitch="low")
    added = seed_shaped(client.post(VOICE, json=body), f"POST {VOICE}")
    [media] = default_media(client)
    assert media["id"] == added["voice_id"]
    assert (media["kind"], media["mime"], media["sizeBytes"], media["fileName"]) == (
        "voice", mime, len(data), None)  # fmt: skip
    assert media["voiceProfile"] == {"language": "pt-BR", "tone": "warm", "pitch": "low"}
    assert media["videoDetails"] is None
    served = client.get(media["url"])
    assert served.content == data and served.headers["content-type"].startswith(mime)


@pytest.mark.parametrize(("fmt", "codec", "mime"), [("mp4", "mpeg4", "video/mp4"),
                                                    ("webm", "libvpx", "video/webm")])  # fmt: skip
def test_a_video_goes_to_the_default_persona(
    client: httpx.Client, fmt: str, codec: str, mime: str
) -> None:
    data = video(fmt, codec)
    body = video_body(data, title="Introduction Video", description="Hello", duration=120,
                      resolution="1080p")  # fmt: skip
    added = seed_shaped(client.post(VIDEO, json=body), f"POST {VIDEO}")
    [media] = default_media(client)
    assert (media["id"], media["kind"], media["mime"], media["sizeBytes"]) == (
        added["video_id"], "video", mime, len(data))  # fmt: skip
    assert media["videoDetails"] == {
        "title": "Introduction Video", "description": "Hello", "durationSeconds": 120,
        "resolution": "1080p"}  # fmt: skip
    assert media["voiceProfile"] is None
    assert client.get(media["url"]).content == data


def test_a_videos_description_is_optional(client: httpx.Client) -> None:
    seed_shaped(client.post(VIDEO, json=video_body(video(), duration=0)), f"POST {VIDEO}")
    [media] = default_media(client)
    details = {"title": "Intro", "description": "", "durationSeconds": 0, "resolution": "32x32"}
    assert media["videoDetails"] == details


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [(VOICE, voice_body(PNG), "voice_data.sample_audio"),
     (VOICE, voice_body(b"not audio at all"), "voice_data.sample_audio"),
     (VIDEO, video_body((AUDIO / "ada.wav").read_bytes()), "video_data.file"),
     (VIDEO, video_body(PNG), "video_data.file")],
    ids=["png as voice", "text as voice", "wav as video", "png as video"],
)  # fmt: skip
def test_a_file_of_another_kind_is_an_invalid_signature(
    client: httpx.Client, path: str, body: dict, field: str
) -> None:
    refused = problem(client.post(path, json=body), 400, "upload.invalid_signature")
    assert list(refused["errors"]) == [field]
    assert default_media(client) == []


def test_oversized_files_are_refused_before_and_after_decoding(
    server: Server, client: httpx.Client
) -> None:
    # Over the limit on the base64 text: refused before anything is decoded.
    over = voice_body(b"")
    over["voice_data"]["sample_audio"] = "A" * (base64_length(MAX_VOICE_BYTES) + 4)
    refused = problem(client.post(VOICE, json=over), 413, "upload.file_too_large")
    assert list(refused["errors"]) == ["voice_data.sample_audio"]
    # One byte over once decoded (the base64 text is as long as the limit's).
    wav = (AUDIO / "silence.wav").read_bytes()
    padded = wav + bytes(MAX_VOICE_BYTES + 1 - len(wav))
    problem(client.post(VOICE, json=voice_body(padded)), 413, "upload.file_too_large")
    # A declared body over the route's limit: refused before it is read.
    for path in (VOICE, VIDEO):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Api-Key: {client.headers['x-api-key']}\r\nContent-Length: {200 * 1024 * 1024}"
            "\r\n\r\n"
        )
        status, headers, payload = raw_exchange(server, head, b"x" * 65536)
        assert status == 413 and headers["content-type"] == "application/problem+json"
        assert json.loads(payload)["code"] == "upload.file_too_large"
    assert default_media(client) == []


async def test_a_description_goes_only_with_its_kind(redis_server: RedisServer) -> None:
    redis = connect(redis_server.url, 2)
    store = MediaStore(redis)
    wav = (AUDIO / "silence.wav").read_bytes()
    details = VideoDetails(title="t", duration_seconds=1, resolution="720p")
    with pytest.raises(InvalidSignature):
        await store.add("acct", "p1", "audio/wav", wav, None, about=details)
    profile = VoiceProfile("en", "calm", "low")
    with pytest.raises(InvalidSignature):
        await store.add("acct", "p1", "video/mp4", video(), None, about=profile)
    assert await store.list("acct", "p1") == []
    added = await store.add("acct", "p1", "audio/wav", wav, None, about=profile)
    assert (await store.list("acct", "p1")) == [added] and added.voice_profile == profile
    await redis.aclose()


def test_voice_and_video_count_as_persona_uploads(persona_uploads_limited: Server) -> None:
    server = persona_uploads_limited
    wav = (AUDIO / "silence.wav").read_bytes()
    with server.client(headers={"X-Api-Key": server.new_tenant(unique("uploads"))}) as http:
        codes = [
            http.post(VOICE, json=voice_body(wav)).status_code,
            http.post(VIDEO, json=video_body(video())).status_code,
            http.post(VOICE, json=voice_body(wav)).status_code,
        ]
        assert codes == [200, 200, 429]
        limited = http.post(VIDEO, json=video_body(video())).json()
        assert limited["code"] == "limits.rate_exceeded" and limited["scope"] == "user"
        # Instances are ordinary writes.
        assert http.post(INSTANCE, json=SEED[f"POST {INSTANCE}"]["request"]).status_code == 200


# -- instances -------------------------------------------------------------------------------


def instance_body(**fields: Any) -> dict[str, Any]:
    given = {"name": unique("clone"), "description": "A clone", "configuration": {}, **fields}
    return {"instance_data": given}


def test_configuration_is_kept_as_given_and_shown(client: httpx.Client) -> None:
    configuration = {"maxTokens": 200, "voice": {"speakingRate": 1.1, "styles": ["calm", None]},
                     "enabled": True, "Setting One": "x"}  # fmt: skip
    created = client.post(INSTANCE, json=instance_body(configuration=configuration)).json()
    path = f"/api/personas/{created['instance_id']}"
    assert client.get(path).json()["configuration"] == configuration
    listed = {p["id"]: p for p in client.get("/api/personas").json()["items"]}
    assert listed[created["instance_id"]]["configuration"] == configuration
    # A persona made otherwise has an empty one; PUT and PATCH replace it whole, keys as sent.
    assert client.get("/api/personas/default").json()["configuration"] == {}
    replaced = client.patch(path, json={"configuration": {"camelCase": {"innerKey": 1}}})
    assert replaced.json()["configuration"] == {"camelCase": {"innerKey": 1}}
    made = client.post("/api/personas", json={"name": unique("p"), "configuration": {"aB": 1}})
    assert made.json()["configuration"] == {"aB": 1}
    huge = client.put(path, json={"configuration": {"x": "y" * 17_000}})
    assert list(problem(huge, 400, "validation.failed")["errors"]) == ["configuration"]
    assert client.get(path).json()["configuration"] == {"camelCase": {"innerKey": 1}}


def test_deleting_an_instance_deletes_the_persona_and_its_media(
    server: Server, client: httpx.Client
) -> None:
    created = client.post(INSTANCE, json=instance_body()).json()
    persona_id = created["instance_id"]
    upload = client.post(
        f"/api/personas/{persona_id}/media", files={"file": ("face.png", PNG, "image/png")}
    )
    assert upload.status_code == 201
    stranger = server.new_tenant(unique("stranger"))
    with server.client(headers={"X-Api-Key": stranger}) as other:
        refused = other.request("DELETE", INSTANCE, json={"instance_id": persona_id})
        problem(refused, 404, "resource.not_found")
    deleted = client.request("DELETE", INSTANCE, json={"instance_id": persona_id})
    assert deleted.json() == SEED[f"DELETE {INSTANCE}"]["response"]
    assert client.get(upload.json()["url"]).status_code == 404
    again = client.request("DELETE", INSTANCE, json={"instance_id": persona_id})
    problem(again, 404, "resource.not_found")
    default_id = client.get("/api/personas/default").json()["id"]
    kept = client.request("DELETE", INSTANCE, json={"instance_id": default_id})
    problem(kept, 409, "resource.conflict")
    assert client.get(f"/api/personas/{default_id}").status_code == 200


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


VOICE_OK = {"language": "en", "tone": "friendly", "pitch": "medium", "sample_audio": "AAAA"}
VIDEO_OK = {"file": "AAAA", "title": "t", "duration": 1, "resolution": "720p"}
INSTANCE_OK = {"name": "n", "description": "d", "configuration": {}}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", VOICE, {}, "voice_data"),
        ("POST", VOICE, {"voice_data": VOICE_OK, "persona": "x"}, "persona"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "language": None}}, "voice_data.language"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "language": "english!"}},
         "voice_data.language"),
        ("POST", VOICE, {"voice_data": {k: v for k, v in VOICE_OK.items() if k != "pitch"}},
         "voice_data.pitch"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "tone": 3}}, "voice_data.tone"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "speed": "fast"}}, "voice_data.speed"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "sample_audio": ""}},
         "voice_data.sample_audio"),
        ("POST", VOICE, {"voice_data": {**VOICE_OK, "sample_audio": "data:audio/wav;base64,AA=="}},
         "voice_data.sample_audio"),
        ("POST", VOICE, {"voice_data": "AAAA"}, "voice_data"),
        ("POST", VOICE, b"not json", "body"),
        ("POST", VOICE, b"[]", "body"),
        ("POST", VIDEO, {"video_data": {**VIDEO_OK, "duration": -1}}, "video_data.duration"),
        ("POST", VIDEO, {"video_data": {**VIDEO_OK, "duration": 1.5}}, "video_data.duration"),
        ("POST", VIDEO, {"video_data": {**VIDEO_OK, "duration": "120"}}, "video_data.duration"),
        ("POST", VIDEO, {"video_data": {**VIDEO_OK, "title": ""}}, "video_data.title"),
        ("POST", VIDEO, {"video_data": {k: v for k, v in VIDEO_OK.items() if k != "file"}},
         "video_data.file"),
        ("POST", VIDEO, {"video_data": {**VIDEO_OK, "file": "AAA"}}, "video_data.file"),
        ("POST", INSTANCE, {}, "instance_data"),
        ("POST", INSTANCE, {"instance_data": {**INSTANCE_OK, "name": ""}}, "instance_data.name"),
        ("POST", INSTANCE, {"instance_data": {**INSTANCE_OK, "name": "n" * 65}},
         "instance_data.name"),
        ("POST", INSTANCE, {"instance_data": {**INSTANCE_OK, "description": 1}},
         "instance_data.description"),
        ("POST", INSTANCE, {"instance_data": {**INSTANCE_OK, "configuration": ["a"]}},
         "instance_data.configuration"),
        ("POST", INSTANCE, {"instance_data": {**INSTANCE_OK, "configuration": None}},
         "instance_data.configuration"),
        ("POST", INSTANCE, {"instance_data": {"name": "n", "description": "d"}},
         "instance_data.configuration"),
        ("POST", ADMIN_INSTANCE, {"instance_data": {**INSTANCE_OK,
                                                    "configuration": {"x": "y" * 16_400}}},
         "instance_data.configuration"),
        ("POST", ADMIN_INSTANCE, {"instance_data": {**INSTANCE_OK, "configuration": nested(33)}},
         "instance_data.configuration"),
        ("POST", ADMIN_INSTANCE,
         b'{"instance_data": {"name": "n", "description": "d", "configuration": {"a": '
         + b"[" * 5000 + b"]" * 5000 + b"}}}", "body"),
        ("POST", INSTANCE, b"", "body"),
        ("POST", "/api/personas", {"name": "n", "configuration": nested(33)}, "configuration"),
        ("POST", "/api/personas",
         b'{"name": "n", "configuration": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "body"),
        ("DELETE", INSTANCE, {}, "instance_id"),
        ("DELETE", INSTANCE, {"instance_id": "a:b"}, "instance_id"),
        ("DELETE", INSTANCE, {"instance_id": 67890}, "instance_id"),
        ("DELETE", INSTANCE, {"instance_id": "x", "force": True}, "force"),
        ("DELETE", INSTANCE, b"{", "body"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(
    one_account: httpx.Client, method: str, path: str, body: dict | bytes, field: str
) -> None:
    if isinstance(body, bytes):
        response = one_account.request(method, path, content=body)
    else:
        response = one_account.request(method, path, json=body)
    refused = problem(response, 400, "validation.failed")
    assert list(refused["errors"]) == [field]
    assert refused["detail"].startswith(f"{field}")
    assert default_media(one_account) == []
    assert one_account.get("/api/personas").json()["total_count"] == 1
