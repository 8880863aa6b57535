"""The knowledge documents API end to end: upserts, no-ops, processing, listing, quotas,
deletion, tenant isolation, retrieval into replies, and recovery after a crash."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import httpx
import pytest

from engine.state import connect
from tests.conftest import Server, wait_until
from tests.test_firstrun import alive, embedded_redis_pid

DOCS = "/api/knowledge/docs"
DTO_FIELDS = {
    "external_id", "label", "original_file_name", "content_type", "content_size_bytes",
    "estimated_knowledge_units", "estimated_storage_units", "knowledge_units", "storage_units",
    "processing_status", "processed_at", "created_at", "error_message", "estimated_pages",
    "actual_pages", "has_extracted_text", "active_persona_count", "preview_image_url",
    "image_library", "link_library", "warnings",
}  # fmt: skip
REFUNDS = (
    "Refunds are paid back to the original card within five business days. "
    "Store credit is issued at once when the customer prefers it."
)
SHIPPING = "Orders ship from Lisbon. Standard delivery takes three days within the EU."


def doc_path(external_id: str) -> str:
    return f"{DOCS}/by-external-id/{external_id}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def state_of(server: Server):
    """A Redis client on the server's own state (embedded or external)."""
    url = server.env.get("RAPPORT_REDIS_URL")
    if url is None:
        settings = json.loads((server.data_dir / "redis" / "rapport.rdb.settings").read_text())
        url = f"unix://{settings['unixsocket']}"
    return connect(url, 2)


def activate(client: httpx.Client, external_ids: list[str]) -> httpx.Response:
    """Activate documents for the account's default persona, through the personas API."""
    persona = client.get("/api/personas/default").json()["id"]
    return client.post(f"/api/personas/{persona}/knowledge", json={"external_ids": external_ids})


def wait_ready(client: httpx.Client, external_id: str, timeout: float = 60) -> dict:
    found: list[dict] = []

    def done() -> bool:
        doc = client.get(doc_path(external_id)).json()
        if doc["processing_status"] in ("ready", "failed"):
            found.append(doc)
            return True
        return False

    wait_until(done, timeout, f"{external_id} to be processed")
    return found[0]


@pytest.fixture
def tenant(server: Server):
    name = unique("kb")
    key = server.new_tenant(name)
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        yield name, client


def test_batch_upsert_stages_and_repeats_are_free(tenant) -> None:
    _, client = tenant
    items = [
        {"external_id": "sku-001", "content": "Blue running shoes, size 10, $89."},
        {"external_id": "sku-002", "content": "Red trail runners, size 9, $109.", "label": "Red"},
    ]
    first = client.put(DOCS, json={"items": items})
    assert first.status_code == 200
    assert first.json() == {
        "created": 2, "updated": 0, "no_op": 0, "failed": 0,
        "results": [{"external_id": "sku-001", "status": "created"},
                    {"external_id": "sku-002", "status": "created"}],
    }  # fmt: skip
    doc = client.get(doc_path("sku-002")).json()
    assert set(doc) == DTO_FIELDS
    assert doc["processing_status"] == "staged" and doc["label"] == "Red"
    assert doc["knowledge_units"] is None and doc["estimated_knowledge_units"] == 1
    assert doc["content_type"] == "txt" and doc["has_extracted_text"] is False
    usage = client.get("/api/subscription/limits").json()["usage"]

    again = client.put(DOCS, json={"items": items}).json()
    assert (again["no_op"], again["created"], again["updated"]) == (2, 0, 0)
    assert client.get("/api/subscription/limits").json()["usage"] == usage, "no-op is free"

    changed = client.put(DOCS, json={"items": [{**items[0], "content": "Now $79."}]}).json()
    assert changed["results"] == [{"external_id": "sku-001", "status": "updated"}]


