"""engine.media: the one place for media types, sizes, signatures and image dimensions."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from engine import media, speech
from engine.errors import ValidationFailed
from engine.speech import InvalidVoiceMime


def adts_tone(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    """Raw AAC: ADTS frames with no container around them."""
    out = io.BytesIO()
    with av.open(out, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[start : start + 1024].reshape(1, -1), format="flt", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def picture(image_format: str, size: tuple[int, int] = (8, 6), **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=image_format, **options)
    return out.getvalue()


def ebml(doctype: bytes) -> bytes:
    """An EBML header naming ``doctype``, as Matroska and WebM files start."""
    element = b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(element)]) + element + bytes(32)


def ftyp(brand: bytes) -> bytes:
    return b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"isom" + bytes(32)


@pytest.mark.parametrize(
    ("declared", "base"),
    [("Audio/WebM; codecs=opus", "audio/webm"), (" image/PNG ", "image/png"), (None, ""),
     ("", "")],
)  # fmt: skip
def test_mimes_are_normalised_in_one_way(declared: str | None, base: str) -> None:
    assert media.base_mime(declared) == base


def test_raw_aac_is_audio_aac_only_and_aac_in_mp4_may_be_called_any_mp4_name() -> None:
    raw = adts_tone()
    assert media.container_of(raw) == "aac"
    assert media.bytes_match(raw, "audio/aac")
    assert not media.bytes_match(raw, "audio/mp4")
    assert not media.bytes_match(raw, "audio/m4a")
    assert len(speech.decode(raw, "audio/aac", max_seconds=10)) > 0
    with pytest.raises(InvalidVoiceMime):
        speech.decode(raw, "audio/mp4", max_seconds=10)
    assert media.VOICE_CONTAINERS["mp4"] == {"audio/mp4", "audio/m4a", "audio/aac"}


@pytest.mark.parametrize(
    ("data", "mime", "matches"),
    [
        (ftyp(b"qt  "), "video/quicktime", True),
        (ftyp(b"qt  "), "video/mp4", True),  # both are ISO base media
        (ftyp(b"isom"), "video/mp4", True),
        (ftyp(b"M4A "), "audio/m4a", True),
        (ebml(b"webm"), "video/webm", True),
        (ebml(b"webm"), "audio/webm", True),
        (ebml(b"matroska"), "video/webm", False),
        (b"OggS\x00\x02" + bytes(64), "audio/opus", True),
        (b"OggS\x00\x02" + bytes(64), "video/webm", False),
        (b"ID3\x04" + bytes(64), "audio/mp3", True),
        (b"hello, this is text", "audio/wav", False),
        (b"", "audio/wav", False),
    ],
    ids=["mov", "mov-as-mp4", "mp4", "m4a", "webm-video", "webm-audio", "matroska", "ogg",
         "ogg-as-webm", "mp3", "text", "empty"],
)  # fmt: skip
def test_declared_mimes_are_checked_against_the_signature(
    data: bytes, mime: str, matches: bool
) -> None:
    assert media.bytes_match(data, mime) is matches


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (picture("PNG"), "image/png"),
        (picture("JPEG"), "image/jpg"),
        (picture("JPEG"), "image/jpeg"),
        (picture("WEBP"), "image/webp"),
        (picture("WEBP", lossless=True), "image/webp"),
        # An animated PNG is a PNG.
        (picture("PNG", save_all=True, append_images=[Image.new("RGB", (8, 6))]), "image/png"),
    ],
    ids=["png", "jpg", "jpeg", "webp-lossy", "webp-lossless", "apng"],
)
def test_images_of_their_declared_type_with_readable_sizes_pass(data: bytes, mime: str) -> None:
    media.check_image(data, mime)
    assert media.bytes_match(data, mime)
    assert media.image_size(data, media.image_type(data) or "") == (8, 6)


@pytest.mark.parametrize(
    ("data", "mime", "says"),
    [
        (picture("PNG"), "image/webp", "bytes are image/png, declared image/webp"),
        (picture("GIF"), "image/png", "bytes are no supported image type, declared image/png"),
        (picture("PNG")[:20], "image/png", "dimensions unreadable"),
        (picture("JPEG")[:30], "image/jpeg", "dimensions unreadable"),
        (picture("WEBP")[:16], "image/webp", "dimensions unreadable"),
    ],
    ids=["png-called-webp", "gif", "png-cut", "jpeg-cut", "webp-cut"],
)
def test_images_that_are_not_what_they_say_are_refused(data: bytes, mime: str, says: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        media.check_image(data, mime)
    assert caught.value.errors == {"image_b64": [says]}


def test_a_short_legacy_office_file_is_still_named() -> None:
    assert media.sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64)) == (
        "application/x-ole-storage"
    )
    assert media.sniff(b"%PDF-1.7\n") == "application/pdf"
    assert media.sniff(b"plain words") is None
