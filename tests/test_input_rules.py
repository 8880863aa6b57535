"""Input that must not reach where it should not (issue 21, item 7), against a real
``rapport serve``: ids in paths, ``last_seq``, whole-string patterns and a trailing newline,
control, bidirectional and zero-width characters in user_ids and persona names, and tenant
text in the CLI's lists."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import typing
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import redis
from msgspec import inspect
from websockets.asyncio.client import connect

from api.app import OPERATIONS
from engine import keyspace
from tests.conftest import RedisServer, Server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Tenant(typing.NamedTuple):
    name: str
    client: httpx.Client
    persona_id: str
    session_id: str
    ticket: str


@pytest.fixture(scope="module")
def redis_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The server's Redis, where a test writes what the API would refuse (old records)."""
    running = RedisServer(tmp_path_factory.mktemp("rules-redis"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_store: RedisServer) -> Iterator[Server]:
    """Persona uploads and portraits are counted before their ids are read: out of the way."""
    env = {"RAPPORT_REDIS_URL": redis_store.url, "RAPPORT_PERSONA_UPLOADS_RPM": "1000000"}
    running = Server(tmp_path_factory.mktemp("rules") / "data", **env).start()
    yield running
    running.retire()


@pytest.fixture(scope="module")
def tenant(server: Server) -> Iterator[Tenant]:
    """An account whose default persona has a document active (so ``persona:<id>:docs``
    exists in Redis) and a live session."""
    name = unique("rules")
    key = server.new_tenant(name)
    with server.client(headers={"X-Api-Key": key}) as client:
        persona_id = client.get("/api/personas/default").json()["id"]
        doc = client.put("/api/knowledge/docs/by-external-id/doc1", json={"content": "Hello."})
        assert doc.status_code in (200, 201), doc.text
        active = client.put(
            f"/api/personas/{persona_id}/knowledge", json={"external_ids": ["doc1"]}
        )
        assert active.status_code == 200, active.text
        minted = client.post("/api/sessions", json={"user_id": "u-1", "mode": "chat"})
        assert minted.status_code == 201, minted.text
        session = minted.json()
        yield Tenant(name, client, persona_id, session["session_id"], session["token"])


# --- ids in paths ----------------------------------------------------------------------------


def in_path(value: str) -> str:
    """``value`` as one path segment: every reserved character and the dots escaped, so the
    server, not the client, decodes it (a client would drop a ``..`` segment)."""
    return quote(value, safe="").replace(".", "%2E")


OWN_IDS = {"persona_id", "media_id", "session_id", "project_id", "chat_id"}
"""Ids of Rapport's own records (and a project, the caller's account by id or name): one
that cannot be an id is 404 ``resource.not_found``, as one that does not exist."""
BAD_OWN_IDS = [":", "{", "\n", "x" * 300, "..", "a\x00b", "abc:docs"]
BAD_EXTERNAL_IDS = ["{", "doc1\n", "x" * 300, "a b"]
"""external_ids are the caller's names (a PUT creates one): a bad one is 400 naming it."""
BAD_USER_IDS = ["a\x00b", "a\r\nb", "a\u202eb", "a\u200bb", "x" * 300]
"""user_ids are the caller's too, and ':', '{' and '..' are fine in them; these are not, and
no user can have one: 404."""
SOCKETS_AND_TICKETS = {"/api/waiting-room/{session_id}"}
"""A ticket names its session; another id is the ticket's 401 (the socket's 4001)."""

ID_ROUTES = {(op.method, op.path) for op in OPERATIONS if "{" in op.path and not op.websocket}


def fill(path: str, tenant: Tenant, bad_param: str, bad: str) -> str:
    good = {
        "persona_id": tenant.persona_id,
        "media_id": "abc123",
        "external_id": "doc1",
        "project_id": tenant.name,
        "session_id": tenant.session_id,
        "chat_id": "chat_dS0x",
        "user_id": "u-1",
        "slot": "primary",
    }
    values = {name: in_path(bad) if name == bad_param else value for name, value in good.items()}
    return re.sub(r"{([^}:]+)(?::[^}]+)?}", lambda m: values[m[1]], path)


def cases() -> Iterator[Any]:
    for method, path in sorted(ID_ROUTES):
        for param in re.findall(r"{([^}:]+)", path):
            bads = (
                BAD_EXTERNAL_IDS if param == "external_id"
                else BAD_USER_IDS if param == "user_id"
                else BAD_OWN_IDS
            )  # fmt: skip
            for bad in bads:
                yield pytest.param(
                    method, path, param, bad, id=f"{method} {path} {param}={bad!r:.12}"
                )


def test_every_route_with_an_id_in_its_path_is_covered() -> None:
    params = {p for _, path in ID_ROUTES for p in re.findall(r"{([^}:]+)", path)}
    covered = OWN_IDS | {"external_id", "user_id", "slot"}
    assert params <= covered, "a new kind of path id: give it cases"


@pytest.mark.parametrize(("method", "path", "param", "bad"), list(cases()))
def test_a_path_id_that_cannot_be_one_is_refused_never_500(
    tenant: Tenant, method: str, path: str, param: str, bad: str
) -> None:
    url = fill(path, tenant, param, bad)
    if path in SOCKETS_AND_TICKETS:
        url += f"?ticket={quote(tenant.ticket, safe='')}"
    body = None if method in ("GET", "DELETE") else {}
    answer = tenant.client.request(method, url, json=body)
    if path in SOCKETS_AND_TICKETS:
        assert answer.status_code == 401, answer.text
    elif param == "external_id":
        assert answer.status_code == 400, answer.text
        assert "external_id" in answer.json()["errors"], answer.text
    elif path.startswith("/api/v1/"):
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"]["code"] == "not_found"
    else:
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "resource.not_found"


def test_a_persona_id_reaching_into_its_own_keys_is_404(tenant: Tenant) -> None:
    """The review's case: ``<id>:docs`` is a set of the same account, read as a persona."""
    for suffix in (":docs", ":media", "\n"):
        for method in ("GET", "PUT", "DELETE"):
            answer = tenant.client.request(
                method, f"/api/personas/{in_path(tenant.persona_id + suffix)}", json={}
            )
            assert answer.status_code == 404, (method, suffix, answer.text)
        knowledge = tenant.client.get(
            f"/api/personas/{in_path(tenant.persona_id + suffix)}/knowledge"
        )
        assert knowledge.status_code == 404, knowledge.text
    chosen = tenant.client.put(
        "/api/personas/default", json={"persona_id": f"{tenant.persona_id}:docs"}
    )
    assert chosen.status_code == 400 and "persona_id" in chosen.json()["errors"], chosen.text


# --- last_seq --------------------------------------------------------------------------------


async def test_a_bad_last_seq_gets_the_error_event_and_a_fresh_start(tenant: Tenant) -> None:
    for bad in ("²", "①", "٣", "-1", "1e3", " 1", "1" * 1000, "1" * 5000):
        minted = tenant.client.post("/api/sessions", json={"user_id": unique("u"), "mode": "chat"})
        assert minted.status_code == 201, minted.text
        url = minted.json()["ws_url"] + "&last_seq=" + quote(bad, safe="")
        try:
            async with connect(url, open_timeout=10, close_timeout=2) as socket:
                error = json.loads(await socket.recv())
                ready = json.loads(await socket.recv())
        finally:
            tenant.client.delete(f"/api/sessions/{minted.json()['session_id']}")
        # README, "Resume": refused in plain words, then a fresh start; never a 1011.
        assert (error["type"], error["code"], error["fatal"]) == (
            "error", "validation.failed", False,
        ), bad[:12]  # fmt: skip
        assert ready["type"] == "session.ready" and ready["resumed"] is False


# --- whole-string patterns -------------------------------------------------------------------

PACKAGES = ("api", "engine", "kb", "sessions", "loadtest")


def _msgspec_patterns(info: inspect.Type, seen: set[type], found: set[str]) -> None:
    match info:
        case inspect.StrType(pattern=pattern) if pattern:
            found.add(pattern)
        case (
            inspect.ListType()
            | inspect.SetType()
            | inspect.FrozenSetType()
            | inspect.VarTupleType()
        ):
            _msgspec_patterns(info.item_type, seen, found)
        case inspect.Metadata():
            _msgspec_patterns(info.type, seen, found)
        case inspect.TupleType():
            for item in info.item_types:
                _msgspec_patterns(item, seen, found)
        case inspect.DictType():
            _msgspec_patterns(info.key_type, seen, found)
            _msgspec_patterns(info.value_type, seen, found)
        case inspect.UnionType():
            for item in info.types:
                _msgspec_patterns(item, seen, found)
        case inspect.StructType() | inspect.DataclassType() | inspect.TypedDictType():
            if info.cls not in seen:
                seen.add(info.cls)
                for field in info.fields:
                    _msgspec_patterns(field.type, seen, found)


def whole_string_patterns() -> set[str]:
    """Every msgspec ``pattern`` in our packages' types, and every compiled regex anchored at
    both ends (line-by-line ones, MULTILINE, aside)."""
    found: set[str] = set()
    seen: set[type] = set()
    for package in PACKAGES:
        for module_info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            module = importlib.import_module(f"{package}.{module_info.name}")
            for value in vars(module).values():
                if isinstance(value, re.Pattern):
                    if (
                        value.pattern.startswith(("^", r"\A"))
                        and value.pattern.endswith(("$", r"\Z"))
                        and not value.flags & re.MULTILINE
                    ):
                        found.add(value.pattern)
                elif typing.get_origin(value) is typing.Annotated or (
                    isinstance(value, type) and issubclass(value, msgspec.Struct)
                ):
                    _msgspec_patterns(inspect.type_info(value), seen, found)
    return found


VALID = [
    "a1b2c3d4e5f6",  # an own id (engine.ids.OWN_ID)
    "Nora",  # a user_id, a persona name, an account name, an external_id, a request id
    "X-Name",  # a header name
    "rk_live_" + "a" * 44,  # an API key
    "host:8080",  # a Host header
    "1733572800000-0",  # an audit log cursor (a Redis stream id)
    "09:30",  # a clock time
    "pt-BR",  # a language tag
    "redis://h:6379/0",  # RAPPORT_REDIS_URL
    "http://chroma:8000",  # RAPPORT_CHROMA_URL, RAPPORT_LLM_BASE_URL
    "10.0.0.0/8",  # RAPPORT_FORWARDED_ALLOW_IPS
    "30s",  # a loadtest duration
]
"""Values, each of which some pattern accepts; every pattern must accept one of them."""
PATTERNS = sorted(whole_string_patterns())


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p[:40] for p in PATTERNS])
def test_every_pattern_refuses_a_trailing_newline(pattern: str) -> None:
    # msgspec searches, and re.match matches from the start only: "$" would match before a
    # last "\n", so a value with one would pass.
    accepted = [value for value in VALID if re.search(pattern, value)]
    assert accepted, f"give VALID a value {pattern!r} accepts"
    # One that takes spaces around its value by design (a loadtest duration) takes a
    # newline among them; a newline before anything else is still refused.
    tail = "\nx" if re.search(r"\\s\*(\$|\\Z)$", pattern) else "\n"
    for value in accepted:
        assert not re.search(pattern, value + tail), value