def test_single_upsert_queues_processes_and_skips_unchanged_content(tenant) -> None:
    _, client = tenant
    created = client.put(doc_path("refunds"), json={"content": REFUNDS, "label": "Refunds"})
    assert created.status_code == 201
    assert created.json() == {"external_id": "refunds", "status": "created", "re_embedded": True}
    ready = wait_ready(client, "refunds")
    assert ready["processing_status"] == "ready", ready["error_message"]
    assert ready["knowledge_units"] == 1 and ready["processed_at"] is not None
    usage = client.get("/api/subscription/limits").json()["usage"]
    assert usage["knowledgeUnitsUsed"] == 1

    same = client.put(doc_path("refunds"), json={"content": REFUNDS})
    assert same.status_code == 200
    assert same.json() == {"external_id": "refunds", "status": "no_op", "re_embedded": False}
    time.sleep(0.5)  # a re-embedding, had one been queued, would have finished by now
    assert client.get(doc_path("refunds")).json()["processed_at"] == ready["processed_at"]

    updated = client.put(doc_path("refunds"), json={"content": REFUNDS + " Fees are never kept."})
    assert updated.status_code == 200
    assert updated.json()["re_embedded"] is True
    again = wait_ready(client, "refunds")
    assert again["processed_at"] != ready["processed_at"]
    assert client.get("/api/subscription/limits").json()["usage"]["knowledgeUnitsUsed"] == 1


def test_process_queues_every_staged_document(tenant) -> None:
    _, client = tenant
    client.put(
        DOCS, json={"items": [{"external_id": f"d{i}", "content": SHIPPING} for i in range(3)]}
    )
    assert client.post(f"{DOCS}/process").json() == {"queued": 3}
    assert client.post(f"{DOCS}/process").json() == {"queued": 0}
    for i in range(3):
        assert wait_ready(client, f"d{i}")["processing_status"] == "ready"


def test_grounded_replies_see_only_ready_active_documents(server: Server, tenant) -> None:
    _, client = tenant
    client.put(DOCS, json={"items": [{"external_id": "refund-policy", "content": REFUNDS}]})
    activate(client, ["refund-policy"])
    question = {"user_id": "u", "message": "How are refunds paid back?"}

    staged = client.post("/api/v1/conversation", json=question).json()
    assert staged["sources"] == [], "a staged document is not retrieved"

    client.post(f"{DOCS}/process")
    wait_ready(client, "refund-policy")
    answer = client.post("/api/v1/conversation", json=question).json()
    assert answer["sources"] == ["refund-policy"]
    assert "original card within five business days" in answer["reply"]
    assert client.get(doc_path("refund-policy")).json()["active_persona_count"] == 1

    unrelated = client.post(
        "/api/v1/conversation", json={"user_id": "u", "message": "Do you sell bicycles?"}
    ).json()
    assert unrelated["sources"] == [] and "don't have information" in unrelated["reply"]


def test_replacing_content_swaps_what_replies_quote(server: Server, tenant) -> None:
    _, client = tenant
    client.put(doc_path("policy"), json={"content": REFUNDS})
    wait_ready(client, "policy")
    activate(client, ["policy"])
    client.put(doc_path("policy"), json={"content": SHIPPING})
    wait_ready(client, "policy")
    reply = client.post(
        "/api/v1/conversation", json={"user_id": "u", "message": "How long does delivery take?"}
    ).json()
    assert "three days" in reply["reply"] and "refund" not in reply["reply"].lower()
    refunds = client.post(
        "/api/v1/conversation", json={"user_id": "u", "message": "How are refunds paid back?"}
    ).json()
    assert "original card" not in refunds["reply"], "old chunks are gone"


def test_delete_removes_the_document_its_chunks_and_activations(server: Server, tenant) -> None:
    _, client = tenant
    client.put(doc_path("gone"), json={"content": REFUNDS})
    wait_ready(client, "gone")
    activate(client, ["gone"])
    assert client.delete(doc_path("gone")).status_code == 204
    assert client.get(doc_path("gone")).status_code == 404
    assert client.delete(doc_path("gone")).status_code == 404
    assert client.get("/api/subscription/limits").json()["usage"]["knowledgeUnitsUsed"] == 0
    reply = client.post(
        "/api/v1/conversation", json={"user_id": "u", "message": "How are refunds paid back?"}
    ).json()
    assert reply["sources"] == []
    # Recreating it starts clean: not active for anyone.
    client.put(doc_path("gone"), json={"content": SHIPPING})
    assert client.get(doc_path("gone")).json()["active_persona_count"] == 0


