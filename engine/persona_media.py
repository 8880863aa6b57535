"""A persona's media: voice samples, videos and images (seed 002's voice profiles and
videos; seed 003's portrait). Bytes live in Redis beside the record, so every node serves
them; sizes are capped per kind (see ``LIMITS``).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from engine import keyspace
from engine.errors import FileTooLarge, InvalidSignature, NotFound, UnsupportedType
from engine.ids import new_id
from engine.media import (
    IMAGE_MIMES,
    MAX_IMAGE_BYTES,
    MAX_VIDEO_BYTES,
    MAX_VOICE_BYTES,
    VIDEO_MIMES,
    VOICE_MIMES,
    base_mime,
    bytes_match,
)
from engine.state import redis_boundary

Kind = Literal["voice", "video", "image"]
# The conversation API's image and voice limits (seed 004), so a sample taken here is one
# that API would take too.
LIMITS: dict[Kind, int] = {
    "image": MAX_IMAGE_BYTES,
    "voice": MAX_VOICE_BYTES,
    "video": MAX_VIDEO_BYTES,
}
EXTENSIONS = {"image/jpeg": "jpg", "image/jpg": "jpg", "image/png": "png", "image/webp": "webp"}


class Media(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: Kind
    mime: str
    size_bytes: int
    file_name: str | None = None
    created_at: datetime


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


class MediaStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    @redis_boundary
    async def add(
        self, account_id: str, persona_id: str, mime: str, data: bytes, file_name: str | None
    ) -> Media:
        """Check and store one file; raises the upload errors of seed 000."""
        mime = base_mime(mime)
        kind = kind_of(mime)
        check(kind, mime, data)
        media = Media(
            id=new_id(), kind=kind, mime=mime, size_bytes=len(data), file_name=file_name,
            created_at=datetime.now(UTC),
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
