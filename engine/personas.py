"""Personas: who the account's users talk to.

This module is the one place for a persona's fields and their limits: the stored
:class:`Persona`, seed 004's ``persona`` object (:class:`PersonaPatch`), and the annotated
types the ``/api/personas`` bodies are made of. Field limits come from seed 004 (the
conversation API's ``persona`` object): name 1..64, age 1..120, gender, the twelve zodiac
signs, temperament weights, sociality, up to 16 archetypes, role 1..1000. Names are unique
within an account (seed 003: duplicate → 409), compared as :func:`name_key` folds them.
Seed 002's instance ``configuration`` is any JSON object, kept as given and bounded
(:func:`check_configuration`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from redis.commands.core import AsyncScript

from engine import keyspace
from engine.accounts import AccountStore
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.ids import UNSEEN, ZERO_WIDTH, OwnId, new_id
from engine.persona_media import MediaStore
from engine.state import Client, redis_boundary

PersonaId = OwnId
"""A persona id as a request names it (:data:`engine.ids.OwnId`)."""
NAME_MAX_LENGTH = 64
StoredName = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX_LENGTH)]
"""A stored persona's name: read as it was written, whatever rules names had then."""
Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        # At least one character that shows: a name of only zero-width characters or spaces
        # would read as no name (and fold to "" in :func:`name_key`).
        pattern=rf"\A[^{UNSEEN}]*[^{UNSEEN}{ZERO_WIDTH}\s\u00ad][^{UNSEEN}]*\Z",
    ),
]
"""Seed 004: name 1..64; no control or bidirectional-control character
(:data:`engine.ids.UNSEEN`), and not only invisible ones."""


def name_key(name: str) -> str:
    """What two names are compared by, so that names that read the same are one name: NFKC
    (compatibility forms: a fullwidth "NORA" is "NORA"), then without format characters (Unicode
    category Cf: zero-width ones, soft hyphens), then casefolded ("NORA" is "nora")."""
    folded = unicodedata.normalize("NFKC", name)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf").casefold()