def test_another_accounts_documents_do_not_exist(server: Server, tenant) -> None:
    _, client = tenant
    client.put(doc_path("secret"), json={"content": REFUNDS})
    wait_ready(client, "secret")
    other_name = unique("other")
    other = server.new_tenant(other_name)
    with server.client(headers={"X-Api-Key": other}) as stranger:
        assert stranger.get(doc_path("secret")).status_code == 404
        assert stranger.delete(doc_path("secret")).status_code == 404
        assert stranger.get(DOCS).json() == {"items": [], "total_count": 0}
        refused = activate(stranger, ["secret"])
        assert refused.status_code == 400 and "secret" in refused.json()["detail"]
        reply = stranger.post(
            "/api/v1/conversation", json={"user_id": "u", "message": "How are refunds paid back?"}
        ).json()
    assert reply["sources"] == []
    assert client.get(doc_path("secret")).status_code == 200


def test_an_over_quota_batch_writes_nothing(server: Server, tenant) -> None:
    name, client = tenant

    async def nearly_full() -> None:
        redis = state_of(server)
        account_id = await redis.hget("rapport:account_names", name)
        await redis.hset(f"rapport:{{acct:{account_id}}}:usage", "knowledge_units", 99_999)
        await redis.aclose()

    asyncio.run(nearly_full())
    items = [{"external_id": f"q{i}", "content": SHIPPING} for i in range(2)]
    refused = client.put(DOCS, json={"items": items})
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "knowledge.quota_exceeded"
    assert client.get(DOCS).json()["total_count"] == 0
    one = client.put(DOCS, json={"items": items[:1]})
    assert one.status_code == 200 and one.json()["created"] == 1