def test_a_trailing_newline_is_refused_over_http(tenant: Tenant) -> None:
    docs = "/api/knowledge/docs"
    batch = tenant.client.put(docs, json={"items": [{"external_id": "x\n", "content": "c"}]})
    [result] = batch.json()["results"]  # a batch reports each item
    assert result["status"] == "failed" and "external_id" in result["error"], batch.text
    one = tenant.client.put(f"{docs}/by-external-id/x%0A", json={"content": "c"})
    assert one.status_code == 400 and "external_id" in one.json()["errors"], one.text
    assert tenant.client.get(f"{docs}/by-external-id/x%0A").status_code == 400
    header = tenant.client.post(
        "/api/personas", json={"name": unique("h"), "headers": {"X-A": "v\n"}}
    )
    assert header.status_code == 400, header.text


# --- user_ids and persona names --------------------------------------------------------------

UNSEEN = ["a\x00b", "a\r\nb", "a\u202eb", "a\u200bb", "a\x1b[31mb", "\u2066a"]


@pytest.mark.parametrize("user_id", UNSEEN, ids=repr)
def test_a_user_id_with_a_control_is_400_naming_it_everywhere_it_enters(
    tenant: Tenant, user_id: str
) -> None:
    client = tenant.client
    spoken = client.post("/api/v1/conversation", json={"user_id": user_id, "message": "Hi"})
    assert spoken.status_code == 400, spoken.text
    assert spoken.json()["detail"]["message"].startswith("user_id"), spoken.text
    minted = client.post("/api/sessions", json={"user_id": user_id, "mode": "chat"})
    assert minted.status_code == 400 and "user_id" in minted.json()["errors"], minted.text
    chatted = client.post(
        "/api/kb/v2/chat", json={"chat_data": {"user_id": user_id, "message": "Hi"}}
    )
    assert chatted.status_code == 400, chatted.text
    assert "chat_data.user_id" in chatted.json()["errors"], chatted.text
    assert client.get(f"/api/v1/users/{in_path(user_id)}/history").status_code == 404
    # Without it, in any script and with any punctuation, it is a user_id like another.
    plain = "".join(c for c in user_id if c.isprintable()) + " Zoë ☺ :{..}"
    assert client.get(f"/api/v1/users/{in_path(plain)}/history").status_code == 200


