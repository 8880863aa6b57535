"""Seed 002's admin paths: voice profiles, videos and instances, onto personas and their media.

What each is in Rapport:

- ``POST /api/admin/add_voice``: a voice sample on the account's default persona (seed 002
  names no persona; the default is the one the conversation API speaks as), with the
  seed's language, tone and pitch kept on the media record and shown with it
  (``voiceProfile`` in ``GET /api/personas/{id}/media``). ``voice_id`` is the media id.
- ``POST /api/admin/video``: the same for a video, with its title, description, duration
  (seconds) and resolution (``videoDetails``). ``video_id`` is the media id.
- ``POST /api/admin/instance`` and ``POST /api/instance`` (the seed documents both, with the
  same body): a persona. Its name is unique in the account (409, as ``POST /api/personas``),
  the description is the persona's, and ``configuration`` is kept as given (any JSON object,
  at most 16 KiB, 32 levels deep) and shown on the persona. ``instance_id`` is its id.
- ``DELETE /api/instance`` (``{"instance_id"}`` in the body): the persona deleted as
  ``DELETE /api/personas/{id}`` deletes it, its activations and media with it; the default
  persona is refused (409), another account's or an unknown one is 404.

Seed 002 sends files as base64 with no mime. They are checked as every persona upload is
(:func:`engine.persona_media.decode_file`): the size on the base64 text before any decoding
(413 ``upload.file_too_large``), then the base64 (400 ``validation.failed``), then the
signature, which names the mime and must be one of the kind's types (400
``upload.invalid_signature``). Both uploads count against ``PersonaUploads``.

Responses are seed 002's ``{"status": "success", "message", "<x>_id"}``; where the seed is
silent (errors, limits) the ``/api/`` family's problem documents and limits apply.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auditing import audit
from api.operations import Operation
from api.personas import context, default_id, remove_persona
from api.problems import decode_body
from api.responses import JSON
from api.services import Services
from engine.errors import Conflict, Failure, FileTooLarge, NotFound
from engine.media import base64_length
from engine.persona_media import (
    LIMITS,
    About,
    Label,
    Language,
    Seconds,
    Title,
    VideoDetails,
    VoiceProfile,
    decode_file,
)
from engine.personas import (
    Configuration,
    Description,
    Name,
    PersonaId,
    check_configuration,
)

ROOM = 64 * 1024
"""Room in a body for the fields around its file."""
VOICE_BODY_LIMIT = base64_length(LIMITS["voice"]) + ROOM
VIDEO_BODY_LIMIT = base64_length(LIMITS["video"]) + ROOM


class VoiceData(msgspec.Struct, forbid_unknown_fields=True):
    language: Language
    tone: Label
    pitch: Label
    sample_audio: str
    """Base64 of a wav, mp3, ogg, aac, m4a or webm file, at most 25 MiB decoded."""


class AddVoice(msgspec.Struct, forbid_unknown_fields=True):
    voice_data: VoiceData


class VideoData(msgspec.Struct, forbid_unknown_fields=True):
    file: str
    """Base64 of an mp4, webm or mov file, at most 50 MiB decoded."""
    title: Title
    duration: Seconds
    """Seconds, as the caller gives it; the file is not probed for it."""
    resolution: Label
    description: About = ""


class AddVideo(msgspec.Struct, forbid_unknown_fields=True):
    video_data: VideoData


class InstanceData(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: Description
    configuration: Configuration


class NewInstance(msgspec.Struct, forbid_unknown_fields=True):
    instance_data: InstanceData


class InstanceRef(msgspec.Struct, forbid_unknown_fields=True):
    instance_id: PersonaId


Success = Literal["success"]


class VoiceAdded(msgspec.Struct, kw_only=True):
    status: Success = "success"
    message: str = "Voice profile added successfully"
    voice_id: str


class VideoAdded(msgspec.Struct, kw_only=True):
    status: Success = "success"
    message: str = "Video added successfully"
    video_id: str


class InstanceCreated(msgspec.Struct, kw_only=True):
    status: Success = "success"
    message: str = "Instance created successfully"
    instance_id: str


class InstanceDeleted(msgspec.Struct, kw_only=True):
    status: Success = "success"
    message: str = "Instance deleted successfully"


async def default_persona(services: Services, account_id: str) -> str:
    chosen = await default_id(services, account_id)
    if chosen is None:
        raise NotFound("The account has no default persona.")
    return (await services.personas.get(account_id, chosen)).id


async def add_voice(request: Request) -> Response:
    services, account_id = context(request)
    given: VoiceData = decode_body(await request.body(), AddVoice).voice_data
    mime, data = decode_file("voice", "voice_data.sample_audio", given.sample_audio)
    profile = VoiceProfile(given.language, given.tone, given.pitch)
    persona_id = await default_persona(services, account_id)
    media = await services.media.add(account_id, persona_id, mime, data, None, about=profile)
    await audit(request, "persona.media_added", persona_id, {"media_id": media.id})
    return JSON(VoiceAdded(voice_id=media.id))


async def add_video(request: Request) -> Response:
    services, account_id = context(request)
    given: VideoData = decode_body(await request.body(), AddVideo).video_data
    mime, data = decode_file("video", "video_data.file", given.file)
    details = VideoDetails(
        title=given.title,
        description=given.description,
        duration_seconds=given.duration,
        resolution=given.resolution,
    )
    persona_id = await default_persona(services, account_id)
    media = await services.media.add(account_id, persona_id, mime, data, None, about=details)
    await audit(request, "persona.media_added", persona_id, {"media_id": media.id})
    return JSON(VideoAdded(video_id=media.id))


async def create_instance(request: Request) -> Response:
    services, account_id = context(request)
    given: InstanceData = decode_body(await request.body(), NewInstance).instance_data
    check_configuration(given.configuration, "instance_data.configuration")
    try:
        persona = await services.personas.create(
            account_id,
            name=given.name,
            description=given.description,
            configuration=given.configuration,
        )
    except Conflict:
        raise Conflict("Persona with name already exists") from None
    await audit(request, "persona.created", persona.id, {"name": persona.name})
    return JSON(InstanceCreated(instance_id=persona.id))


async def create_admin_instance(request: Request) -> Response:
    """``POST /api/admin/instance``: :func:`create_instance` under the seed's other path (a
    function of its own only so that the two operations have ids of their own)."""
    return await create_instance(request)


async def delete_instance(request: Request) -> Response:
    services, account_id = context(request)
    given: InstanceRef = decode_body(await request.body(), InstanceRef)
    await remove_persona(services, account_id, given.instance_id)
    await audit(request, "persona.deleted", given.instance_id)
    return JSON(InstanceDeleted())


UPLOAD_FAILURES = (Failure.VALIDATION_FAILED, Failure.INVALID_SIGNATURE, Failure.FILE_TOO_LARGE)
CREATE_FAILURES = (Failure.VALIDATION_FAILED, Failure.CONFLICT)
OPERATIONS = [
    Operation("POST", "/api/admin/add_voice", add_voice,
              "Add a voice sample (base64 wav, mp3, ogg, aac, m4a or webm, <= 25 MiB) with its "
              "language, tone and pitch to the account's default persona (seed 002).",
              "digital clone", VoiceAdded, request=AddVoice, failures=UPLOAD_FAILURES,
              body_limit=VOICE_BODY_LIMIT, too_large=FileTooLarge),
    Operation("POST", "/api/admin/video", add_video,
              "Add a video (base64 mp4, webm or mov, <= 50 MiB) with its title, description, "
              "duration and resolution to the account's default persona (seed 002).",
              "digital clone", VideoAdded, request=AddVideo, failures=UPLOAD_FAILURES,
              body_limit=VIDEO_BODY_LIMIT, too_large=FileTooLarge),
    Operation("POST", "/api/admin/instance", create_admin_instance,
              "Create a persona with a configuration object (seed 002); a taken name is 409.",
              "digital clone", InstanceCreated, request=NewInstance, failures=CREATE_FAILURES),
    Operation("POST", "/api/instance", create_instance,
              "The same as POST /api/admin/instance (seed 002 documents both).",
              "digital clone", InstanceCreated, request=NewInstance, failures=CREATE_FAILURES),
    Operation("DELETE", "/api/instance", delete_instance,
              'Delete a persona as DELETE /api/personas/{id} does: {"instance_id": ...}; the '
              "default persona is 409.", "digital clone", InstanceDeleted,
              request=InstanceRef,
              failures=(Failure.VALIDATION_FAILED, Failure.CONFLICT)),
]  # fmt: skip