def test_listing_pages_sorts_filters_and_searches(tenant) -> None:
    _, client = tenant
    labels = ["Delta", "alpha", "Charlie", "bravo", "Echo"]
    items = [
        {"external_id": f"L{i}", "content": f"{label} " * (i + 1), "label": label}
        for i, label in enumerate(labels)
    ]
    client.put(DOCS, json={"items": items})
    client.put(doc_path("L0"), json={"content": "Delta now queued"})  # one pending/ready

    def ids(**params) -> list[str]:
        return [d["external_id"] for d in client.get(DOCS, params=params).json()["items"]]

    page = client.get(DOCS, params={"limit": 2}).json()
    assert page["total_count"] == 5 and len(page["items"]) == 2
    assert ids(sort_by="label", sort_dir="asc") == ["L1", "L3", "L2", "L0", "L4"]
    assert ids(sort_by="label", sort_dir="asc", limit=2, offset=2) == ["L2", "L0"]
    assert ids(sort_by="storage_units", sort_dir="desc")[0] == "L4"
    assert ids(status="staged", sort_by="label", sort_dir="asc") == ["L1", "L3", "L2", "L4"]
    assert ids(search="RAV") == ["L3"]
    assert ids(external_id="L2") == ["L2"] and ids(external_id="nope") == []
    # Sort orders are cached per documents version: a write must show in the next list.
    assert client.patch(doc_path("L4"), json={"label": "aardvark"}).status_code == 200
    assert ids(sort_by="label", sort_dir="asc") == ["L4", "L1", "L3", "L2", "L0"]
    client.delete(doc_path("L1"))
    assert ids(sort_by="label", sort_dir="asc") == ["L4", "L3", "L2", "L0"]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"sort_by": "size"}, {"sort_dir": "up"},
     {"status": "done"}, {"limit": "ten"}, {"colour": "blue"}],
)  # fmt: skip
def test_bad_list_parameters_are_validation_failed(tenant, params: dict) -> None:
    _, client = tenant
    response = client.get(DOCS, params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation.failed" and body["errors"]


def test_bad_documents_are_refused_or_reported(tenant) -> None:
    _, client = tenant
    assert client.get(doc_path("bad id!")).status_code == 400
    assert client.put(doc_path("x" * 129), json={"content": "c"}).status_code == 400
    assert client.put(doc_path("ok"), json={"label": "no content"}).status_code == 400
    assert client.put(doc_path("ok"), json={"content": "c", "extra": 1}).status_code == 400
    assert client.put(DOCS, json={"items": []}).status_code == 400
    assert (
        client.put(DOCS, json={"items": [{"external_id": "a", "content": "c"}] * 101}).status_code
        == 400
    )
    assert client.put(DOCS, json=[{"external_id": "a"}]).status_code == 400
    assert client.put(DOCS, content=b"{not json").status_code == 400
    mixed = client.put(
        DOCS,
        json={"items": [
            {"external_id": "good", "content": "Fine."},
            {"external_id": "bad id", "content": "x"},
            {"content": "no id"},
            {"external_id": "good", "content": "again"},
        ]},
    ).json()  # fmt: skip
    assert (mixed["created"], mixed["failed"]) == (1, 3)
    assert [r["status"] for r in mixed["results"]] == ["created", "failed", "failed", "failed"]
    assert all(r.get("error") for r in mixed["results"][1:])


def test_seed_004_kb_json_entries_are_accepted(server: Server, tenant) -> None:
    _, client = tenant
    entry = {
        "id": "faq-billing-1",
        "category": "support",
        "tags": ["billing", "how do I pay", "refund", "plan"],
        "text": "Payment is processed after order confirmation. If the issue is about refunds "
        "or disputed charges, collect context first and hand the case to a human.",
    }
    assert client.put(DOCS, json={"items": [entry]}).json()["created"] == 1
    assert client.get(doc_path("faq-billing-1")).json()["label"] == "support"
    client.post(f"{DOCS}/process")
    wait_ready(client, "faq-billing-1")
    activate(client, ["faq-billing-1"])
    reply = client.post(
        "/api/v1/conversation", json={"user_id": "u", "message": "How do I pay?"}
    ).json()
    assert reply["sources"] == ["faq-billing-1"]
    assert "Payment is processed after order confirmation." in reply["reply"]


def test_a_crash_while_documents_are_pending_loses_none(server_on) -> None:
    server = server_on(RAPPORT_KB_LEASE_SECONDS="2")
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        for i in range(6):
            assert (
                client.put(doc_path(f"c{i}"), json={"content": f"{SHIPPING} {i}"}).status_code
                == 201
            )
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)  # no shutdown: jobs queued and leased stay put
    server.process.wait(10)
    server.process = None
    server.start()
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        for i in range(6):
            assert wait_ready(client, f"c{i}")["processing_status"] == "ready"
        assert client.get(DOCS, params={"status": "ready"}).json()["total_count"] == 6
    # The restarted server joined the Redis its killed predecessor started; stopping it
    # stops that Redis too, rather than leaving it behind.
    redis_pid = embedded_redis_pid(server.data_dir)
    server.stop()
    wait_until(lambda: not alive(redis_pid), 15, "the embedded redis-server to stop")


def test_patch_curates_the_libraries_and_says_what_it_dropped(tenant) -> None:
    _, client = tenant
    client.put(doc_path("lib"), json={"content": SHIPPING, "label": "Old"})
    images = [
        {"url": "https://cdn.example.com/a.jpg", "description": "Front", "width": 640,
         "height": 480},
        {"url": "https://cdn.example.com/b.jpg", "is_primary": True},
        {"url": "https://cdn.example.com/c.jpg", "is_primary": True},
        {"url": "http://insecure.example.com/d.jpg"},
    ]  # fmt: skip
    links = [{"url": f"https://example.com/{i}"} for i in range(12)]
    response = client.patch(
        doc_path("lib"), json={"label": "New", "image_library": images, "link_library": links}
    )
    assert response.status_code == 200
    doc = response.json()
    assert doc["label"] == "New"
    assert [i["url"] for i in doc["image_library"]] == [i["url"] for i in images[:3]]
    assert [i["is_primary"] for i in doc["image_library"]] == [False, True, False]
    assert doc["image_library"][0]["width"] == 640
    assert all(i["source"] == "client" for i in doc["image_library"])
    assert doc["preview_image_url"] == "https://cdn.example.com/b.jpg"
    assert len(doc["link_library"]) == 10
    codes = sorted(w["code"] for w in doc["warnings"])
    assert (
        codes == ["library.entry_dropped", "library.primary_reassigned"] + ["library.truncated"] * 2
    )
    assert client.get(doc_path("lib")).json()["label"] == "New", "stored"
    # Fields left out stay; label null clears.
    cleared = client.patch(doc_path("lib"), json={"label": None}).json()
    assert cleared["label"] is None and len(cleared["link_library"]) == 10


