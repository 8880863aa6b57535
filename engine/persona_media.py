"""A persona's media: voice samples, videos and images (seed 002's voice profiles and
videos; seed 003's portrait). Bytes live in Redis beside the record, so every node serves
them; sizes are capped per kind (see ``LIMITS``).

Seed 002 describes what a file is of: a voice sample's language, tone and pitch
(:class:`VoiceProfile`), a video's title, description, duration and resolution
(:class:`VideoDetails`). They are kept on the media record. Seed 002 sends files as base64
without a mime: :func:`decode_file` checks the size on the text, decodes, and takes the mime
from the bytes' signature.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from engine import keyspace
from engine.errors import FileTooLarge, InvalidSignature, NotFound, UnsupportedType
from engine.ids import new_id
from engine.media import (
    IMAGE_MIMES,
    MAX_IMAGE_BYTES,
    MAX_VIDEO_BYTES,
    MAX_VOICE_BYTES,
    VIDEO_MIMES,
    VIDEO_NAMES,
    VOICE_MIMES,
    VOICE_NAMES,
    base64_length,
    base_mime,
    bytes_match,
    decode_base64,
    image_type,
    mime_by_signature,
)
from engine.state import Client, redis_boundary

Kind = Literal["voice", "video", "image"]
# The conversation API's image and voice limits (seed 004), so a sample taken here is one
# that API would take too.
LIMITS: dict[Kind, int] = {
    "image": MAX_IMAGE_BYTES,
    "voice": MAX_VOICE_BYTES,
    "video": MAX_VIDEO_BYTES,
}
EXTENSIONS = {"image/jpeg": "jpg", "image/jpg": "jpg", "image/png": "png", "image/webp": "webp"}


Language = Annotated[
    str, msgspec.Meta(min_length=2, max_length=35, pattern=r"\A[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*\Z")
]
"""Seed 002's "language code": a BCP 47 tag (``en``, ``pt-BR``); 35 is RFC 5646's length
every tag fits in (§4.4.1)."""
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
"""A short word or two: a voice's tone or pitch, a video's resolution."""
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
About = Annotated[str, msgspec.Meta(max_length=2000)]
"""As long as a persona's description may be."""
Seconds = Annotated[int, msgspec.Meta(ge=0)]


class VoiceProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Seed 002's voice profile: what a voice sample is of."""

    language: Language
    tone: Label
    pitch: Label


