"""``/api/personas``: persona CRUD (seed 003), knowledge activation (seed 000), the default.

Persona bodies use seed 003's field names (``systemPrompt``, ``imageUrl``, ``createdAt``),
plus seed 004's traits, seed 000's ``publishSettings`` and seed 002's ``configuration``;
input may also be written in snake_case (``system_prompt``, ``publish_settings``). As in
seed 003, PUT changes only the fields it is given, and so does PATCH. A name is unique
within an account (409 ``resource.conflict``); another account's persona is 404 everywhere.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auditing import audit
from api.forms import read_upload
from api.knowledge import ExternalId, external_id_of
from api.operations import Operation
from api.problems import invalid_input, nested_too_deeply
from api.queries import Paging, parse_query
from api.responses import JSON
from api.services import Services
from engine.apikeys import Principal
from engine.audit import given_fields
from engine.errors import (
    Conflict,
    Failure,
    FileTooLarge,
    NotFound,
    PreconditionFailed,
    ValidationFailed,
)
from engine.ids import OwnId, own_id
from engine.persona_media import EXTENSIONS, LIMITS, Kind, Media, VideoDetails, VoiceProfile
from engine.personas import (
    Age,
    Archetype,
    Archetypes,
    Availability,
    Configuration,
    Description,
    Gender,
    Headers,
    ImageRef,
    Mode,
    Modes,
    Name,
    Persona,
    Role,
    SessionLimit,
    Sociality,
    Temperament,
    TemperamentWeights,
    Window,
    Zodiac,
    delete_persona_everywhere,
)

MAX_ACTIVATION = 1000
MEDIA_BODY_LIMIT = max(LIMITS.values())


class PublishSettingsIn(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; ``null`` clears a limit or the opening hours."""

    session_interaction_limit: SessionLimit | msgspec.UnsetType | None = msgspec.UNSET
    session_duration_limit_seconds: SessionLimit | msgspec.UnsetType | None = msgspec.UNSET
    availability: Availability | msgspec.UnsetType | None = msgspec.UNSET
    allowed_modes: Modes | msgspec.UnsetType = msgspec.UNSET


class PersonaIn(msgspec.Struct, forbid_unknown_fields=True):
    """Every field optional: POST needs ``name``; PUT and PATCH change what they are given."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    system_prompt: Role | msgspec.UnsetType = msgspec.UNSET
    headers: Headers | msgspec.UnsetType = msgspec.UNSET
    image_url: ImageRef | msgspec.UnsetType | None = msgspec.UNSET
    age: Age | msgspec.UnsetType | None = msgspec.UNSET
    gender: Gender | msgspec.UnsetType | None = msgspec.UNSET
    zodiac: Zodiac | msgspec.UnsetType | None = msgspec.UNSET
    temperament: TemperamentWeights | msgspec.UnsetType = msgspec.UNSET
    sociality: Sociality | msgspec.UnsetType = msgspec.UNSET
    archetypes: Archetypes | msgspec.UnsetType = msgspec.UNSET
    publish_settings: PublishSettingsIn | msgspec.UnsetType = msgspec.UNSET
    configuration: Configuration | msgspec.UnsetType = msgspec.UNSET
    """Replaced whole; at most 16 KiB of JSON, 32 levels deep."""

    def changes(self) -> dict[str, Any]:
        """The given fields, under the engine's names (role, image)."""
        given = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not msgspec.UNSET}
        if "system_prompt" in given:
            given["role"] = given.pop("system_prompt")
        if "image_url" in given:
            given["image"] = given.pop("image_url")
        return msgspec.to_builtins(given)  # UNSET fields of publish_settings drop out here


class AvailabilityView(msgspec.Struct, rename="camel"):
    time_zone: str
    windows: list[Window]


class PublishSettingsView(msgspec.Struct, rename="camel"):
    session_interaction_limit: int | None
    session_duration_limit_seconds: int | None
    availability: AvailabilityView | None
    allowed_modes: list[Mode]


class PersonaView(msgspec.Struct, rename="camel"):
    id: str
    name: str
    description: str
    system_prompt: str
    headers: dict[str, str]
    image_url: str | None
    age: int | None
    gender: Gender | None
    zodiac: Zodiac | None
    temperament: Temperament
    sociality: Sociality
    archetypes: list[Archetype]
    publish_settings: PublishSettingsView
    configuration: Configuration
    is_default: bool
    media: list[MediaView]
    created_at: datetime
    updated_at: datetime