@pytest.mark.parametrize(
    "name",
    ["No\x00ra", "Nora\r\n", "Nora\u202e", "\u2067Nora", "\u200b", "\u200b\u00ad", "   "],
    ids=repr,
)
def test_a_persona_name_with_a_control_is_400_naming_it(tenant: Tenant, name: str) -> None:
    answer = tenant.client.post("/api/personas", json={"name": name})
    assert answer.status_code == 400 and "name" in answer.json()["errors"], answer.text


def test_names_that_read_the_same_are_one_name(tenant: Tenant) -> None:
    client = tenant.client
    base = unique("Nora")
    first = client.post("/api/personas", json={"name": base})
    assert first.status_code == 201, first.text
    lookalikes = [
        base + "\u200b",  # zero-width space
        "\ufeff" + base,  # BOM
        base.upper(),  # case
        base.replace("N", "\uff2e"),  # fullwidth N (NFKC)
        base.replace("o", "o\u00ad"),  # soft hyphen
    ]
    for name in lookalikes:
        again = client.post("/api/personas", json={"name": name})
        assert again.status_code == 409, (name, again.text)
        assert again.json()["code"] == "resource.conflict"
    other = client.post("/api/personas", json={"name": unique("Sam")}).json()
    renamed = client.put(f"/api/personas/{other['id']}", json={"name": base + "\u200d"})
    assert renamed.status_code == 409, renamed.text
    # Its own name in another spelling is no conflict, and the old spelling is freed.
    respelled = client.put(f"/api/personas/{first.json()['id']}", json={"name": base.upper()})
    assert respelled.status_code == 200, respelled.text
    assert client.delete(f"/api/personas/{first.json()['id']}").status_code == 204
    assert client.post("/api/personas", json={"name": base + "\u200b"}).status_code == 201


