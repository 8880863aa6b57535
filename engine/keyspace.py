"""Where everything lives in Redis.

Every key of one account carries the hash tag ``{acct:<id>}``, so all of an account's keys
sit in one Redis Cluster slot and a Lua script or MULTI over them stays legal there. Keys
without a tag are the global indexes that map a name or a key prefix to an account.
"""

from __future__ import annotations

from urllib.parse import quote

PREFIX = "rapport"

ACCOUNTS = f"{PREFIX}:accounts"
"""Hash: account id -> account name."""
ACCOUNT_NAMES = f"{PREFIX}:account_names"
"""Hash: account name -> account id (names are unique)."""


class KbQueueKeys:
    """The knowledge processing queue, fair between accounts (:mod:`kb.queue`). Every key
    carries the hash tag ``{kb}``: one cluster slot, so the claim script may touch the ring,
    the leases and any account's list at once. Jobs are ``account\x00external_id\x00
    generation``; they are small, so one slot holds every account's."""

    base = f"{PREFIX}:{{kb}}"
    ring = f"{base}:ring"
    """List: the accounts that have jobs waiting, each once; a claim takes the first and
    moves it to the end (round robin)."""
    leases = f"{base}:leases"
    """Sorted set: jobs being processed, scored by the time their lease runs out."""
    queue_prefix = f"{base}:queue:"
    """Followed by an account id (as it is: it comes after the tag, so it cannot move the
    key's slot, and nothing else is named under this prefix): the list of that account's
    waiting jobs, oldest first."""

    @classmethod
    def queue(cls, account_id: str) -> str:
        return cls.queue_prefix + account_id


LEGACY_KB_QUEUE = f"{PREFIX}:kb:queue"
"""List: the single FIFO queue of versions before the fair one; drained into it."""
LEGACY_KB_LEASES = f"{PREFIX}:kb:leases"
"""Sorted set: that version's leases; an expired one is drained into the fair queue."""

SESSION_CONTROL = f"{PREFIX}:sessions:control"
"""Pub/sub channel: live-session control messages (a session replaced or ended), so the
node that holds a session's socket hears of it whichever node acted."""


class DeploymentKeys:
    """The deployment's capacity and its waiting room, shared by every process and node on
    one Redis. They carry one hash tag of their own, ``{deployment}``: one cluster slot, so
    a script over them stays legal there, and no script touches them and an account's keys
    together (Redis Cluster refuses cross-slot scripts)."""

    base = f"{PREFIX}:{{deployment}}"
    slots = f"{base}:slots"
    """Sorted set: ``<account>/<session>`` -> the time (ms) its lease runs out. A session
    holds one from minting (or from its offer, when it queued) until it ends."""
    queue = f"{base}:queue"
    """Sorted set: queued session ids by arrival number (strict FIFO)."""
    queue_seq = f"{base}:queue:seq"
    """String (integer): the last arrival number given."""
    queue_seen = f"{base}:queue:seen"
    """Sorted set: queued session ids by when their client was last heard from (ms)."""
    tickets = f"{base}:tickets"
    """Hash: queued or offered session id -> its ticket (JSON: account, user, offer_by)."""
    queue_users = f"{base}:queue:users"
    """Hash: ``<account>/<user_id>`` -> the session id holding that end user's place."""
    admissions = f"{base}:admissions"
    """List: times (ms) of the latest admissions, newest first, for the wait estimate."""
    nodes = f"{base}:nodes"
    """Sorted set: the running ``rapport serve`` processes (:class:`engine.nodes.Node`,
    msgspec JSON) -> the time (ms) their heartbeat runs out. Read whole, it is the live
    nodes once the expired are dropped: no scan of the keyspace."""
    vectors = f"{base}:vectors"
    """String: the vector store the deployment's documents were first indexed into
    (:attr:`engine.nodes.Node.vectors`), written once by the first node to index."""


QUEUE_EVENTS = f"{PREFIX}:queue:events"
"""Pub/sub channel: the waiting room moved (sessions admitted, places changed)."""


def rate_window(policy: str, partition: str) -> str:
    """List: the times of one client IP's hits in a rate-limit window, newest first."""
    return f"{PREFIX}:rate:{policy}:{_segment(partition)}"


