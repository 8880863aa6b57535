"""Per-user memory: what one end user (``user_id``, seed 004's memory key) said before.

Each (account, user_id) has two keys, and the account one index of its users, all under the
account's hash tag so a Lua script over them stays legal in Redis Cluster:

- ``memory_turns``: a list of :class:`Turn` as msgspec JSON, oldest first, appended at the right;
- ``memory_meta``: a hash with ``bytes`` (the total size of the JSON in the list), ``summary``
  and ``facts`` (a JSON object of what the user told us about themselves, e.g. their name);
- ``memory_users``: a sorted set of the account's users who have a memory, scored by the time
  of their latest turn. The script that appends a turn adds its user there, and ``forget``
  removes the user with their keys in one transaction, so the index is exact under any
  concurrency: a user is listed exactly when their meta hash exists (``remember`` creates it,
  and nothing else writes one that is gone).

Bounds. The stored turns of one user never exceed ``max_bytes`` once a ``remember`` returns:
one script appends the turn, counts its bytes and pops the oldest turns while the total is
over the bound, so concurrent calls for one user can neither lose a turn nor miscount. A turn
larger than the whole bound is therefore stored and dropped at once (it still reaches the
summary). The summary never exceeds ``summary_bytes`` (UTF-8), facts hold a handful of short
values, so a user costs at most about ``max_bytes + summary_bytes`` in Redis.

The summary is a deterministic digest, one line per turn that no longer fits, oldest first::

    2025-01-31 user: My name is Ada. | reply: Nice to meet you, Ada!

each line holds the first sentence of the user's message and of the reply, each clipped to
``SENTENCE_BYTES``. When a new line would push the summary over ``summary_bytes``, whole lines
are dropped from the front, so the oldest memories fade first and no multi-byte character is
ever cut. It is deliberately dumb and needs no model: an LLM can refresh it later by
rewriting the ``summary`` field in place (e.g. condensing it into a few newline-separated
lines within ``summary_bytes``); later folds keep appending lines after whatever it wrote.

Folding is a second step after the append: the append script returns the popped turns' JSON
and Python turns them into lines, which a second script appends. If the process dies between
the two, those turns are gone from both the list and the summary, and two concurrent calls that
both trim may fold their lines in either order; both are acceptable for a lossy digest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec

from engine import keyspace
from engine.sentences import sentences
from engine.state import Client, redis_boundary

SENTENCE_BYTES = 200
"""The most one sentence (of the user's message or of the reply) may take in a summary line."""
ELLIPSIS = "…"


TurnStatus = Literal["completed", "cancelled"]


class Turn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One exchange: what the user said and what the persona replied."""

    at: datetime
    """When the turn happened, UTC (a naive value is taken as UTC when stored)."""
    user: str
    """What the user said: their text, or the transcript of their voice message."""
    reply: str
    request_id: str
    sources: list[str] = msgspec.field(default_factory=list)
    """external_ids of the knowledge documents the reply used."""
    status: TurnStatus = "completed"
    """``cancelled`` when the reply was stopped before it was finished: ``reply`` is then
    the part that had been said."""


FOLLOWS_BACK = 3
"""Turns a follow-up looks back over for what it is about: further back, "it" is more likely
something said since than the subject of an older reply."""


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    """Compact digest of older turns that no longer fit, at most ``summary_bytes``."""
    facts: dict[str, str]
    """What is known about the user, e.g. ``{"name": "Ada"}``."""
    recent: list[Turn]
    """The most recent turns, oldest first."""

    def grounded_on(self) -> list[str]:
        """The documents the latest reply that drew on any drew on, among the last
        ``FOLLOWS_BACK`` turns: what a follow-up that points back is about ("How heavy is
        it?" after a reply about the Lumen tent), even past a reply in between that had
        nothing to say ("Is it vegan?")."""
        for turn in reversed(self.recent[-FOLLOWS_BACK:]):
            if turn.sources:
                return turn.sources
        return []


_encode = msgspec.json.Encoder().encode
_decode_turn = msgspec.json.Decoder(Turn).decode
_decode_facts = msgspec.json.Decoder(dict[str, str]).decode

# Append, count and trim in one step: the Lua function ``remember``, spliced into the
# standalone script below and into the turn's closing script (engine/turn_store.py). The
# turn's JSON, the byte bound, and facts to merge as a JSON object ('' for none), then the
# user's member in the account's users index and the turn's time (ms). Lua's # is a byte
# length, which is what the bound is in. Facts are merged here too, so "a later statement
# replaces an earlier one" follows the order in which turns were stored. The index keeps a
# user's latest time (GT: a turn stored late never moves its user back). Returns the popped
# turns' JSON.
REMEMBER = """
local function remember(turns_key, meta_key, users_key, turn, bound, facts_json, member, at)
  redis.call('RPUSH', turns_key, turn)
  redis.call('ZADD', users_key, 'GT', at, member)
  local total = redis.call('HINCRBY', meta_key, 'bytes', #turn)
  local trimmed = {}
  while total > bound do
    local oldest = redis.call('LPOP', turns_key)
    if not oldest then
      redis.call('HSET', meta_key, 'bytes', 0)
      break
    end
    total = redis.call('HINCRBY', meta_key, 'bytes', -#oldest)
    trimmed[#trimmed + 1] = oldest
  end
  if facts_json ~= '' then
    local facts = {}
    local stored = redis.call('HGET', meta_key, 'facts')
    if stored then facts = cjson.decode(stored) end
    for name, value in pairs(cjson.decode(facts_json)) do facts[name] = value end
    redis.call('HSET', meta_key, 'facts', cjson.encode(facts))
  end
  return trimmed
end
"""

# The recent turns and the meta fields a reply needs, read in one step (so, one snapshot).
RECALL = """
local function recall(turns_key, meta_key, recent)
  return {redis.call('LRANGE', turns_key, -recent, -1),
          redis.call('HMGET', meta_key, 'summary', 'facts')}
end
"""

NOTHING_TO_REMEMBER: tuple[str | int, ...] = ("", 0, "", "", 0)
"""ARGV of ``remember`` that the turn's closing script reads as "nothing to remember"."""

_REMEMBER = (
    REMEMBER + "return remember(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], "
    "ARGV[4], tonumber(ARGV[5]))"
)
_RECALL = RECALL + "return recall(KEYS[1], KEYS[2], tonumber(ARGV[1]))"

# Append digest lines to the summary and drop whole lines from the front until it fits.
# KEYS: meta hash. ARGV: the byte bound, then the lines (no newlines, each within the bound).
# A meta hash that is gone was forgotten between the append and this fold: keep it gone.
_FOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local bound = tonumber(ARGV[1])
local lines = {}
local current = redis.call('HGET', KEYS[1], 'summary')
if current then
  for line in string.gmatch(current, '[^\\n]+') do lines[#lines + 1] = line end
end
for i = 2, #ARGV do lines[#lines + 1] = ARGV[i] end
local size = #lines - 1
for i = 1, #lines do size = size + #lines[i] end
local first = 1
while size > bound and first <= #lines do
  size = size - #lines[first] - 1
  first = first + 1
end
redis.call('HSET', KEYS[1], 'summary', table.concat(lines, '\\n', first))
return 1
"""


class MemoryStore:
    def __init__(
        self,
        redis: Client,
        *,
        max_bytes: int = 262_144,
        recent_turns: int = 12,
        summary_bytes: int = 4096,
    ) -> None:
        if max_bytes < 1 or recent_turns < 1 or summary_bytes < 0:
            raise ValueError("max_bytes and recent_turns must be >= 1, summary_bytes >= 0")
        self._redis = redis
        self._rewrite = redis.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "redis.call('HSET', KEYS[1], 'summary', ARGV[1]) end"
        )
        self._max_bytes = max_bytes
        self.recent_turns = recent_turns
        self._summary_bytes = summary_bytes
        self._remember = redis.register_script(_REMEMBER)
        self._recall = redis.register_script(_RECALL)
        self._fold = redis.register_script(_FOLD)

    @redis_boundary
    async def recall(self, account_id: str, user_id: str) -> Memory:
        """The user's summary, facts and last ``recent_turns`` turns, read as one snapshot."""
        answer = await self._recall(keys=self.keys(account_id, user_id), args=[self.recent_turns])
        return self.recalled(answer)

    def keys(self, account_id: str, user_id: str) -> list[str]:
        """The user's turns list and meta hash: the keys of ``recall``."""
        keys = keyspace.AccountKeys(account_id)
        return [keys.memory_turns(user_id), keys.memory_meta(user_id)]

    def remember_keys(self, account_id: str, user_id: str) -> list[str]:
        """The keys of ``remember``: the user's turns list and meta hash, and the account's
        users index."""
        return [*self.keys(account_id, user_id), keyspace.AccountKeys(account_id).memory_users]

    @staticmethod
    def recalled(answer: list) -> Memory:
        """The Memory that the Lua ``recall`` answered."""
        raws, (summary, facts) = answer
        return Memory(
            summary=summary or "",
            facts=_decode_facts(facts) if facts else {},
            recent=[_decode_turn(raw) for raw in raws],
        )

    def remember_args(self, user_id: str, turn: Turn) -> list[str | int]:
        """ARGV of the Lua ``remember`` for ``turn``: its JSON (time in UTC), the byte bound,
        the facts its words tell (name, ...), the user's member in the users index and the
        turn's time in ms."""
        if turn.at.tzinfo is None:
            turn = msgspec.structs.replace(turn, at=turn.at.replace(tzinfo=UTC))
        elif turn.at.utcoffset():
            turn = msgspec.structs.replace(turn, at=turn.at.astimezone(UTC))
        facts = extract_facts(turn.user)
        return [
            _encode(turn).decode(),
            self._max_bytes,
            _encode(facts).decode() if facts else "",
            user_id,
            round(turn.at.timestamp() * 1000),
        ]

    @redis_boundary
    async def remember(self, account_id: str, user_id: str, turn: Turn) -> bool:
        """Store one turn, learn facts from the user's words, fold what no longer fits.

        Returns whether the summary grew, so a caller with an LLM can condense it."""
        keys = self.remember_keys(account_id, user_id)
        trimmed = await self._remember(keys=keys, args=self.remember_args(user_id, turn))
        return await self.fold(account_id, user_id, trimmed)

    @redis_boundary
    async def fold(self, account_id: str, user_id: str, trimmed: list[str]) -> bool:
        """Fold turns that ``remember`` pushed out into the summary; whether it grew."""
        if not trimmed or self._summary_bytes == 0:
            return False
        lines = [digest(_decode_turn(raw), self._summary_bytes) for raw in trimmed]
        lines = [line for line in lines if line]
        if lines:
            meta = keyspace.AccountKeys(account_id).memory_meta(user_id)
            await self._fold(keys=[meta], args=[self._summary_bytes, *lines])
        return bool(lines)

    @redis_boundary
    async def rewrite_summary(self, account_id: str, user_id: str, summary: str) -> None:
        """Replace the summary (an LLM's condensed version), clipped to its bound. A user
        forgotten meanwhile stays forgotten: nothing is written for an empty memory."""
        meta = keyspace.AccountKeys(account_id).memory_meta(user_id)
        await self._rewrite(keys=[meta], args=[clip(summary.strip(), self._summary_bytes)])

    @redis_boundary
    async def history(
        self, account_id: str, user_id: str, *, limit: int, offset: int
    ) -> tuple[list[Turn], int]:
        """One page of the stored turns, newest first, and how many are stored in all."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        key = keyspace.AccountKeys(account_id).memory_turns(user_id)
        if limit == 0:
            return [], await self._redis.llen(key)
        # Newest-first position i is list index -(i + 1); Redis clamps a start before the head.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, -(offset + limit), -(offset + 1))
            pipe.llen(key)
            raws, total = await pipe.execute()
        return [_decode_turn(raw) for raw in reversed(raws)], total

    @redis_boundary
    async def conversation(self, account_id: str, user_id: str) -> list[Turn] | None:
        """All the stored turns of one user, oldest first; None when the account has no
        memory of that user."""
        keys = keyspace.AccountKeys(account_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(keys.memory_turns(user_id), 0, -1)
            pipe.exists(keys.memory_meta(user_id))
            raws, known = await pipe.execute()
        if not raws and not known:
            return None
        return [_decode_turn(raw) for raw in raws]

    @redis_boundary
    async def conversations(
        self, account_id: str, *, limit: int, offset: int
    ) -> tuple[list[tuple[str, list[Turn]]], int]:
        """One page of the account's users who have a memory, the latest turn's first,
        each with all their stored turns (oldest first), and how many such users there are.

        Two round trips: the page of the users index, then their turns. A user forgotten in
        between is left out of the page."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        keys = keyspace.AccountKeys(account_id)
        if limit == 0:
            return [], await self._redis.zcard(keys.memory_users)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrevrange(keys.memory_users, offset, offset + limit - 1)
            pipe.zcard(keys.memory_users)
            users, total = await pipe.execute()
        if not users:
            return [], total
        async with self._redis.pipeline(transaction=True) as pipe:
            for user_id in users:
                pipe.lrange(keys.memory_turns(user_id), 0, -1)
                pipe.exists(keys.memory_meta(user_id))
            found = await pipe.execute()
        page = [
            (user_id, [_decode_turn(raw) for raw in raws])
            for user_id, raws, known in zip(users, found[::2], found[1::2], strict=True)
            if raws or known
        ]
        return page, total

    @redis_boundary
    async def forget(self, account_id: str, user_id: str) -> bool:
        """Erase everything remembered about the user, and their place in the account's
        users index; True if there was anything."""
        keys = keyspace.AccountKeys(account_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.memory_turns(user_id), keys.memory_meta(user_id))
            pipe.zrem(keys.memory_users, user_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)


# --- the summary digest ---------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def digest(turn: Turn, budget: int) -> str:
    """One summary line for a turn, at most ``budget`` UTF-8 bytes, with no newline in it."""
    parts = [f"{turn.at.astimezone(UTC):%Y-%m-%d}"]
    user, reply = first_sentence(turn.user), first_sentence(turn.reply)
    if user:
        parts.append(f"user: {clip(user, SENTENCE_BYTES)}")
    if reply:
        parts.append(("| " if user else "") + f"reply: {clip(reply, SENTENCE_BYTES)}")
    if len(parts) == 1:
        return ""
    return clip(" ".join(parts), budget)


def first_sentence(text: str) -> str:
    """The text's first sentence, on one line (a summary line holds no newline)."""
    found = sentences(text, lowercase_starts=True)  # chat, not edited prose
    return _SPACE.sub(" ", found[0]) if found else ""


def clip(text: str, budget: int) -> str:
    """``text`` within ``budget`` UTF-8 bytes, ending in an ellipsis when cut; a cut never falls
    inside a multi-byte character."""
    encoded = text.encode()
    if len(encoded) <= budget:
        return text
    marker = ELLIPSIS if budget >= len(ELLIPSIS.encode()) else ""
    room = budget - len(marker.encode())
    # Dropping the bytes of a character cut in half: the input was valid UTF-8 up to there.
    return encoded[:room].decode(errors="ignore").rstrip() + marker


# --- facts ----------------------------------------------------------------------------------

_APOSTROPHE = "['\u2019]"  # typed, and the typographic one phones insert
# The ways people state their name. "name's" alone counts only where a clause starts ("Name's
# Bond") or after "my", so "his name's Bob" is not about the user. Plain "I'm"/"I am" is never
# a trigger: "I'm fine" and "I am tired" are not names.
_NAME_TRIGGER = re.compile(
    rf"\bmy\s+name\s+is\b"
    rf"|\bmy\s+name{_APOSTROPHE}s\b"
    rf"|(?:^|(?<=[.!?,;:(\"]))\s*name{_APOSTROPHE}s\b"
    rf"|\bcall\s+me\b"
    rf"|\bi(?:{_APOSTROPHE}m|\s+am)\s+called\b",
    re.IGNORECASE,
)
# A word of a name: letters with inner apostrophes or hyphens (O'Neil, Ada-Mae); a word that
# runs into digits or underscores is no name at all.
_NAME_WORD = re.compile(rf"[^\W\d_]+(?:(?:{_APOSTROPHE}|-)[^\W\d_]+)*(?![\w'\u2019-])")
_NEGATED = re.compile(rf"(?:\bnot|n{_APOSTROPHE}t|\bnever)(?:\s+\w+)?\s*$", re.IGNORECASE)
# Words that follow a trigger without being a name ("call me back", "my name is not
# important", "call me crazy") or that end one ("Ada and I ..."). Heuristic, kept small.
_NOT_NAME_WORDS = """
a an the and or but so because cause from by i im i'm i\u2019m not please too also btw here
there now if since then though who which that at in on for to with as when while just
actually really yeah yes no thanks thank is was are am be it you me my your his her their
our back later tomorrow today tonight anytime whenever maybe sometime again soon anything
whatever what something nothing everything everyone anyone upon out up down away off over
about into crazy old-fashioned naive silly stupid paranoid lucky biased
"""
_NOT_NAME = frozenset(_NOT_NAME_WORDS.split())
MAX_NAME_WORDS = 3
LOOKBACK = 64
"""How far before a trigger a negation or a clause's start is looked for: the few words
there decide, and looking no further keeps a long text with many triggers linear."""
_FIRST_WORD = re.compile(r"\s+")
_NEXT_WORD = re.compile(r"[ \t]+")


FACT_BYTES = 64
"""The most one fact's value may take: facts are a handful of short values, never prose."""
# Where a fact's statement may start: at the start of the text or of a clause, or after a
# word that joins clauses. "If I live in Spain", "do I live in", "where I live in" and
# "when I work as" are hypotheses, questions or subordinate clauses, not statements, and
# "I don't live in" or "I used to live in" never match a trigger at all.
_CLAUSE_START = re.compile(
    r"(?:^|[.!?,;:(\"\u2013\u2014]|\b(?:and|but|so|also|btw|well|now|actually|anyway|hi|hello"
    r"|hey|oh|ok|okay|yes|yeah))\s*$",
    re.IGNORECASE,
)
_I_AM = rf"\bi(?:{_APOSTROPHE}m|\s+am)\s+"
_NOW = r"(?:(?:currently|now|still|also|actually)\s+)?"
# Where the user lives. "I'm staying in" is a hotel, "I live at" an address: neither counts.
_LOCATION_TRIGGER = re.compile(
    rf"\bi\s+{_NOW}(?:live|reside)\s+in\b|{_I_AM}{_NOW}(?:living|based|located)\s+in\b",
    re.IGNORECASE,
)
_ORIGIN_TRIGGER = re.compile(
    rf"{_I_AM}(?:originally\s+)?from\b|\bi\s+(?:originally\s+)?come\s+from\b", re.IGNORECASE
)
# Only "work as a/an/the X": "I'm a bit tired", "I work as hard as I can" and "I work as
# well" are no jobs.
_JOB_TRIGGER = re.compile(rf"\bi\s+{_NOW}work\s+as\b|{_I_AM}{_NOW}working\s+as\b", re.IGNORECASE)
_ARTICLE = re.compile(r"\s+(an?|the)\b", re.IGNORECASE)
MAX_PLACE_WORDS = 4
MAX_JOB_WORDS = 4
# Words that end a place or a job ("in Lisbon near the river", "as a nurse at a clinic"),
# and the few abstract nouns that follow "I live in" without being a place.
_NOT_PLACE = _NOT_NAME | frozenset("near close outside around hope fear denial peace".split())
# Small words inside place names, kept lowercase when the rest is capitalised.
_PLACE_PARTICLES = frozenset("of de da do dos das del la le los las du di von van".split())


def extract_facts(text: str) -> dict[str, str]:
    """Facts the user states about themselves in ``text``: ``name``, ``location`` (where
    they live), ``origin`` (where they are from) and ``job``, each at most ``FACT_BYTES``.

    The last statement of each in the text wins, as a later turn's replaces an earlier turn's.
    """
    found = {
        "name": _stated_name(text),
        "location": _last(text, _LOCATION_TRIGGER, _place_at),
        "origin": _last(text, _ORIGIN_TRIGGER, _place_at),
        "job": _last(text, _JOB_TRIGGER, _job_at),
    }
    return {fact: clip(value, FACT_BYTES) for fact, value in found.items() if value}


def _stated_name(text: str) -> str | None:
    name = None
    for trigger in _NAME_TRIGGER.finditer(text):
        if _NEGATED.search(text, max(0, trigger.start() - LOOKBACK), trigger.start()):
            continue
        found = _name_at(text, trigger.end())
        if found:
            name = found
    return name


def _last(
    text: str, trigger: re.Pattern[str], read: Callable[[str, int], str | None]
) -> str | None:
    """The value after the last ``trigger`` that opens a clause, read by ``read``."""
    value = None
    for match in trigger.finditer(text):
        if _CLAUSE_START.search(text, max(0, match.start() - LOOKBACK), match.start()):
            value = read(text, match.end()) or value
    return value


def _words_at(text: str, position: int, limit: int, stop: frozenset[str]) -> list[str] | None:
    """The words (on one line, plain spaces between) that start after ``position``, up to a
    stop word or punctuation; None when there are none or more than ``limit``, as a phrase
    that runs on is a clause ("in a place where ..."), not a value."""
    words: list[str] = []
    while True:
        gap = (_NEXT_WORD if words else _FIRST_WORD).match(text, position)
        word = gap and _NAME_WORD.match(text, gap.end())
        if not word or word.group().lower() in stop:
            break
        words.append(word.group())
        position = word.end()
        if len(words) > limit:
            return None
    return words or None


def _place_at(text: str, position: int) -> str | None:
    """A place after "in" or "from": "Lisbon", "New York", "the Netherlands"; no place
    starts with "a" ("I live in a flat")."""
    article = _ARTICLE.match(text, position)
    the = article is not None and article.group(1).lower() == "the"
    words = _words_at(text, article.end() if the else position, MAX_PLACE_WORDS, _NOT_PLACE)
    if not words:
        return None
    place = [_place_word(words[0])] + [
        word.lower() if word.lower() in _PLACE_PARTICLES else _place_word(word)
        for word in words[1:]
    ]
    return " ".join(["the", *place] if the else place)


def _place_word(word: str) -> str:
    """Capitalise a word typed all in lowercase (lisbon → Lisbon); keep capitals as typed,
    so that UK and NYC stay acronyms."""
    return _title(word) if word.islower() else word


def _job_at(text: str, position: int) -> str | None:
    """A job after "work as", with its article as typed ("a nurse", "the head chef"): the
    reply can then say it back without choosing between "a" and "an"."""
    article = _ARTICLE.match(text, position)
    if article is None:
        return None
    words = _words_at(text, article.end(), MAX_JOB_WORDS, _NOT_PLACE)
    return " ".join([article.group(1).lower(), *words]) if words else None


def _name_at(text: str, position: int) -> str | None:
    """The name that starts after a trigger ending at ``position``, if one does."""
    words: list[str] = []
    while len(words) < MAX_NAME_WORDS:
        # Any space may precede the name; its words are separated by plain spaces only, so
        # punctuation or a line break ends it.
        gap = (_NEXT_WORD if words else _FIRST_WORD).match(text, position)
        word = gap and _NAME_WORD.match(text, gap.end())
        if not word or word.group().lower() in _NOT_NAME:
            break
        words.append(word.group())
        position = word.end()
    return " ".join(_title(word) for word in words) or None


def _title(word: str) -> str:
    """Title-case a word the user typed all in one case (ada, ADA → Ada; o'neil → O'Neil);
    keep a mixed-case one as written (McDonald, DeShawn)."""
    if not (word.islower() or word.isupper()):
        return word
    return re.sub(r"[^\W\d_]+", lambda part: part.group().capitalize(), word)
