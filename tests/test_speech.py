"""Speech-to-text with the real Whisper tiny.en model on espeak-ng clips (tests/audio/).

One Transcriber is shared by the module so the model loads once; the error tests use their
own Transcribers and check that bad input never loads a model at all.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from engine import speech
from engine.speech import (
    InvalidVoiceFormat,
    InvalidVoiceMime,
    Transcriber,
    Transcript,
    VoiceTranscriptionFailed,
)

AUDIO = Path(__file__).parent / "audio"
# Every fixture of the sentence "My name is, Ada. What is the price of the Pro plan?".
SPEECH = {
    "ada.wav": ("audio/wav", "audio/x-wav"),
    "ada.ogg": ("audio/ogg", "audio/opus"),
    "ada.mp3": ("audio/mpeg", "audio/mp3"),
    "ada.m4a": ("audio/mp4", "audio/m4a", "audio/aac"),
    "ada_live.webm": ("audio/webm",),
}


def clip(name: str) -> bytes:
    return (AUDIO / name).read_bytes()


def assert_heard_ada(transcript: Transcript) -> None:
    """tiny.en hears espeak's "Ada" as Ada or Aida on some CPUs; the plan is unambiguous."""
    words = re.sub(r"[^a-z ]", " ", transcript.text.lower())
    assert re.search(r"\b(ada|aida|ayda)\b", words), transcript.text
    assert "price" in words, transcript.text
    assert "pro plan" in " ".join(words.split()) or "proplan" in words, transcript.text


@pytest.fixture(scope="module")
def transcriber() -> Iterator[Transcriber]:
    stt = Transcriber()
    stt.load()
    yield stt
    stt.close()


@pytest.mark.parametrize(
    ("name", "mime"),
    [(name, mimes[0]) for name, mimes in SPEECH.items()] + [("ada.wav", None)],
)
async def test_transcribes_every_format(
    transcriber: Transcriber, name: str, mime: str | None
) -> None:
    transcript = await transcriber.transcribe(clip(name), mime)
    assert_heard_ada(transcript)
    assert transcript.language == "en"
    assert 3.5 < transcript.duration_s < 4.5


@pytest.mark.parametrize(
    ("name", "mime"), [(name, mime) for name, mimes in SPEECH.items() for mime in mimes]
)
def test_decodes_with_every_compatible_mime(name: str, mime: str) -> None:
    audio = speech.decode(clip(name), mime.upper() + "; codecs=whatever", max_seconds=120)
    assert audio.dtype.name == "float32"
    assert 3.5 < len(audio) / speech.SAMPLE_RATE < 4.5


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("ada.ogg", "audio/wav"),
        ("ada.wav", "audio/mpeg"),
        ("ada.m4a", "audio/webm"),
        ("ada_live.webm", "audio/ogg"),
        ("ada.mp3", "audio/mp4"),
        ("ada.wav", "audio/flac"),  # not one of seed 004's mimes
        ("ada.wav", "text/plain"),
    ],
)
async def test_declared_mime_must_match_the_container(name: str, mime: str) -> None:
    stt = Transcriber()
    with pytest.raises(InvalidVoiceMime):
        await stt.transcribe(clip(name), mime)
    assert not stt.loaded
    stt.close()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not audio at all " * 40,
        random.Random(4).randbytes(8000),
        b"\x00" * 4096,
        b"RIFF\x24\x08\x00\x00WAVEfmt ",  # a WAV header cut short
        clip("ada.wav")[:44],  # header, no samples
        b"\x89PNG\r\n\x1a\n" + bytes(200),
    ],
    ids=["empty", "text", "random", "zeros", "cut-header", "no-samples", "png"],
)
@pytest.mark.parametrize("mime", [None, "audio/wav"])
async def test_undecodable_bytes_are_an_invalid_format(data: bytes, mime: str | None) -> None:
    stt = Transcriber()
    with pytest.raises(InvalidVoiceFormat):
        await stt.transcribe(data, mime)
    assert not stt.loaded
    stt.close()


async def test_silence_is_a_failed_transcription(transcriber: Transcriber) -> None:
    with pytest.raises(VoiceTranscriptionFailed):
        await transcriber.transcribe(clip("silence.wav"), "audio/wav")


@pytest.mark.parametrize("name", sorted(SPEECH))
async def test_too_long_is_refused_before_loading_the_model(name: str) -> None:
    stt = Transcriber(max_seconds=1)
    with pytest.raises(InvalidVoiceFormat, match="at most 1 seconds"):
        await stt.transcribe(clip(name), None)
    assert not stt.loaded
    stt.close()


def test_too_long_without_metadata_stops_decoding_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = clip("ada_live.webm")
    with av.open(AUDIO / "ada_live.webm") as container:
        # A live WebM (as MediaRecorder streams it) states no duration: decoding must count.
        assert container.duration is None
        assert container.streams.audio[0].duration is None
        total = sum(1 for _ in container.decode(audio=0))

    decoded = 0
    frames = speech._frames

    def counting(*args: object) -> Iterator[av.AudioFrame]:
        nonlocal decoded
        for frame in frames(*args):
            decoded += 1
            yield frame

    monkeypatch.setattr(speech, "_frames", counting)
    with pytest.raises(InvalidVoiceFormat, match="at most 1 seconds"):
        speech.decode(data, "audio/webm", max_seconds=1)
    # 20 ms Opus frames: the limit falls after ~50 of ~200.
    assert 0 < decoded < total / 2


async def test_concurrent_transcriptions_leave_the_loop_free(transcriber: Transcriber) -> None:
    ticks = 0
    ticks_at_done: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def one(name: str, mime: str) -> Transcript:
        transcript = await transcriber.transcribe(clip(name), mime)
        ticks_at_done.append(ticks)
        return transcript

    tick_task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(
            one("ada.ogg", "audio/ogg"), one("ada.mp3", "audio/mpeg"), one("ada.m4a", "audio/mp4")
        )
    finally:
        tick_task.cancel()
    for transcript in results:
        assert_heard_ada(transcript)
    # The loop kept ticking while each clip was decoded and transcribed in the pool.
    assert ticks_at_done[0] >= 5
    assert ticks_at_done[-1] > ticks_at_done[0]


def test_a_model_folder_without_its_files_is_refused_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.bin"):
        Transcriber(tmp_path).load()
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Transcriber(tmp_path).load()
