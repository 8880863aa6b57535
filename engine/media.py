"""Media rules: the accepted types, their sizes, and what a file's bytes really are.

Seed 004 (the conversation API): images are image/jpeg, image/jpg, image/png or image/webp,
about 5 MB decoded; voice is one of ten audio mimes, about 25 MB decoded. Rapport reads "MB"
as MiB. Sizes are checked on the base64 text, before decoding, so an oversized payload costs
no decoding. Persona videos (seed 002's videos) are mp4, webm or mov, up to 50 MiB.

This is the one place that reads signatures (the ``filetype`` library's matchers) and image
dimensions (Pillow, from the header: no pixel is decoded), so the conversation API, persona
media and knowledge uploads agree on what a file is.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Literal, get_args

import filetype
from filetype.types import TYPES
from filetype.types import Type as FileType
from PIL import Image, UnidentifiedImageError

from engine.errors import ValidationFailed

ImageMime = Literal["image/jpeg", "image/jpg", "image/png", "image/webp"]
VoiceMime = Literal[
    "audio/aac", "audio/m4a", "audio/mp3", "audio/mp4", "audio/mpeg",
    "audio/ogg", "audio/opus", "audio/wav", "audio/webm", "audio/x-wav",
]  # fmt: skip
VideoMime = Literal["video/mp4", "video/webm", "video/quicktime"]
IMAGE_MIMES: tuple[str, ...] = get_args(ImageMime)
VOICE_MIMES: tuple[str, ...] = get_args(VoiceMime)
VIDEO_MIMES: tuple[str, ...] = get_args(VideoMime)

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_VOICE_BYTES = 25 * 1024 * 1024
MAX_VIDEO_BYTES = 50 * 1024 * 1024


def base64_length(decoded_bytes: int) -> int:
    """Length of the padded base64 text of ``decoded_bytes`` bytes (RFC 4648 §4)."""
    return 4 * math.ceil(decoded_bytes / 3)


MAX_IMAGE_B64 = base64_length(MAX_IMAGE_BYTES)
MAX_VOICE_B64 = base64_length(MAX_VOICE_BYTES)


def base_mime(mime: str | None) -> str:
    """``Audio/WebM; codecs=opus`` -> ``audio/webm``; None or blank -> "".

    RFC 9110 §8.3.1: type and subtype are case-insensitive, and parameters follow a ';'.
    """
    return (mime or "").split(";", 1)[0].strip().lower()


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


# -- signatures -----------------------------------------------------------------------------


class _CompoundFile(FileType):
    """An OLE2 compound file (.doc, .xls, .ppt), by its signature alone (MS-CFB §2.2).

    filetype names one only when it also finds a Word, Excel or PowerPoint stream past byte
    512; a short or unusual one is still no document we can read, and is worth naming."""

    def __init__(self) -> None:
        super().__init__(mime="application/x-ole-storage", extension="cfb")

    def match(self, buf: bytes | bytearray) -> bool:
        return buf[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# filetype's own matchers first, so its precise answers (a .doc, a .xls) win.
_MATCHERS: tuple[FileType, ...] = (*TYPES, _CompoundFile())


def sniff(data: bytes) -> str | None:
    """The mime the bytes' signature says (``image/png``, ``application/pdf``...), or None."""
    found = filetype.match(data, matchers=_MATCHERS)
    return None if found is None else found.mime


Container = Literal["wav", "mp3", "ogg", "aac", "mp4", "webm"]
"""An audio/video container, as far as its first bytes tell."""

# filetype's mime -> the container. ISO base media (ISO/IEC 14496-12) is one container
# whatever its brand says (M4A, mp4, QuickTime, M4V); WebM is Matroska with the webm doctype.
_CONTAINERS: dict[str, Container] = {
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "audio/ogg": "ogg",
    "audio/aac": "aac",  # raw ADTS frames
    "audio/mp4": "mp4",
    "video/mp4": "mp4",
    "video/x-m4v": "mp4",
    "video/quicktime": "mp4",
    "video/webm": "webm",
}

VOICE_CONTAINERS: dict[Container, frozenset[str]] = {
    "wav": frozenset({"audio/wav", "audio/x-wav"}),
    "mp3": frozenset({"audio/mpeg", "audio/mp3"}),
    "ogg": frozenset({"audio/ogg", "audio/opus"}),
    # AAC in MP4 is what browsers and phones label audio/aac as often as audio/mp4.
    "mp4": frozenset({"audio/mp4", "audio/m4a", "audio/aac"}),
    # Raw ADTS is audio/aac only: audio/mp4 (RFC 4337) and m4a name the MP4 container.
    "aac": frozenset({"audio/aac"}),
    "webm": frozenset({"audio/webm"}),
}
"""Seed 004's voice_mime values, by the container that may honestly be called each."""

VIDEO_CONTAINERS: dict[Container, frozenset[str]] = {
    "mp4": frozenset({"video/mp4", "video/quicktime"}),
    "webm": frozenset({"video/webm"}),
}


def container_of(data: bytes) -> Container | None:
    """The audio/video container the bytes start like, or None."""
    return _CONTAINERS.get(sniff(data) or "")


VOICE_NAMES: dict[Container, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
}
"""The voice mime a file sent without one is stored under, by its container: of seed 004's
voice mimes, the one most players know it by."""
VIDEO_NAMES: dict[Container, str] = {"mp4": "video/mp4", "webm": "video/webm"}
"""The same for videos; a QuickTime file is ISO base media, and is stored as video/mp4."""


def mime_by_signature(data: bytes, names: dict[Container, str]) -> str | None:
    """For a file sent without a mime (seed 002's base64 voice samples and videos): the mime
    ``names`` gives the container its bytes are, or None when they are none of those."""
    container = container_of(data)
    return None if container is None else names.get(container)


_IMAGE_TYPES = {
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    # An animated PNG is a PNG: its first chunk is IHDR and every PNG reader shows frame one.
    "image/apng": "image/png",
    "image/webp": "image/webp",
}
# image/jpg is not registered, but seed 004 accepts it for image/jpeg.
_ALIASES = {"image/jpg": "image/jpeg"}
# Pillow's format names, so it tries only the format the signature named.
_PILLOW_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def image_type(data: bytes) -> str | None:
    """The accepted image type the bytes really are (image/jpeg, image/png, image/webp)."""
    return _IMAGE_TYPES.get(sniff(data) or "")


def image_size(data: bytes, mime: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(data), formats=(_PILLOW_FORMATS[mime],)) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None  # Pillow's ways of saying "no such image"; a bomb is no image we take


def check_image(data: bytes, mime: str) -> None:
    """Seed 004's image_b64: bytes of the declared image type, with readable dimensions."""
    declared = _ALIASES.get(mime, mime)
    actual = image_type(data)
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


def bytes_match(data: bytes, mime: str) -> bool:
    """Whether ``data`` is what ``mime`` (an accepted image, voice or video mime) says."""
    if mime in IMAGE_MIMES:
        return image_type(data) == _ALIASES.get(mime, mime)
    container = container_of(data)
    if container is None:
        return False
    return mime in VOICE_CONTAINERS.get(container, ()) or mime in VIDEO_CONTAINERS.get(
        container, ()
    )
