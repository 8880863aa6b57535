"""Image and voice payloads of the conversation API: base64, sizes, types (seed 004).

Seed 004: images are image/jpeg, image/jpg, image/png or image/webp, about 5 MB decoded;
voice is one of ten audio mimes, about 25 MB decoded. Rapport reads "MB" as MiB. Sizes are
checked on the base64 text, before decoding, so an oversized payload costs no decoding.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Literal, get_args

from engine.errors import ValidationFailed

ImageMime = Literal["image/jpeg", "image/jpg", "image/png", "image/webp"]
VoiceMime = Literal[
    "audio/aac", "audio/m4a", "audio/mp3", "audio/mp4", "audio/mpeg",
    "audio/ogg", "audio/opus", "audio/wav", "audio/webm", "audio/x-wav",
]  # fmt: skip
IMAGE_MIMES: tuple[str, ...] = get_args(ImageMime)
VOICE_MIMES: tuple[str, ...] = get_args(VoiceMime)

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_VOICE_BYTES = 25 * 1024 * 1024


def base64_length(decoded_bytes: int) -> int:
    """Length of the padded base64 text of ``decoded_bytes`` bytes (RFC 4648 §4)."""
    return 4 * math.ceil(decoded_bytes / 3)


MAX_IMAGE_B64 = base64_length(MAX_IMAGE_BYTES)
MAX_VOICE_B64 = base64_length(MAX_VOICE_BYTES)


def decode_base64(field: str, text: str) -> bytes:
    if text.startswith("data:"):
        raise ValidationFailed(
            f"{field} must be plain base64, without the data: prefix.",
            errors={field: ["starts with a data: URL prefix"]},
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(
            f"{field} is not valid base64.", errors={field: ["broken base64"]}
        ) from None
    if not data:
        raise ValidationFailed(f"{field} is empty.", errors={field: ["decodes to no bytes"]})
    return data


def sniff_image(data: bytes) -> str | None:
    """The image type the bytes really are, from their signature, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when it cannot be read."""
    if kind == "image/png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if kind == "image/jpeg":
        return _jpeg_size(data)
    if kind == "image/webp" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":  # canvas size, 24 bits each, minus one
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(
                data[27:30], "little"
            ) + 1
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
            width = int.from_bytes(data[26:28], "little") & 0x3FFF
            return width, int.from_bytes(data[28:30], "little") & 0x3FFF
        if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


# JPEG start-of-frame markers (ITU T.81 table B.1): C0-CF except DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _SOF:
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            return int.from_bytes(data[position + 7 : position + 9], "big"), height
        if length < 2:
            return None
        position += 2 + length
    return None


def check_image(data: bytes, mime: str) -> None:
    declared = "image/jpeg" if mime == "image/jpg" else mime
    actual = sniff_image(data)
    if actual != declared:
        found = actual or "no supported image type"
        raise ValidationFailed(
            f"image_b64 is {found}, not {mime}.",
            errors={"image_b64": [f"bytes are {found}, declared {mime}"]},
        )
    size = image_size(data, declared)
    if size is None or 0 in size:
        raise ValidationFailed(
            "image_b64: the image's dimensions cannot be read; the file may be damaged.",
            errors={"image_b64": ["dimensions unreadable"]},
        )


# Which declared audio mimes a file's first bytes are compatible with. Containers: RIFF/WAVE
# (wav), ID3 or an MPEG frame sync (mp3), Ogg (ogg, opus), an ADTS frame (aac), ISO base
# media "ftyp" (m4a, mp4), EBML (webm).
_AUDIO_FAMILIES: dict[str, tuple[str, ...]] = {
    "wav": ("audio/wav", "audio/x-wav"),
    "mp3": ("audio/mp3", "audio/mpeg"),
    "ogg": ("audio/ogg", "audio/opus"),
    "aac": ("audio/aac",),
    "mp4": ("audio/m4a", "audio/mp4", "audio/aac"),
    "webm": ("audio/webm",),
}
VIDEO_MIMES: tuple[str, ...] = ("video/mp4", "video/webm", "video/quicktime")


def container_of(data: bytes) -> str | None:
    """The audio/video container the bytes start like, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"ID3"):
        return "mp3"
    if data.startswith(b"OggS"):
        return "ogg"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: sync word, layer 00
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "mp3"  # MPEG audio frame sync
    return None


def audio_matches(data: bytes, mime: str) -> bool:
    container = container_of(data)
    return container is not None and mime in _AUDIO_FAMILIES.get(container, ())


def video_matches(data: bytes, mime: str) -> bool:
    container = container_of(data)
    if mime in ("video/mp4", "video/quicktime"):
        return container == "mp4" or data[4:8] in (b"moov", b"mdat", b"wide")
    return mime == "video/webm" and container == "webm"