class MediaView(msgspec.Struct, rename="camel"):
    id: str
    kind: Kind
    mime: str
    size_bytes: int
    file_name: str | None
    url: str
    """Where to fetch the bytes (GET, with the API key)."""
    created_at: datetime
    voice_profile: VoiceProfile | None
    """A voice sample's language, tone and pitch, when given (seed 002)."""
    video_details: VideoDetailsView | None
    """A video's title, description, duration and resolution, when given (seed 002)."""


class VideoDetailsView(msgspec.Struct, rename="camel"):
    title: str
    description: str
    duration_seconds: int
    resolution: str


class PersonaPage(msgspec.Struct):
    items: list[PersonaView]
    total_count: int


class Activation(msgspec.Struct, forbid_unknown_fields=True):
    external_ids: Annotated[list[ExternalId], msgspec.Meta(max_length=MAX_ACTIVATION)]


class Added(msgspec.Struct):
    added: int
    skipped: int


class DefaultChoice(msgspec.Struct, forbid_unknown_fields=True):
    persona_id: OwnId


_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
# Header names and configuration keys are the caller's own: their spelling is kept as sent.
_KEEP_KEYS_UNDER = frozenset({"headers", "configuration"})


def snake_keys(value: Any) -> Any:
    """``systemPrompt`` → ``system_prompt``, recursively, except inside ``headers`` and
    ``configuration``."""
    if isinstance(value, dict):
        return {
            (snake := _SNAKE.sub("_", key).lower()): (
                item if snake in _KEEP_KEYS_UNDER else snake_keys(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [snake_keys(item) for item in value]
    return value


def decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.convert(snake_keys(msgspec.json.decode(body)), kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_input(exc) from None
    except RecursionError:
        raise nested_too_deeply() from None


def video_details_view(details: VideoDetails | None) -> VideoDetailsView | None:
    if details is None:
        return None
    return VideoDetailsView(
        details.title, details.description, details.duration_seconds, details.resolution
    )


def media_view(persona_id: str, media: Media) -> MediaView:
    return MediaView(
        id=media.id,
        kind=media.kind,
        mime=media.mime,
        size_bytes=media.size_bytes,
        file_name=media.file_name,
        url=f"/api/personas/{persona_id}/media/{media.id}",
        created_at=media.created_at,
        voice_profile=media.voice_profile,
        video_details=video_details_view(media.video_details),
    )


def view(persona: Persona, default_id: str | None, media: list[Media]) -> PersonaView:
    publish = persona.publish_settings
    return PersonaView(
        id=persona.id,
        name=persona.name,
        description=persona.description,
        system_prompt=persona.role,
        headers=persona.headers,
        image_url=persona.image,
        age=persona.age,
        gender=persona.gender,
        zodiac=persona.zodiac,
        temperament=persona.temperament,
        sociality=persona.sociality,
        archetypes=persona.archetypes,
        publish_settings=PublishSettingsView(
            session_interaction_limit=publish.session_interaction_limit,
            session_duration_limit_seconds=publish.session_duration_limit_seconds,
            availability=None
            if publish.availability is None
            else AvailabilityView(publish.availability.time_zone, publish.availability.windows),
            allowed_modes=publish.allowed_modes,
        ),
        configuration=persona.configuration,
        is_default=persona.id == default_id,
        media=[media_view(persona.id, m) for m in media],
        created_at=persona.created_at,
        updated_at=persona.updated_at,
    )


def context(request: Request) -> tuple[Services, str]:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    return services, principal.account_id


async def default_id(services: Services, account_id: str) -> str | None:
    return (await services.accounts.get(account_id)).default_persona_id


async def list_personas(request: Request) -> Response:
    services, account_id = context(request)
    paging = parse_query(request.query_params, Paging)
    personas, total = await services.personas.page(account_id, paging.limit, paging.offset)
    chosen = await default_id(services, account_id)
    media = await services.media.list_many(account_id, [p.id for p in personas])
    items = [view(p, chosen, media[p.id]) for p in personas]
    return JSON(PersonaPage(items=items, total_count=total))


async def full_view(services: Services, account_id: str, persona: Persona) -> PersonaView:
    chosen = await default_id(services, account_id)
    return view(persona, chosen, await services.media.list(account_id, persona.id))


async def create_persona(request: Request) -> Response:
    services, account_id = context(request)
    given = decode(await request.body(), PersonaIn)
    if given.name is msgspec.UNSET:
        raise ValidationFailed("Name is required", errors={"name": ["required"]})
    try:
        persona = await services.personas.create(account_id, **given.changes())
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"persona: {exc}") from None
    except Conflict:
        raise Conflict("Persona with name already exists") from None
    await audit(request, "persona.created", persona.id, {"name": persona.name})
    return JSON(await full_view(services, account_id, persona), status_code=201)


def persona_id_of(request: Request) -> str:
    """The path's persona id; one that cannot be an id is 404 like an unknown one."""
    return own_id(request.path_params["persona_id"], "persona")


async def get_persona(request: Request) -> Response:
    services, account_id = context(request)
    persona = await services.personas.get(account_id, persona_id_of(request))
    return JSON(await full_view(services, account_id, persona))


async def update_persona(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = persona_id_of(request)
    await services.personas.get(account_id, persona_id)  # 404 before reading the body
    given = decode(await request.body(), PersonaIn)
    try:
        persona = await services.personas.merge(account_id, persona_id, given.changes())
    except Conflict:
        raise Conflict("Persona with name already exists") from None
    await audit(request, "persona.updated", persona.id, {"fields": given_fields(given)})
    return JSON(await full_view(services, account_id, persona))


async def delete_persona(request: Request) -> Response:
    services, account_id = context(request)
    await remove_persona(services, account_id, persona_id_of(request))
    await audit(request, "persona.deleted", persona_id_of(request))
    return Response(status_code=204)


async def remove_persona(services: Services, account_id: str, persona_id: str) -> None:
    """A persona gone, with its activations and media (the default one is refused)."""
    await delete_persona_everywhere(
        services.accounts,
        services.personas,
        services.media,
        services.activations.forget_persona,
        account_id,
        persona_id,
    )


async def get_default(request: Request) -> Response:
    services, account_id = context(request)
    chosen = await default_id(services, account_id)
    if chosen is None:
        raise NotFound("The account has no default persona.")
    return JSON(
        await full_view(services, account_id, await services.personas.get(account_id, chosen))
    )


async def set_default(request: Request) -> Response:
    services, account_id = context(request)
    choice = decode(await request.body(), DefaultChoice)
    persona = await services.personas.get(account_id, choice.persona_id)
    await services.accounts.set_default_persona(account_id, persona.id)
    await audit(request, "persona.default_changed", persona.id)
    return JSON(await full_view(services, account_id, persona))


async def _persona_id(services: Services, account_id: str, request: Request) -> str:
    return (await services.personas.get(account_id, persona_id_of(request))).id


async def get_knowledge(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    return JSON(Activation(await services.activations.active(account_id, persona_id)))


async def replace_knowledge(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    wanted = decode(await request.body(), Activation)
    await services.activations.replace(account_id, persona_id, wanted.external_ids)
    await audit(
        request, "persona.knowledge_changed", persona_id, {"replaced": len(wanted.external_ids)}
    )
    return JSON(Activation(await services.activations.active(account_id, persona_id)))


async def add_knowledge(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    wanted = decode(await request.body(), Activation)
    added, skipped = await services.activations.add(account_id, persona_id, wanted.external_ids)
    await audit(request, "persona.knowledge_changed", persona_id, {"added": added})
    return JSON(Added(added, skipped))


async def remove_knowledge(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    await services.activations.remove(account_id, persona_id, external_id_of(request))
    await audit(
        request, "persona.knowledge_changed", persona_id, {"removed": external_id_of(request)}
    )
    return Response(status_code=204)


async def upload_media(request: Request) -> Response:
    """Multipart ``file``: an image, a voice sample or a video, told apart by its mime."""
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    upload = await read_upload(request, max_file_bytes=MEDIA_BODY_LIMIT, max_fields=4)
    media = await services.media.add(
        account_id, persona_id, upload.mime or "", upload.data, upload.file_name
    )
    await audit(request, "persona.media_added", persona_id, {"media_id": media.id})
    return JSON(media_view(persona_id, media), status_code=201)


async def list_media(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    media = await services.media.list(account_id, persona_id)
    return JSON([media_view(persona_id, m) for m in media])


async def get_media(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    media, data = await services.media.content(
        account_id, persona_id, own_id(request.path_params["media_id"], "media file")
    )
    return Response(data, media_type=media.mime)


async def delete_media(request: Request) -> Response:
    services, account_id = context(request)
    persona_id = await _persona_id(services, account_id, request)
    media_id = own_id(request.path_params["media_id"], "media file")
    if not await services.media.delete(account_id, persona_id, media_id):
        raise NotFound("No such media on this persona.")
    await audit(request, "persona.media_deleted", persona_id, {"media_id": media_id})
    return Response(status_code=204)


async def generate_image(request: Request) -> Response:
    """Seed 003: a portrait from the persona's system prompt, stored as its image."""
    services, account_id = context(request)
    persona = await services.personas.get(account_id, persona_id_of(request))
    if services.images is None:
        raise PreconditionFailed("No LLM provider configured")
    if not persona.role.strip():
        raise PreconditionFailed("Persona has no system prompt")
    png = await services.images.generate(
        f"A portrait of {persona.name}, a persona described as follows. {persona.role}"
    )
    media = await services.media.add(account_id, persona.id, "image/png", png, "portrait.png")
    updated = await services.personas.merge(
        account_id, persona.id, {"image": f"{media.id}.{EXTENSIONS['image/png']}"}
    )
    await audit(request, "persona.updated", persona.id, {"fields": ["image"]})
    return JSON(await full_view(services, account_id, updated))


ONE = "/api/personas/{persona_id}"
KNOWLEDGE = ONE + "/knowledge"
FOUND = (Failure.VALIDATION_FAILED,)
WRITES = (Failure.VALIDATION_FAILED, Failure.CONFLICT)
OPERATIONS = [
    Operation("GET", "/api/personas", list_personas,
              "The account's personas, oldest first; `limit` 1..200 (50), `offset`.",
              "personas", PersonaPage, failures=FOUND),
    Operation("POST", "/api/personas", create_persona,
              "Create a persona (201); name required, unique in the account (409).",
              "personas", PersonaView, status=201, request=PersonaIn, failures=WRITES),
    # Before {persona_id}, so "default" is not taken for an id.
    Operation("GET", "/api/personas/default", get_default,
              "The account's default persona: the one /api/v1/conversation speaks as.",
              "personas", PersonaView),
    Operation("PUT", "/api/personas/default", set_default,
              'Choose the default persona: {"persona_id": "..."}.', "personas", PersonaView,
              request=DefaultChoice, failures=FOUND),
    Operation("GET", ONE, get_persona, "One persona.", "personas", PersonaView),
    Operation("PUT", ONE, update_persona,
              "Change the fields given (seed 003's PUT); a taken name is 409.", "personas",
              PersonaView, request=PersonaIn, failures=WRITES),
    Operation("PATCH", ONE, update_persona, "Change the fields given; a taken name is 409.",
              "personas", PersonaView, request=PersonaIn, failures=WRITES),
    Operation("DELETE", ONE, delete_persona,
              "Delete a persona and its activations (204); the default persona is 409.",
              "personas", status=204, failures=(Failure.CONFLICT,)),
    Operation("GET", KNOWLEDGE, get_knowledge, "external_ids active for the persona.",
              "personas", Activation),
    Operation("PUT", KNOWLEDGE, replace_knowledge,
              "Replace the active list; unknown external_ids are 400 and change nothing.",
              "personas", Activation, request=Activation, failures=FOUND),
    Operation("POST", KNOWLEDGE, add_knowledge,
              "Activate more documents: {added, skipped}.", "personas", Added,
              request=Activation, failures=FOUND),
    Operation("DELETE", KNOWLEDGE + "/{external_id}", remove_knowledge,
              "Deactivate one document: 204 whether or not it was active.", "personas",
              status=204),
    Operation("POST", ONE + "/media", upload_media,
              "Upload a voice sample (the conversation API's audio types, <= 25 MiB), a video "
              "(mp4, webm, mov, <= 50 MiB) or an image (jpeg, png, webp, <= 5 MiB).",
              "personas", MediaView, status=201,
              failures=(Failure.VALIDATION_FAILED, Failure.INVALID_SIGNATURE,
                        Failure.UNSUPPORTED_TYPE, Failure.FILE_TOO_LARGE),
              body_limit=MEDIA_BODY_LIMIT + 64 * 1024, too_large=FileTooLarge),
    Operation("GET", ONE + "/media", list_media, "The persona's media.", "personas",
              list[MediaView]),
    Operation("GET", ONE + "/media/{media_id}", get_media, "One media file's bytes.",
              "personas", media_type="application/octet-stream"),
    Operation("DELETE", ONE + "/media/{media_id}", delete_media, "Delete one media file.",
              "personas", status=204),
    Operation("POST", ONE + "/generate-image", generate_image,
              "Generate a portrait from the system prompt with the configured image model and "
              "store it as the persona's image (seed 003).", "personas", PersonaView,
              failures=(Failure.PRECONDITION_FAILED, Failure.UPSTREAM_FAILED,
                        Failure.UPSTREAM_TIMEOUT)),
]  # fmt: skip