ROLE_MAX_LENGTH = 1000
Role = Annotated[str, msgspec.Meta(min_length=1, max_length=ROLE_MAX_LENGTH)]
"""Seed 004: role 1..1000, whichever API gives it (seed 003's ``systemPrompt`` is this field).
Seed 003 makes the system prompt optional, so a persona never given one stores "" (and a
portrait request then gets seed 003's "Persona has no system prompt"); given, it is 1..1000."""
Description = Annotated[str, msgspec.Meta(max_length=2000)]
"""Seed 003: "short description", without a number; seed 004's role, the full description,
is at most 1000. 2000 is the cap ``/api/personas`` has always had, kept so that every stored
description still reads."""
Age = Annotated[int, msgspec.Meta(ge=1, le=120)]
"""Seed 004: integer 1..120."""
ImageRef = Annotated[str, msgspec.Meta(max_length=2048)]
"""Seed 003's ``imageUrl``: an image id (``<media id>.png``) or a URL."""
# RFC 9110 §5.1: a field name is a token; a value may not hold CR or LF (§5.5), or it would
# smuggle a header of its own into the connector's request (seed 003: persona headers).
HeaderName = Annotated[str, msgspec.Meta(pattern=r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")]
HeaderValue = Annotated[str, msgspec.Meta(max_length=1024, pattern=r"\A[^\r\n]*\Z")]
Headers = Annotated[dict[HeaderName, HeaderValue], msgspec.Meta(max_length=32)]

Gender = Literal["male", "female"]
Zodiac = Literal[
    "Aries", "Taurus", "Gemini", "Cancer", "Leo", "Virgo",
    "Libra", "Scorpio", "Sagittarius", "Capricorn", "Aquarius", "Pisces",
]  # fmt: skip
Sociality = Literal["introvert", "ambivert", "extrovert"]
# Seed 004 names Sage, Explorer, Creator, Caregiver as examples of the enum; these are the
# twelve classic archetypes that list comes from.
Archetype = Literal[
    "Innocent", "Everyman", "Hero", "Caregiver", "Explorer", "Rebel",
    "Lover", "Creator", "Jester", "Sage", "Magician", "Ruler",
]  # fmt: skip
Archetypes = Annotated[list[Archetype], msgspec.Meta(max_length=16)]
"""Seed 004: an array of up to 16 enum values."""
Mode = Literal["chat", "full"]

Weight = Annotated[float, msgspec.Meta(ge=0)]


TemperamentName = Literal["sanguine", "choleric", "phlegmatic", "melancholic"]


class Temperament(msgspec.Struct, frozen=True, kw_only=True):
    """Weights of the four temperaments; :meth:`normalised` makes them sum to 1."""

    sanguine: Weight = 0.25
    choleric: Weight = 0.25
    phlegmatic: Weight = 0.25
    melancholic: Weight = 0.25

    def normalised(self) -> Temperament:
        total = self.sanguine + self.choleric + self.phlegmatic + self.melancholic
        if total == 0:
            return Temperament()
        return Temperament(
            sanguine=self.sanguine / total,
            choleric=self.choleric / total,
            phlegmatic=self.phlegmatic / total,
            melancholic=self.melancholic / total,
        )

    @property
    def leading(self) -> TemperamentName:
        """The temperament with the largest weight. Ties go to the earlier name in seed
        004's order, so equal weights (the default) pick one steadily."""
        return max(get_args(TemperamentName), key=lambda name: getattr(self, name))


class TemperamentWeights(msgspec.Struct, forbid_unknown_fields=True):
    """A temperament as given (seed 004): taken whole, a weight left out counts as 0;
    :class:`Temperament` stores it normalised."""

    sanguine: Weight = 0.0
    choleric: Weight = 0.0
    phlegmatic: Weight = 0.0
    melancholic: Weight = 0.0


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Clock = Annotated[str, msgspec.Meta(pattern=r"\A([01]\d|2[0-3]):[0-5]\d\Z")]


class Window(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One weekly opening window, ``start`` before ``end``, both HH:MM local time."""

    day: Day
    start: Clock
    end: Clock

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError("a window's start must be before its end")


class Availability(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When sessions may start (seed 000: limits.session_time_limit outside these)."""

    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    windows: Annotated[list[Window], msgspec.Meta(max_length=64)]

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.time_zone!r}") from None

    def open_at(self, when: datetime) -> bool:
        """Whether a session may start at ``when`` (an aware datetime): it falls in a window
        of its weekday, in the persona's time zone, start included and end excluded."""
        local = when.astimezone(ZoneInfo(self.time_zone))
        day = get_args(Day)[local.weekday()]  # Day lists Monday first, as weekday() counts
        clock = f"{local.hour:02d}:{local.minute:02d}"
        return any(w.day == day and w.start <= clock < w.end for w in self.windows)


Configuration = dict[str, Any]
"""Seed 002's instance ``configuration``: "Object, required, configuration settings"."""
MAX_CONFIGURATION_BYTES = 16 * 1024
"""Encoded as JSON. It is read with the persona, on every turn; seed 002 shows two settings."""
MAX_CONFIGURATION_DEPTH = 32
"""Objects and arrays inside one another. Far below what a JSON decoder can recurse into,
so a stored persona always reads back, however deep the stack that reads it."""


def _depth(value: Any) -> int:
    """How many objects and arrays deep ``value`` (an object or array) goes; no recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                pending.append((child, level + 1))
        deepest = max(deepest, level)
    return deepest


def check_configuration(configuration: Configuration, field: str = "configuration") -> None:
    """400 ``validation.failed`` naming ``field`` for one over the size or nesting bound."""
    size = len(_encode(configuration))
    if size > MAX_CONFIGURATION_BYTES:
        problem = f"{size} bytes of JSON, over {MAX_CONFIGURATION_BYTES}"
    elif _depth(configuration) > MAX_CONFIGURATION_DEPTH:
        problem = f"nested deeper than {MAX_CONFIGURATION_DEPTH} levels"
    else:
        return
    raise ValidationFailed(f"{field}: {problem}.", errors={field: [problem]})


SessionLimit = Annotated[int, msgspec.Meta(ge=1)]
"""Seed 000's SessionInteractionLimit and SessionDurationLimitSeconds; None = unlimited."""
Modes = Annotated[list[Mode], msgspec.Meta(min_length=1)]


class PublishSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Seed 000's PublishSettings: per-session budgets (None = unlimited), opening hours,
    and the session modes a widget may use."""

    session_interaction_limit: SessionLimit | None = None
    """Billing units a session may spend: a full-mode turn costs 2, a chat turn 1."""
    session_duration_limit_seconds: SessionLimit | None = None
    availability: Availability | None = None
    allowed_modes: Modes = msgspec.field(default_factory=lambda: ["chat", "full"])


class Persona(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: StoredName
    description: Description = ""
    role: Annotated[str, msgspec.Meta(max_length=ROLE_MAX_LENGTH)] = ""
    """A :data:`Role`, or "" for none."""
    age: Age | None = None
    gender: Gender | None = None
    zodiac: Zodiac | None = None
    temperament: Temperament = msgspec.field(default_factory=Temperament)
    sociality: Sociality = "ambivert"
    archetypes: Archetypes = msgspec.field(default_factory=list)
    headers: Headers = msgspec.field(default_factory=dict)
    image: ImageRef | None = None
    publish_settings: PublishSettings = msgspec.field(default_factory=PublishSettings)
    configuration: Configuration = msgspec.field(default_factory=dict)
    """Seed 002's instance configuration; Rapport keeps and shows it, and reads none of it."""
    created_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))


class PersonaPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 004's ``persona`` object: the fields given (not null) replace the stored ones."""

    name: Name | None = None
    age: Age | None = None
    gender: Gender | None = None
    zodiac: Zodiac | None = None
    temperament: TemperamentWeights | None = None
    sociality: Sociality | None = None
    archetypes: Archetypes | None = None
    role: Role | None = None

    def changes(self) -> dict[str, Any]:
        """The fields given, as builtins, for :meth:`PersonaStore.merge`."""
        return {k: v for k, v in msgspec.to_builtins(self).items() if v is not None}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Persona).decode


class _Named(msgspec.Struct):
    """What re-indexing reads of a stored persona."""

    id: str
    name: str


_decode_named = msgspec.json.Decoder(_Named).decode

NAMES_VERSION = "1"
"""Which rules the account's ``persona_names`` hash is keyed by: "1" is :func:`name_key`.
An account whose marker (``persona_names_version``) is absent or another value keeps its names
some other way (before "1", as spelt), and its hash is rebuilt from its personas before the
next name check (:meth:`PersonaStore._reindex`). Change it whenever :func:`name_key` changes,
and every account re-indexes itself on its next create, rename or delete."""
NAME_TRIES = 3
"""A name change meeting an index that is not at :data:`NAMES_VERSION` re-indexes and tries
again. Only a node keying names by other rules (a rolling upgrade) can leave it stale again."""
_STALE = -1