# --- tenant text in the CLI's lists ----------------------------------------------------------

EVIL = "\x1b[31mred\n0000  fake-row"


def test_the_cli_lists_print_tenant_text_escaped(server: Server, redis_store: RedisServer) -> None:
    """Records written before these rules (or by any other way into Redis) still print as
    text: no terminal escape runs, no newline forges a row."""
    running = server
    name = unique("cli")
    # Setup in this process (the CLI's ``main``); the listings below run as subprocesses.
    created = running.cli_in_process("accounts", "create", name)
    assert created.returncode == 0, created.stderr
    account_id = created.stdout.split(" with id ")[1].split()[0]
    issued = running.cli_in_process("keys", "create", "--account", name)
    key = next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))
    with running.client(headers={"X-Api-Key": key}) as client:
        persona_id = client.get("/api/personas/default").json()["id"]
        minted = client.post("/api/sessions", json={"user_id": "u-cli", "mode": "chat"}).json()
    keys = keyspace.AccountKeys(account_id)
    store = redis.Redis.from_url(redis_store.url)
    try:
        persona = json.loads(store.get(keys.persona(persona_id)))
        store.set(keys.persona(persona_id), json.dumps({**persona, "name": EVIL}))
        session_key = keys.session(minted["session_id"])
        record = json.loads(store.hget(session_key, "record"))
        store.hset(session_key, "record", json.dumps({**record, "user_id": EVIL}))
    finally:
        store.close()
    for command in (("accounts", "list"), ("sessions", "list")):
        listed = running.cli(*command)
        assert listed.returncode == 0, listed.stderr
        assert "\x1b" not in listed.stdout, command
        assert "\\x1b[31mred\\n0000  fake-row" in listed.stdout, (command, listed.stdout)
        assert not any(line.startswith("0000") for line in listed.stdout.splitlines())


def test_names_stored_as_spelt_before_folding_are_reindexed(
    server: Server, redis_store: RedisServer
) -> None:
    """An account whose names hash predates ``name_key`` (keyed by each name as spelt, no
    version marker) is rebuilt at its next name change: a lookalike of an old name is 409, and
    deleting the old persona frees its name and leaves nothing of it in the hash."""
    name = unique("old-names")
    created = server.cli_in_process("accounts", "create", name)
    assert created.returncode == 0, created.stderr
    account_id = created.stdout.split(" with id ")[1].split()[0]
    issued = server.cli_in_process("keys", "create", "--account", name)
    key = next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))
    base = unique("Nora")
    with server.client(headers={"X-Api-Key": key}) as client:
        old = client.post("/api/personas", json={"name": base})
        assert old.status_code == 201, old.text
        keys = keyspace.AccountKeys(account_id)
        store = redis.Redis.from_url(redis_store.url)
        try:
            # What the code before name_key stored: HSETNX names <name as given> <id>.
            ids = store.zrange(keys.personas, 0, -1)
            personas = [
                json.loads(raw) for raw in store.mget([keys.persona(i.decode()) for i in ids])
            ]
            store.delete(keys.persona_names, keys.persona_names_version)
            store.hset(keys.persona_names, mapping={p["name"]: p["id"] for p in personas})
            for lookalike in (base.lower(), base + "\u200b"):
                again = client.post("/api/personas", json={"name": lookalike})
                assert again.status_code == 409, (lookalike, again.text)
            assert client.delete(f"/api/personas/{old.json()['id']}").status_code == 204
            assert old.json()["id"].encode() not in store.hvals(keys.persona_names)
            freed = client.post("/api/personas", json={"name": base.lower() + "\u200b"})
            assert freed.status_code == 201, freed.text
        finally:
            store.close()
