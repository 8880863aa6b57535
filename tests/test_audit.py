"""The account's audit log (issue 23, DESIGN.md "Operator dashboard and restricted routes"):
every change made with the CLI or through the API writes one entry with its actor, action,
target and IP, read newest first and paged; no entry holds a key; and the key slots'
records show label, last four, creator and last use, never the key. Against a real
``rapport serve`` on a real redis-server, and the real CLI."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterator

import msgspec
import pytest

from engine import keyspace
from engine.accounts import AccountStore
from engine.apikeys import KeyStore, Principal, SlotState
from engine.audit import AuditEntry, AuditLog, AuditQuery, actor_of
from engine.firstrun import DEMO_ACCOUNT
from engine.state import connect
from tests.conftest import RedisServer, Server, wait_until


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = RedisServer(tmp_path_factory.mktemp("audit-redis"))
    redis.start()
    yield redis.url
    redis.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("audit") / "data", RAPPORT_REDIS_URL=redis_url).start()
    yield running
    running.retire()


def run(redis_url: str, work):
    async def go():
        redis = connect(redis_url, 2)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def entries(redis_url: str, account_id: str) -> list[AuditEntry]:
    """Every entry of the account, newest first, read a page of 3 at a time."""
    found: list[AuditEntry] = []
    query = AuditQuery(limit=3)
    while True:
        page = run(redis_url, lambda r, q=query: AuditLog(r).page(account_id, q))
        found += page.items
        if page.next_before is None:
            return found
        query = AuditQuery(limit=3, before=page.next_before)


def raw_stream(redis_url: str, account_id: str) -> str:
    """The whole stream as stored, to search for what must never be in it."""
    stream = keyspace.AccountKeys(account_id).audit
    return json.dumps(run(redis_url, lambda r: r.xrange(stream)))


def new_account(server: Server) -> tuple[str, str, str]:
    """(name, id, primary key) of a fresh account made with the CLI: its ``main``, run in
    this process (setup for most tests here; the subprocess is ~0.7 s a command)."""
    name = f"audit-{uuid.uuid4().hex[:8]}"
    created = server.cli_in_process("accounts", "create", name)
    assert created.returncode == 0, created.stderr
    account_id = created.stdout.split(" with id ")[1].split()[0]
    issued = server.cli_in_process("keys", "create", "--account", name, "--label", "shop backend")
    assert issued.returncode == 0, issued.stderr
    key = next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))
    return name, account_id, key


def new_instance(name: str) -> dict:
    return {"instance_data": {"name": name, "description": "d", "configuration": {}}}


def summary(found: list[AuditEntry]) -> list[tuple[str, str, str, str | None]]:
    return [(e.actor, e.action, e.target, e.ip) for e in found]


def test_cli_changes_are_audited_newest_first(server: Server, redis_url: str) -> None:
    name, account_id, primary = new_account(server)
    secondary_out = server.cli("keys", "create", "--account", name, "--slot", "secondary")
    for args in (
        ("keys", "disable", "--account", name, "--slot", "secondary"),
        ("keys", "enable", "--account", name, "--slot", "secondary"),
        ("keys", "regenerate", "--account", name, "--slot", "secondary"),
        ("accounts", "plan", "--account", name),  # only shows: no entry
        ("accounts", "plan", "--account", name, "--max-concurrent-sessions", "3"),
        ("accounts", "origins", "add", "--account", name, "https://shop.example"),
        ("accounts", "origins", "add", "--account", name, "https://shop.example"),  # no change
        ("accounts", "origins", "list", "--account", name),
        ("accounts", "origins", "remove", "--account", name, "https://shop.example"),
    ):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    found = entries(redis_url, account_id)
    assert summary(found) == [
        ("cli", "settings.origins_changed", account_id, None),
        ("cli", "settings.origins_changed", account_id, None),
        ("cli", "settings.plan_changed", account_id, None),
        ("cli", "key.regenerated", "secondary", None),
        ("cli", "key.enabled", "secondary", None),
        ("cli", "key.disabled", "secondary", None),
        ("cli", "key.created", "secondary", None),
        ("cli", "key.created", "primary", None),
        ("cli", "account.created", name, None),
    ]
    assert found[0].detail == {"added": [], "removed": ["https://shop.example"]}
    assert found[1].detail == {"added": ["https://shop.example"], "removed": []}
    assert found[2].detail == {"max_concurrent_sessions": 3}
    ids = [e.id for e in found]
    assert len(set(ids)) == len(ids) and ids == sorted(ids, reverse=True)
    stored = raw_stream(redis_url, account_id)
    assert "rk_live_" not in stored and primary[8:] not in stored
    assert secondary_out.stdout.split()[-1][8:] not in stored


def test_api_changes_are_audited_with_the_slot_and_ip(server: Server, redis_url: str) -> None:
    _, account_id, key = new_account(server)
    before = {e.id for e in entries(redis_url, account_id)}
    doc = "/api/knowledge/docs/by-external-id/"
    with server.client(headers={"X-Api-Key": key}) as http:
        persona = http.post("/api/personas", json={"name": "Ada"}).json()["id"]
        calls: list[tuple[str, str, dict | list | None]] = [
            ("PATCH", f"/api/personas/{persona}", {"description": "x", "name": "Ada L"}),
            ("PUT", "/api/personas/default", {"persona_id": persona}),
            ("PUT", doc + "faq", {"content": "Opening hours are nine to five."}),
            ("PUT", doc + "faq", {"content": "Opening hours are ten to six."}),
            ("PUT", doc + "faq", {"content": "Opening hours are ten to six."}),  # no-op
            ("PATCH", doc + "faq", {"label": "FAQ"}),
            ("PUT", "/api/knowledge/docs", {"items": [
                {"external_id": "a", "content": "A."}, {"external_id": "b", "content": "B."}]}),
            ("POST", "/api/knowledge/docs/process", None),
            ("PUT", f"/api/personas/{persona}/knowledge", {"external_ids": ["a"]}),
            ("POST", f"/api/personas/{persona}/knowledge", {"external_ids": ["b"]}),
            ("DELETE", f"/api/personas/{persona}/knowledge/a", None),
            ("DELETE", doc + "b", None),
            ("PUT", "/api/kb/training-data", {"training_data": {"id": "t1", "content": "T."}}),
            ("DELETE", "/api/kb/training-data/t1", None),
            ("POST", "/api/instance", new_instance("Bo")),
        ]  # fmt: skip
        for method, path, body in calls:
            answer = http.request(method, path, json=body)
            assert answer.status_code < 300, (path, answer.text)
        instance = http.post(
            "/api/admin/instance",
            json=new_instance("Cy"),
        ).json()["instance_id"]
        assert http.request("DELETE", "/api/instance", json={"instance_id": instance}).is_success
        upload = http.post(
            "/api/knowledge/files",
            files={"file": ("notes.txt", b"Some notes.", "text/plain")},
            data={"external_id": "notes"},
        )
        assert upload.status_code == 201, upload.text
        http.put("/api/personas/default", json={"persona_id": persona})
    found = [e for e in entries(redis_url, account_id) if e.id not in before]
    ip = "127.0.0.1"
    actor = "key:primary"
    assert summary(found) == [
        (actor, "persona.default_changed", persona, ip),
        (actor, "document.created", "notes", ip),
        (actor, "persona.deleted", instance, ip),
        (actor, "persona.created", instance, ip),
        (actor, "persona.created", found[4].target, ip),
        (actor, "document.deleted", "t1", ip),
        (actor, "document.created", "t1", ip),
        (actor, "document.deleted", "b", ip),
        (actor, "persona.knowledge_changed", persona, ip),
        (actor, "persona.knowledge_changed", persona, ip),
        (actor, "persona.knowledge_changed", persona, ip),
        (actor, "documents.processed", "staged", ip),
        (actor, "document.created", "b", ip),
        (actor, "document.created", "a", ip),
        (actor, "document.updated", "faq", ip),
        (actor, "document.updated", "faq", ip),
        (actor, "document.created", "faq", ip),
        (actor, "persona.default_changed", persona, ip),
        (actor, "persona.updated", persona, ip),
        (actor, "persona.created", persona, ip),
    ]
    assert found[-2].detail == {"fields": ["name", "description"]}
    assert found[-1].detail == {"name": "Ada"}
    assert found[4].detail == {"name": "Bo"}
    assert found[11].detail == {"queued": 2}
    assert found[14].detail == {"fields": ["label"]}
    assert "rk_live_" not in raw_stream(redis_url, account_id)


def test_clone_page_routes_audit_each_document_changed(server: Server, redis_url: str) -> None:
    _, account_id, key = new_account(server)
    before = {e.id for e in entries(redis_url, account_id)}
    with server.client(headers={"X-Api-Key": key}) as http:
        pages = {"pages": [{"title": "One", "content": "1."}, {"title": "Two", "content": "2."}]}
        assert http.post("/api/kb/store-pages", json=pages).is_success
        assert http.post("/api/kb/store-pages", json=pages).is_success  # no-ops: no entries
        streamed = {
            "stream_data": {"stream_id": "s", "pages": [{"title": "Three", "content": "3."}]}
        }
        assert http.post("/api/kb/stream-pages", json=streamed).is_success
        lines = b'{"title": "Four", "content": "4."}\n'
        ndjson = http.post(
            "/api/kb/stream-pages?stream_id=s",
            content=lines,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert ndjson.is_success, ndjson.text
        review = {"review_data": {"articles": ["A review article."], "notes": []}}
        assert http.post("/api/kb/review-data", json=review).is_success
    found = [e for e in entries(redis_url, account_id) if e.id not in before]
    assert [(e.actor, e.action, e.ip) for e in found] == [
        ("key:primary", "document.created", "127.0.0.1")
    ] * 5
    assert len({e.target for e in found}) == 5


def test_the_first_starts_demo_account_is_audited(server: Server, redis_url: str) -> None:
    demo = run(redis_url, lambda r: AccountStore(r).resolve(DEMO_ACCOUNT))
    oldest = [(e.actor, e.action, e.target, e.ip) for e in entries(redis_url, demo.id)][-2:]
    assert oldest == [
        ("cli", "key.created", "primary", None),
        ("cli", "account.created", "demo", None),
    ]


def test_another_accounts_changes_never_appear(server: Server, redis_url: str) -> None:
    _, mine, _ = new_account(server)
    _, theirs, their_key = new_account(server)
    with server.client(headers={"X-Api-Key": their_key}) as http:
        assert http.post("/api/personas", json={"name": "Theirs"}).status_code == 201
    assert [e.action for e in entries(redis_url, mine)] == ["key.created", "account.created"]
    assert next(e.action for e in entries(redis_url, theirs)) == "persona.created"


def test_a_failed_audit_write_does_not_fail_the_change(server: Server, redis_url: str) -> None:
    _, account_id, key = new_account(server)
    stream = keyspace.AccountKeys(account_id).audit
    # A string where the stream should be: every XADD to it fails (WRONGTYPE).
    run(redis_url, lambda r: r.set(stream, "not a stream"))
    with server.client(headers={"X-Api-Key": key}) as http:
        created = http.post("/api/personas", json={"name": "Still made"})
        assert created.status_code == 201, created.text
        assert http.get(f"/api/personas/{created.json()['id']}").status_code == 200


def test_pages_are_bounded_and_cursors_checked(server: Server, redis_url: str) -> None:
    _, account_id, _ = new_account(server)
    first = run(redis_url, lambda r: AuditLog(r).page(account_id, AuditQuery(limit=1)))
    assert [e.action for e in first.items] == ["key.created"]
    rest = run(
        redis_url,
        lambda r: AuditLog(r).page(account_id, AuditQuery(limit=1, before=first.next_before)),
    )
    assert [e.action for e in rest.items] == ["account.created"] and rest.next_before is None
    for bad in ({"limit": 0}, {"limit": 201}, {"before": "+"}, {"before": "1-2-3"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, AuditQuery)


def slots(redis_url: str, account_id: str) -> dict[str, SlotState]:
    return {s.slot: s for s in run(redis_url, lambda r: KeyStore(r).slots(account_id))}


def test_key_records_show_label_last4_creator_and_last_use(server: Server, redis_url: str) -> None:
    name, account_id, key = new_account(server)
    shown = slots(redis_url, account_id)["primary"]
    assert shown.label == "shop backend"
    assert shown.hint == f"rk_live_…{key[-4:]}"
    assert shown.created_by == "cli" and shown.created_at
    assert shown.last_used is None and not shown.disabled
    assert key[8:] not in json.dumps(msgspec.to_builtins(shown))
    with server.client(headers={"X-Api-Key": key}) as http:
        assert http.get("/api/personas").status_code == 200
    wait_until(lambda: slots(redis_url, account_id)["primary"].last_used, 10, "last_used")
    used = slots(redis_url, account_id)["primary"].last_used
    assert used is not None and used.startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    # A conversation-path request (the pipelined lookup of /api/v1/) notes its use too.
    fresh = server.cli("keys", "create", "--account", name, "--slot", "secondary")
    second = fresh.stdout.split()[-1]
    assert slots(redis_url, account_id)["secondary"].last_used is None
    with server.client(headers={"X-Api-Key": second}) as http:
        http.post("/api/v1/conversation", json={})
    wait_until(lambda: slots(redis_url, account_id)["secondary"].last_used, 10, "v1 last_used")
    # Regenerating keeps the label; the list shows the new key's last four.
    again = server.cli("keys", "regenerate", "--account", name, "--slot", "primary")
    new_key = again.stdout.split()[-1]
    regenerated = slots(redis_url, account_id)["primary"]
    assert regenerated.label == "shop backend" and regenerated.hint.endswith(new_key[-4:])
    assert regenerated.last_used is None
    listed = server.cli("accounts", "list")
    assert f"rk_live_…{new_key[-4:]}" in listed.stdout and new_key[8:] not in listed.stdout


def png() -> bytes:
    """A 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_media_and_key_shaped_targets(server: Server, redis_url: str) -> None:
    _, account_id, key = new_account(server)
    before = {e.id for e in entries(redis_url, account_id)}
    with server.client(headers={"X-Api-Key": key}) as http:
        persona = http.post("/api/personas", json={"name": "Pic"}).json()["id"]
        added = http.post(
            f"/api/personas/{persona}/media", files={"file": ("p.png", png(), "image/png")}
        )
        assert added.status_code == 201, added.text
        media_id = added.json()["id"]
        assert http.delete(f"/api/personas/{persona}/media/{media_id}").status_code == 204
        # An external_id may be key-shaped (letters, digits, '_'): the log still holds no key.
        put = http.put(f"/api/knowledge/docs/by-external-id/{key}", json={"content": "K."})
        assert put.status_code == 201, put.text
    found = [e for e in entries(redis_url, account_id) if e.id not in before]
    assert [(e.action, e.target) for e in found] == [
        ("document.created", "[redacted]"),
        ("persona.media_deleted", persona),
        ("persona.media_added", persona),
        ("persona.created", persona),
    ]
    assert found[1].detail == found[2].detail == {"media_id": media_id}
    assert "rk_live_" not in raw_stream(redis_url, account_id)


def test_a_dashboard_user_is_named_by_id_and_a_key_by_slot() -> None:
    assert actor_of(Principal("a", None, user_id="u1", role="admin")) == "user:u1"
    assert actor_of(Principal("a", "secondary")) == "key:secondary"


def test_seed_003_project_paths_are_audited_as_persona_changes(
    server: Server, redis_url: str
) -> None:
    name, account_id, key = new_account(server)
    before = {e.id for e in entries(redis_url, account_id)}
    with server.client(headers={"X-Api-Key": key}) as http:
        made = http.post(f"/api/projects/{name}/personas", json={"name": "Proj"})
        assert made.status_code == 201, made.text
        persona = made.json()["id"]
        assert http.put(f"/api/projects/{name}/personas/{persona}", json={"name": "P2"}).is_success
        assert http.delete(f"/api/projects/{name}/personas/{persona}").status_code == 204
    found = [e for e in entries(redis_url, account_id) if e.id not in before]
    assert [(e.action, e.target) for e in found] == [
        ("persona.deleted", persona),
        ("persona.updated", persona),
        ("persona.created", persona),
    ]