class VideoDetails(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Seed 002's video fields, as the caller gives them (the file is not probed for them)."""

    title: Title
    description: About = ""
    duration_seconds: Seconds
    resolution: Label


class Media(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: Kind
    mime: str
    size_bytes: int
    file_name: str | None = None
    created_at: datetime
    voice_profile: VoiceProfile | None = None
    """Only on a voice sample, and only when one was given (seed 002)."""
    video_details: VideoDetails | None = None
    """Only on a video, and only when they were given (seed 002)."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Media).decode


def kind_of(mime: str) -> Kind:
    """The kind a (normalised) mime declares; raises UnsupportedType for any other."""
    if mime in IMAGE_MIMES:
        return "image"
    if mime in VOICE_MIMES:
        return "voice"
    if mime in VIDEO_MIMES:
        return "video"
    raise UnsupportedType(
        f"Media of type {mime or 'unknown'} is not accepted: send an image (jpeg, png, webp), "
        "a voice sample (the conversation API's audio types) or a video (mp4, webm, mov)."
    )


def check(kind: Kind, mime: str, data: bytes) -> None:
    if len(data) > LIMITS[kind]:
        raise FileTooLarge(f"A {kind} may be at most {LIMITS[kind]} bytes.")
    if not bytes_match(data, mime):
        raise InvalidSignature(f"The file's bytes are not {mime}.")


_ACCEPTED: dict[Kind, str] = {
    "image": "jpeg, png or webp",
    "voice": "wav, mp3, ogg, aac, m4a or webm",
    "video": "mp4, webm or mov",
}


def _signed_mime(kind: Kind, data: bytes) -> str | None:
    if kind == "image":
        return image_type(data)
    return mime_by_signature(data, VOICE_NAMES if kind == "voice" else VIDEO_NAMES)


def decode_file(kind: Kind, field: str, text: str) -> tuple[str, bytes]:
    """A base64 file of ``kind`` sent without a mime (seed 002): its mime and bytes.

    The size is checked on the text before anything is decoded, as the conversation API
    does; then the base64 (400 ``validation.failed`` naming ``field`` when broken) and the
    signature, which must be one of the kind's types (400 ``upload.invalid_signature``)."""
    if len(text) > base64_length(LIMITS[kind]):
        raise FileTooLarge(
            f"{field}: a {kind} may be at most {LIMITS[kind]} bytes.",
            errors={field: [f"over {LIMITS[kind]} bytes"]},
        )
    data = decode_base64(field, text)
    mime = _signed_mime(kind, data)
    if mime is None:
        raise InvalidSignature(
            f"{field} is not a {kind} file: send {_ACCEPTED[kind]}.",
            errors={field: [f"bytes are not {_ACCEPTED[kind]}"]},
        )
    return mime, data


class MediaStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis

    @redis_boundary
    async def add(
        self,
        account_id: str,
        persona_id: str,
        mime: str,
        data: bytes,
        file_name: str | None,
        *,
        about: VoiceProfile | VideoDetails | None = None,
    ) -> Media:
        """Check and store one file, with what it is of when given (a voice sample's
        profile, a video's details); raises the upload errors of seed 000."""
        mime = base_mime(mime)
        kind = kind_of(mime)
        check(kind, mime, data)
        if about is not None and kind != ("voice" if isinstance(about, VoiceProfile) else "video"):
            raise InvalidSignature(f"The file is a {kind}, not what its description is of.")
        media = Media(
            id=new_id(), kind=kind, mime=mime, size_bytes=len(data), file_name=file_name,
            created_at=datetime.now(UTC),
            voice_profile=about if isinstance(about, VoiceProfile) else None,
            video_details=about if isinstance(about, VideoDetails) else None,
        )  # fmt: skip
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(keys.persona_media_content(persona_id, media.id), base64.b64encode(data))
        pipe.hset(keys.persona_media(persona_id), media.id, _encode(media))
        await pipe.execute()
        return media

    @redis_boundary
    async def list(self, account_id: str, persona_id: str) -> list[Media]:
        raw = await self._redis.hvals(keyspace.AccountKeys(account_id).persona_media(persona_id))
        return _oldest_first(raw)

    @redis_boundary
    async def list_many(self, account_id: str, persona_ids: list[str]) -> dict[str, list[Media]]:
        """The media of several personas (a page of a listing) in one round trip."""
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        for persona_id in persona_ids:
            pipe.hvals(keys.persona_media(persona_id))
        raws = await pipe.execute() if persona_ids else []
        return {p: _oldest_first(raw) for p, raw in zip(persona_ids, raws, strict=True)}

    @redis_boundary
    async def content(self, account_id: str, persona_id: str, media_id: str) -> tuple[Media, bytes]:
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(keys.persona_media(persona_id), media_id)
        pipe.get(keys.persona_media_content(persona_id, media_id))
        record, data = await pipe.execute()
        if record is None or data is None:
            raise NotFound(f"No media {media_id!r} on this persona.")
        return _decode(record), base64.b64decode(data)

    @redis_boundary
    async def delete(self, account_id: str, persona_id: str, media_id: str) -> bool:
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(keys.persona_media(persona_id), media_id)
        pipe.delete(keys.persona_media_content(persona_id, media_id))
        removed, _ = await pipe.execute()
        return bool(removed)

    @redis_boundary
    async def delete_all(self, account_id: str, persona_id: str) -> None:
        keys = keyspace.AccountKeys(account_id)
        ids = await self._redis.hkeys(keys.persona_media(persona_id))
        await self._redis.delete(
            keys.persona_media(persona_id),
            *(keys.persona_media_content(persona_id, i) for i in ids),
        )


def _oldest_first(raw: list[bytes]) -> list[Media]:
    return sorted((_decode(r) for r in raw), key=lambda m: m.created_at)