USER_EMAILS = f"{PREFIX}:user_emails"
"""Hash: dashboard user email (lowercase) -> ``<account>/<user id>``. Emails are unique in
the deployment, so a sign-in (``{email, password}``) finds its account without naming it;
this key has no hash tag, its own cluster slot, like :data:`ACCOUNT_NAMES`."""


def signin(digest: str) -> str:
    """Hash: one browser session, found by the SHA-256 of its cookie (:mod:`engine.signin`):
    user, account, role, CSRF token, created, last seen. Untagged: the cookie names no account."""
    return f"{PREFIX}:signin:{digest}"


def password_link(digest: str) -> str:
    """String: ``<account>/<user id>`` of one set-password link, found by the SHA-256 of its
    token (:mod:`engine.users`); expires with the link."""
    return f"{PREFIX}:pwlink:{digest}"


def api_key(lookup: str) -> str:
    """Hash of one issued key, found by its public lookup prefix: account, slot, digest."""
    return f"{PREFIX}:apikey:{lookup}"


class AccountKeys:
    """The keys of one account, all in the account's cluster slot."""

    __slots__ = ("account_id", "base")

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.base = f"{PREFIX}:{{acct:{account_id}}}"

    @property
    def account(self) -> str:
        """String: the account record (msgspec JSON)."""
        return f"{self.base}:account"

    @property
    def key_slots(self) -> str:
        """Hash: slot name -> lookup prefix of the key issued in that slot."""
        return f"{self.base}:keyslots"

    @property
    def audit(self) -> str:
        """Stream: the account's append-only audit log (:mod:`engine.audit`), trimmed to
        about :data:`engine.audit.MAX_ENTRIES`; one field ``e`` holding an entry's JSON."""
        return f"{self.base}:audit"

    @property
    def users(self) -> str:
        """Hash: dashboard user id -> its record (:class:`engine.users.User`, msgspec JSON).
        Not ``:users``: that is :attr:`memory_users`, a sorted set that every turn writes."""
        return f"{self.base}:dashboard_users"

    def user_signins(self, user_id: str) -> str:
        """Set: the digests of one dashboard user's browser sessions, so that all of them can
        be ended at once (sign out everywhere, user disabled, password changed)."""
        return f"{self.base}:dashboard_user:{_segment(user_id)}:signins"

    @property
    def usage(self) -> str:
        """Hash: consumed knowledge units and stored bytes."""
        return f"{self.base}:usage"

    def activity(self, day: str) -> str:
        """Hash: the account's counters of one UTC day (``YYYY-MM-DD``) for the dashboard's
        Usage page (:mod:`engine.usage`): ``turns`` (turns that spent a request) and
        ``closed:<code>`` (sessions ended with that close code), each counted by the script
        that commits the turn or ends the session; expires about :data:`engine.usage.KEEP_SECONDS`
        after that day."""
        return f"{self.base}:activity:{day}"

    @property
    def balance(self) -> str:
        """String (integer): requests the account may still spend on replies."""
        return f"{self.base}:balance"

    def idempotency(self, key_digest: str) -> str:
        """String: the stored outcome of one Idempotency-Key (SHA-256 of the caller's key)."""
        return f"{self.base}:idem:{key_digest}"

    def memory_turns(self, user_id: str) -> str:
        """List: one end user's turns, oldest first (msgspec JSON each)."""
        return f"{self.base}:user:{_segment(user_id)}:turns"

    def memory_meta(self, user_id: str) -> str:
        """Hash: one end user's summary, known facts and byte count of the turns list."""
        return f"{self.base}:user:{_segment(user_id)}:meta"

    @property
    def memory_users(self) -> str:
        """Sorted set: the account's end users who have a memory (user_id as given) -> the
        time (ms) of their latest turn. Kept by the script that appends a turn, so it is
        exact; a user leaves it when forgotten (:mod:`engine.memory`)."""
        return f"{self.base}:users"

    def doc(self, external_id: str) -> str:
        """String: one knowledge document's record (msgspec JSON)."""
        return f"{self.base}:doc:{_segment(external_id)}"

    def doc_content(self, external_id: str) -> str:
        """String: a document's content (base64) until a worker has processed it."""
        return f"{self.base}:doc:{_segment(external_id)}:content"

    def doc_personas(self, external_id: str) -> str:
        """Set: ids of the personas that have this document active."""
        return f"{self.base}:doc:{_segment(external_id)}:personas"

    @property
    def docs(self) -> str:
        """Hash: external_id -> the document's listing row (msgspec JSON)."""
        return f"{self.base}:docs"

    @property
    def docs_version(self) -> str:
        """String (integer): bumped by every change to ``docs``, so caches know to reload."""
        return f"{self.base}:docs:version"

    def persona_docs(self, persona_id: str) -> str:
        """Set: external_ids active for one persona."""
        return f"{self.base}:persona:{persona_id}:docs"

    def persona_docs_version(self, persona_id: str) -> str:
        """String (integer): bumped by every change to ``persona_docs``, so caches of what
        a persona's knowledge holds (its starter prompts, kb.prompts) know to reload."""
        return f"{self.base}:persona:{persona_id}:docs:version"

    @property
    def personas(self) -> str:
        """Sorted set: persona ids by creation time (for listing)."""
        return f"{self.base}:personas"

    def persona_media(self, persona_id: str) -> str:
        """Hash: media id -> one of the persona's media records (msgspec JSON)."""
        return f"{self.base}:persona:{persona_id}:media"

    def persona_media_content(self, persona_id: str, media_id: str) -> str:
        """String: a media file's bytes (base64)."""
        return f"{self.base}:persona:{persona_id}:media:{media_id}"

    @property
    def persona_names(self) -> str:
        """Hash: a persona's name as :func:`engine.personas.name_key` folds it -> persona id
        (names are unique per account, compared folded). Written by older versions keyed by
        the name as spelt; :attr:`persona_names_version` tells which."""
        return f"{self.base}:persona_names"

    @property
    def persona_names_version(self) -> str:
        """String: the rules :attr:`persona_names` is keyed by
        (:data:`engine.personas.NAMES_VERSION`); absent in an account whose hash predates
        ``name_key``, which is then rebuilt from its personas at its next name change."""
        return f"{self.base}:persona_names_version"

    def persona(self, persona_id: str) -> str:
        """String: one persona record (msgspec JSON)."""
        return f"{self.base}:persona:{persona_id}"

    def rate_window(self, policy: str, partition: str) -> str:
        """List: the times of the hits of one key or account in a rate-limit window."""
        return f"{self.base}:rate:{policy}:{_segment(partition)}"

    def session(self, session_id: str) -> str:
        """Hash: one live session. ``record`` (msgspec JSON of what never changes, the
        token's digest among it), ``used`` (billing units spent), ``seq`` (its last event's
        number), ``connected`` (epoch ms of the first connect; absent until then), ``owner``
        (the connection holding its socket), ``gone`` (epoch ms the owner's socket went
        away; absent while connected), ``ended`` (the close code, once ended), ``revoked``
        (ended because the API key slot that minted it, ``record.key_slot``, was disabled
        or regenerated)."""
        return f"{self.base}:session:{_segment(session_id)}"

    @property
    def sessions(self) -> str:
        """Sorted set: ids of the account's sessions not yet ended, by creation time (ms)."""
        return f"{self.base}:sessions"

    @property
    def session_slots(self) -> str:
        """Sorted set: ids of the sessions holding one of the account's concurrent-session
        slots -> the time (ms) its lease runs out (``max_concurrent_sessions``)."""
        return f"{self.base}:session_slots"

    def session_events(self, session_id: str) -> str:
        """Stream: a session's server events for resume; entry id ``<seq>-1``, one field
        ``e`` holding the event's JSON."""
        return f"{self.session(session_id)}:events"

    def session_left(self, session_id: str) -> str:
        """String: the token digest of a queued session given up (left, evicted, taken
        over) and deleted, kept a while so that its genuine ticket is told its place is
        gone (404), and a wrong one is refused alike whether or not the place existed."""
        return f"{self.session(session_id)}:left"


def _segment(value: str) -> str:
    """A caller's id as one key segment: ':' and other specials are %-escaped, so no id can
    reach into another's keys."""
    return quote(value, safe="")
