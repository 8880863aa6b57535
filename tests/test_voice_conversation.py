"""Voice through POST /api/v1/conversation: real speech, real transcription, every format."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server

URL = "/api/v1/conversation"
AUDIO = Path(__file__).parent / "audio"
FORMATS = {
    "ada.wav": "audio/wav",
    "ada.ogg": "audio/ogg",
    "ada.mp3": "audio/mpeg",
    "ada.m4a": "audio/m4a",
    "ada_live.webm": "audio/webm",
}


def voice(name: str, mime: str | None = None) -> dict[str, str]:
    payload = {"voice_b64": base64.b64encode((AUDIO / name).read_bytes()).decode()}
    if mime is not None:
        payload["voice_mime"] = mime
    return payload


def said_the_sentence(text: str) -> bool:
    lowered = text.lower()
    return "price" in lowered and "pro plan" in lowered


@pytest.mark.parametrize(("name", "mime"), FORMATS.items())
def test_a_voice_note_is_the_question(server: Server, name: str, mime: str) -> None:
    user = f"voice-{uuid.uuid4().hex[:8]}"
    with server.client(headers={"X-Api-Key": server.demo_key}, timeout=60) as client:
        response = client.post(URL, json={"user_id": user, **voice(name, mime)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert said_the_sentence(body["transcript"]), body["transcript"]
        history = client.get(f"/api/v1/users/{user}/history").json()
    assert history["items"][0]["message"] == body["transcript"], "the transcript is remembered"


def test_voice_beside_text_is_context(llm_server: Server, fake: FakeOpenAI) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}, timeout=60) as client:
        response = client.post(
            URL, json={"user_id": "ctx", "message": "Please answer my voice note.",
                       **voice("ada.ogg", "audio/ogg")},
        )  # fmt: skip
    assert response.status_code == 200
    assert said_the_sentence(response.json()["transcript"])
    question = fake.calls()[-1]["messages"][-1]["content"]
    assert question.startswith("Please answer my voice note.")
    assert "voice note saying:" in question and "pro plan" in question.lower()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"voice_b64": base64.b64encode(b"not audio at all" * 50).decode(),
          "voice_mime": "audio/wav"}, "invalid_voice_format"),
        (voice("ada.ogg", "audio/wav"), "invalid_voice_mime"),
        (voice("ada.mp3", "audio/webm"), "invalid_voice_mime"),
        (voice("silence.wav", "audio/wav"), "voice_transcription_failed"),
    ],
    ids=["garbage", "ogg-as-wav", "mp3-as-webm", "silence"],
)  # fmt: skip
def test_bad_voice_gets_its_code_and_costs_nothing(
    server: Server, payload: dict, code: str
) -> None:
    with server.client(headers={"X-Api-Key": server.demo_key}, timeout=60) as client:
        before = client.get("/api/subscription/limits").json()["usage"]["requestBalance"]
        response = client.post(URL, json={"user_id": "bad-voice", **payload})
        assert response.status_code == 400
        assert response.json()["detail"]["code"] == code
        after = client.get("/api/subscription/limits").json()["usage"]["requestBalance"]
    assert after == before


def test_voice_longer_than_the_limit_is_refused(server_on) -> None:
    server = server_on(RAPPORT_STT_MAX_SECONDS="1")
    with server.client(headers={"X-Api-Key": server.demo_key}, timeout=60) as client:
        response = client.post(URL, json={"user_id": "long", **voice("ada.wav", "audio/wav")})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["code"] == "invalid_voice_format" and "1" in detail["message"]