@pytest.mark.parametrize(
    "body",
    [{"image_library": [{"url": "https://x", "description": "d" * 361}]},
     {"link_library": [{"url": "u" * 2049}]}, {"image_library": "x"}, {"colour": "red"},
     {"image_library": [{"url": "https://x", "width": -1}]}],
)  # fmt: skip
def test_bad_patches_change_nothing(tenant, body: dict) -> None:
    _, client = tenant
    client.put(doc_path("p"), json={"content": SHIPPING, "label": "Kept"})
    response = client.patch(doc_path("p"), json=body)
    assert response.status_code == 400 and response.json()["code"] == "validation.failed"
    assert client.get(doc_path("p")).json()["label"] == "Kept"
    assert client.patch(doc_path("missing"), json={"label": "x"}).status_code == 404


def test_kb_import_is_idempotent_and_resumable(server: Server, tmp_path) -> None:
    name = unique("import")
    key = server.new_tenant(name)
    seed_entries = [
        {"id": "faq-billing-1", "category": "support", "tags": ["billing", "how do I pay"],
         "text": "Payment is processed after order confirmation."},
        {"id": "faq-plan-basic", "category": "sales", "tags": ["basic", "starter plan"],
         "text": "Basic is the right entry plan for first rollout and standard workload."},
    ]  # fmt: skip
    entries = seed_entries + [{"id": f"gen-{i}", "text": f"Entry {i}."} for i in range(148)]
    first_half = tmp_path / "half.json"
    first_half.write_text(json.dumps(entries[:70]))
    everything = tmp_path / "kb.json"
    everything.write_text(json.dumps(entries))

    interrupted = server.cli("kb", "import", str(first_half), "--account", name)
    assert interrupted.returncode == 0, interrupted.stderr
    assert interrupted.stdout.strip() == "70 created, 0 updated, 0 no-op, 0 failed"
    resumed = server.cli("kb", "import", str(everything), "--account", name)
    assert resumed.stdout.strip() == "80 created, 0 updated, 70 no-op, 0 failed"
    assert "150/150" in resumed.stderr  # the progress bar reached the end
    again = server.cli("kb", "import", str(everything), "--account", name)
    assert again.stdout.strip() == "0 created, 0 updated, 150 no-op, 0 failed"

    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        assert client.get(DOCS).json()["total_count"] == 150
        assert wait_ready(client, "faq-plan-basic")["label"] == "sales"

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"id": "ok-1", "text": "Fine."}, {"id": "bad id", "text": "x"},
                                  {"text": "no id"}]))  # fmt: skip
    partly = server.cli("kb", "import", str(broken), "--account", name)
    assert partly.returncode == 1
    assert partly.stdout.strip() == "1 created, 0 updated, 0 no-op, 2 failed"
    not_json = tmp_path / "nope.json"
    not_json.write_text("{not json")
    assert server.cli("kb", "import", str(not_json), "--account", name).returncode == 2
    assert server.cli("kb", "import", str(everything), "--account", "nobody").returncode == 1


def test_a_large_single_document_gets_its_routes_body_limit(tenant) -> None:
    _, client = tenant
    # 1.2 MB of UTF-8: over the 1 MiB default body limit, within the route's own.
    big = client.put(doc_path("big"), json={"content": "é" * 600_000})
    assert big.status_code == 201, big.text
    too_many = client.put(doc_path("big"), json={"content": "a" * 1_000_001})
    assert too_many.status_code == 400 and too_many.json()["code"] == "validation.failed"