# Every script that reads or writes the names hash first checks it is keyed by the current
# rules, and changes nothing otherwise (_STALE): so while an account's index is stale, its
# personas and their names do not change, and the snapshot _reindex takes stays true until its
# script runs. KEYS: names, names version, ... ARGV: NAMES_VERSION, ...
_CURRENT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
"""
# Claim the name and write the record in one step, so two creators racing for a name
# cannot both win. All keys carry the account's hash tag (one cluster slot).
# KEYS: names, version, record, listing. ARGV: version, name key, id, record, created at.
_CREATE = f"""{_CURRENT}
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('SET', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
return 1
"""
# KEYS: names, version, record, listing. ARGV: version, name key, id.
_DELETE = f"""{_CURRENT}
redis.call('DEL', KEYS[3])
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then redis.call('HDEL', KEYS[1], ARGV[2]) end
return redis.call('ZREM', KEYS[4], ARGV[3])
"""
# Rename-safe replace: the new name is claimed (unless it is already this persona's) before
# the old one is released, so no moment leaves two personas with one name. The old name is
# released only if it is this persona's: two personas stored before names were folded may
# share a key, and the one that lost it at re-indexing must not free the other's.
# KEYS: names, version, record. ARGV: version, new name key, id, old name key, record.
_REPLACE = f"""{_CURRENT}
local owner = redis.call('HGET', KEYS[1], ARGV[2])
if owner and owner ~= ARGV[3] then return 0 end
if ARGV[4] ~= ARGV[2] and redis.call('HGET', KEYS[1], ARGV[4]) == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[5])
return 1
"""
# The names hash rebuilt from a snapshot of the personas, unless another node has already
# done it (and names may have changed since). KEYS: names, version. ARGV: version, then a
# name key and an id for each persona, oldest first.
_REINDEX = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


class PersonaStore:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._create = redis.register_script(_CREATE)
        self._replace = redis.register_script(_REPLACE)
        self._delete = redis.register_script(_DELETE)
        self._reindex_script = redis.register_script(_REINDEX)

    async def _with_names(
        self, script: AsyncScript, account_id: str, keys: list[str], args: list[object]
    ) -> int:
        """Run ``script`` (one of those starting with ``_CURRENT``) on the account's names
        hash, re-indexing it first if it is not keyed by :data:`NAMES_VERSION`."""
        names = keyspace.AccountKeys(account_id)
        for _ in range(NAME_TRIES):
            result = await script(
                keys=[names.persona_names, names.persona_names_version, *keys],
                args=[NAMES_VERSION, *args],
            )
            if result != _STALE:
                return int(result)
            await self._reindex(account_id)
        raise Conflict("Persona names are being re-indexed by another version; try again.")

    async def _reindex(self, account_id: str) -> None:
        """Rebuild the account's names hash from its personas (an account has few). Where two
        stored before names were folded now read as one, the older keeps the name."""
        keys = keyspace.AccountKeys(account_id)
        ids = await self._redis.zrange(keys.personas, 0, -1)
        raws = await self._redis.mget([keys.persona(i) for i in ids]) if ids else []
        pairs: list[str] = []
        for raw in raws:
            if raw is not None:
                persona = _decode_named(raw)
                pairs += [name_key(persona.name), persona.id]
        await self._reindex_script(
            keys=[keys.persona_names, keys.persona_names_version], args=[NAMES_VERSION, *pairs]
        )

    @redis_boundary
    async def create(self, account_id: str, **fields: object) -> Persona:
        persona = msgspec.convert({"id": new_id(), **fields}, Persona)
        check_configuration(persona.configuration)
        persona = msgspec.structs.replace(_normalised(persona), updated_at=persona.created_at)
        keys = keyspace.AccountKeys(account_id)
        claimed = await self._with_names(
            self._create,
            account_id,
            [keys.persona(persona.id), keys.personas],
            [
                name_key(persona.name),
                persona.id,
                _encode(persona),
                persona.created_at.timestamp(),
            ],
        )
        if not claimed:
            raise Conflict(f"A persona named {persona.name!r} already exists.")
        return persona

    @redis_boundary
    async def get(self, account_id: str, persona_id: str) -> Persona:
        raw = await self._redis.get(keyspace.AccountKeys(account_id).persona(persona_id))
        if raw is None:
            raise NotFound(f"No persona {persona_id!r}.")
        return _decode(raw)

    @redis_boundary
    async def get_with(
        self, account_id: str, persona_id: str, keys: Sequence[str]
    ) -> tuple[Persona, tuple[str | None, ...]]:
        """The persona and the values of ``keys``, the account's own (one hash tag), in the
        one round trip that reads the persona: the mint reads its starter prompts'
        versions so (kb.prompts), and a mint's round trips are a benchmarked figure."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keyspace.AccountKeys(account_id).persona(persona_id))
        for key in keys:
            pipe.get(key)
        raw, *values = await pipe.execute()
        if raw is None:
            raise NotFound(f"No persona {persona_id!r}.")
        return _decode(raw), tuple(values)

    @redis_boundary
    async def merge(self, account_id: str, persona_id: str, changes: dict[str, object]) -> Persona:
        """Apply a partial update; an invalid field or a taken name changes nothing."""
        current = await self.get(account_id, persona_id)
        stored = msgspec.to_builtins(current)
        if isinstance(changes.get("publish_settings"), dict):
            # One level deeper: changing one limit keeps the others.
            changes = {
                **changes,
                "publish_settings": {**stored["publish_settings"], **changes["publish_settings"]},
            }
        try:
            merged = msgspec.convert({**stored, **changes}, Persona)
        except msgspec.ValidationError as exc:
            raise ValidationFailed(f"persona: {exc}") from None
        check_configuration(merged.configuration)
        merged = _normalised(merged)
        if merged == current:
            return current
        merged = msgspec.structs.replace(merged, updated_at=datetime.now(UTC))
        keys = keyspace.AccountKeys(account_id)
        replaced = await self._with_names(
            self._replace,
            account_id,
            [keys.persona(persona_id)],
            [name_key(merged.name), persona_id, name_key(current.name), _encode(merged)],
        )
        if not replaced:
            raise Conflict(f"A persona named {merged.name!r} already exists.")
        return merged

    @redis_boundary
    async def page(self, account_id: str, limit: int, offset: int) -> tuple[list[Persona], int]:
        """Personas oldest first, and how many there are."""
        keys = keyspace.AccountKeys(account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrange(keys.personas, offset, offset + limit - 1)
        pipe.zcard(keys.personas)
        ids, total = await pipe.execute()
        raws = await self._redis.mget([keys.persona(i) for i in ids]) if ids else []
        return [_decode(raw) for raw in raws if raw is not None], int(total)

    @redis_boundary
    async def delete(self, account_id: str, persona: Persona) -> None:
        keys = keyspace.AccountKeys(account_id)
        await self._with_names(
            self._delete,
            account_id,
            [keys.persona(persona.id), keys.personas],
            [name_key(persona.name), persona.id],
        )


def _normalised(persona: Persona) -> Persona:
    # Seed 004: temperament weights are "normalized inside the engine".
    return msgspec.structs.replace(persona, temperament=persona.temperament.normalised())


ForgetActivations = Callable[[str, str], Awaitable[None]]
"""Drops every knowledge activation of (account_id, persona_id)."""


async def delete_persona_everywhere(
    accounts: AccountStore,
    personas: PersonaStore,
    media: MediaStore,
    forget_activations: ForgetActivations,
    account_id: str,
    persona_id: str,
) -> None:
    """Delete a persona and what hangs off it: its activations, its media, then the record.

    The record goes last, so a retry after a failure half way finds the persona and finishes.
    Activations are kb's, and engine imports nothing of kb, so the wiring hands that one step
    in, as it hands the turn pipeline its retriever (docs/architecture.md, "Layers"); the
    rest is persona rules (the default persona stays; media goes with its persona), which
    belong here rather than in kb, which would otherwise have to be given the persona and
    media stores.
    """
    persona = await personas.get(account_id, persona_id)
    if persona.id == (await accounts.get(account_id)).default_persona_id:
        raise Conflict(
            "This is the account's default persona; choose another default before deleting it."
        )
    await forget_activations(account_id, persona.id)
    await media.delete_all(account_id, persona.id)
    await personas.delete(account_id, persona)
