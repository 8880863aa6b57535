"""Seed 002's knowledge endpoints against a real server: the seed's examples as printed
(``tests/seed_002.py``), pages keyed by title, training data, review, prompts, and an NDJSON
stream of 10,000 pages held in flat memory."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kb.pages import page_id
from tests.conftest import Server
from tests.seed_002 import examples

SEED = examples()


def shaped_like(body: dict, endpoint: str) -> None:
    """The seed's response keys are all there, with its status."""
    expected = SEED[endpoint]["response"]
    assert expected.keys() <= body.keys(), body
    assert body["status"] == "success"
    if "message" in expected:
        assert body["message"] == expected["message"]


def tenant(server: Server, name: str) -> httpx.Client:
    return server.client(timeout=60, headers={"X-Api-Key": server.new_tenant(name)})


def wait_ready(client: httpx.Client, external_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        doc = client.get(f"/api/knowledge/docs/by-external-id/{external_id}").json()
        if doc["processing_status"] in ("ready", "failed") or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def test_every_seed_example_runs_as_printed(server: Server) -> None:
    with tenant(server, "clone-kb-seed") as client:
        for endpoint in ("POST /api/kb/store-pages", "POST /api/kb/stream-pages",
                         "PUT /api/kb/training-data", "POST /api/kb/review-data"):  # fmt: skip
            method, path = endpoint.split()
            response = client.request(method, path, json=SEED[endpoint]["request"])
            assert response.status_code == 200, response.text
            shaped_like(response.json(), endpoint)
        listed = client.get("/api/kb/training-data")
        assert listed.status_code == 200
        shaped_like(listed.json(), "GET /api/kb/training-data")
        items = {item["id"]: item for item in listed.json()["training_data"]}
        # The seed's page (stored, then streamed again: the same page, one document).
        page = items[page_id("Page Title")]
        assert page["content"] == "Page content here" and page["title"] == "Page Title"
        assert page["metadata"] == {
            "author": "Author Name",
            "date": "2024-05-01",
            "stream_id": "stream123",
        }
        assert items["data1"]["content"] == "Updated training data content"
        assert {SEED["POST /api/kb/review-data"]["request"]["review_data"]["notes"][0]} <= set(
            next(i for i in items.values() if i["processing_status"] == "staged")["metadata"][
                "review_notes"
            ]
        )
        # DELETE /api/kb/training-data/{id}: the seed prints the path without its id.
        deleted = client.delete("/api/kb/training-data/data1")
        assert deleted.status_code == 200
        shaped_like(deleted.json(), "DELETE /api/kb/training-data/")
        assert client.delete("/api/kb/training-data/data1").status_code == 404
        # No document is active for the persona: nothing to suggest, and nothing invented.
        prompts = client.post(
            "/api/kb/auto-generate-prompts",
            json=SEED["POST /api/kb/auto-generate-prompts"]["request"],
        )
        assert prompts.status_code == 200, prompts.text
        shaped_like(prompts.json(), "POST /api/kb/auto-generate-prompts")
        assert prompts.json()["prompts"] == []


def test_a_page_stored_again_is_a_no_op_and_a_changed_one_an_update(server: Server) -> None:
    page = {"title": "Opening hours", "content": "We open at nine.", "metadata": {"v": 1}}
    with tenant(server, "clone-kb-pages") as client:

        def store(*pages: dict) -> list[dict]:
            response = client.post("/api/kb/store-pages", json={"pages": list(pages)})
            assert response.status_code == 200, response.text
            return response.json()["results"]

        assert [r["status"] for r in store(page)] == ["created"]
        first = wait_ready(client, page_id("Opening hours"))
        assert first["processing_status"] == "ready"
        assert [r["status"] for r in store(page)] == ["no_op"]
        # Spacing and case of the title do not make another page: the same document takes
        # the new spelling as its label.
        respelled = store({**page, "title": "Opening  HOURS"})
        assert respelled == [{"id": page_id("Opening hours"), "title": "Opening  HOURS",
                              "status": "updated"}]  # fmt: skip
        assert [r["status"] for r in store(page)] == ["updated"]
        # New metadata only: the record changes, nothing is embedded again.
        assert [r["status"] for r in store({**page, "metadata": {"v": 2}})] == ["updated"]
        again = client.get(f"/api/knowledge/docs/by-external-id/{page_id('Opening hours')}")
        assert again.json()["processing_status"] == "ready"
        # New content: an update, processed again.
        assert [r["status"] for r in store({**page, "content": "We open at ten."})] == ["updated"]
        assert wait_ready(client, page_id("Opening hours"))["processing_status"] == "ready"
        items = client.get("/api/kb/training-data").json()["training_data"]
        # The page as sent this time, its metadata included.
        assert [(i["content"], i["metadata"]) for i in items] == [("We open at ten.", {"v": 1})]


def test_training_data_is_the_text_as_indexed_and_only_the_callers(server: Server) -> None:
    paragraphs = [
        " ".join(f"Sentence {p}.{n} of the handbook says something useful." for n in range(12))
        for p in range(4)
    ]
    text = "\n\n".join(paragraphs)
    with tenant(server, "clone-kb-train") as client, tenant(server, "clone-kb-other") as other:
        body = {"training_data": {"id": "handbook", "content": text}}
        assert client.put("/api/kb/training-data", json=body).json()["result"] == "created"
        doc = wait_ready(client, "handbook")
        assert doc["processing_status"] == "ready"
        (item,) = client.get("/api/kb/training-data").json()["training_data"]
        # Rebuilt from several overlapping chunks: every sentence once, in order.
        assert item["content"].split() == text.split()
        assert other.get("/api/kb/training-data").json()["training_data"] == []
        assert other.delete("/api/kb/training-data/handbook").status_code == 404
        assert client.get("/api/kb/training-data", params={"limit": 0}).status_code == 400


def test_review_data_is_staged_with_its_notes(server: Server) -> None:
    with tenant(server, "clone-kb-review") as client:
        body = {"review_data": {"articles": ["Returns take 30 days.\nMore."], "notes": ["check"]}}
        response = client.post("/api/kb/review-data", json=body)
        assert response.status_code == 200
        (external_id,) = response.json()["ids"]
        staged = client.get("/api/knowledge/docs", params={"status": "staged"}).json()
        assert [d["external_id"] for d in staged["items"]] == [external_id]
        assert staged["items"][0]["label"] == "Returns take 30 days."
        assert client.post("/api/knowledge/docs/process").json()["queued"] == 1


def test_prompts_come_from_the_active_knowledge(server: Server) -> None:
    faq = (
        "How do I reset my router? Hold the reset button for ten seconds.\n\n"
        "Why is my router blinking red? The router has lost its connection to the internet."
    )
    with tenant(server, "clone-kb-prompts") as client:
        body = {"pages": [{"title": "Router help", "content": faq}]}
        assert client.post("/api/kb/store-pages", json=body).status_code == 200
        assert wait_ready(client, page_id("Router help"))["processing_status"] == "ready"
        persona = client.get("/api/personas/default").json()["id"]
        active = {"external_ids": [page_id("Router help")]}
        assert client.put(f"/api/personas/{persona}/knowledge", json=active).status_code == 200
        asked = {"data": {"topics": ["router problems"], "context": "home internet"}}
        response = client.post("/api/kb/auto-generate-prompts", json=asked)
        assert response.status_code == 200, response.text
        prompts = response.json()["prompts"]
        assert "How do I reset my router?" in prompts
        assert all(p.endswith("?") for p in prompts)
        # Nothing is about opera: what the knowledge does cover, its own questions.
        off = client.post("/api/kb/auto-generate-prompts", json={"data": {"topics": ["opera"]}})
        assert off.status_code == 200, off.text
        assert off.json()["prompts"][:2] == [
            "How do I reset my router?",
            "Why is my router blinking red?",
        ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/kb/store-pages", {"pages": []}),
        ("/api/kb/store-pages", {"pages": [{"title": "t"}]}),
        ("/api/kb/store-pages", {"pages": [{"title": "t", "content": "c", "extra": 1}]}),
        ("/api/kb/store-pages", {"pages": [{"title": "t", "content": "c", "metadata": []}]}),
        (
            "/api/kb/store-pages",
            {"pages": [{"title": "t", "content": "c", "metadata": {"x": "y" * 20_000}}]},
        ),
        ("/api/kb/stream-pages", {"stream_data": {"pages": [{"title": "t", "content": "c"}]}}),
        ("/api/kb/training-data", {"training_data": {"id": "bad id!", "content": "c"}}),
        ("/api/kb/review-data", {"review_data": {"articles": ["a"]}}),
        ("/api/kb/auto-generate-prompts", {"data": {"topics": []}}),
        ("/api/kb/store-pages", [1, 2]),
    ],
)
def test_bad_bodies_are_validation_failures(server: Server, path: str, body: object) -> None:
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        method = "PUT" if path.endswith("training-data") else "POST"
        response = client.request(method, path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "validation.failed"
        broken = client.request(
            method, path, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def duplex_post(
    server: Server, target: str, headers: dict[str, str], body: Iterator[bytes]
) -> tuple[int, list[bytes]]:
    """A chunked POST whose answer is read while its body is still being sent, as a client of
    a streamed exchange must: one thread sends, this one reads (RFC 9112 section 7.1 framing
    both ways)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
            "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip

    def send() -> None:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for piece in body:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        sender.join(60)
        sock.close()
    response, _, chunked = bytes(received).partition(b"\r\n\r\n")
    status = int(response.split(b" ", 2)[1])
    answer = bytearray()
    # Read by offset: a copy of the rest at every chunk is quadratic over 10,000 of them.
    at = 0
    while True:
        eol = chunked.index(b"\r\n", at)
        length = int(chunked[at:eol], 16)
        if length == 0:
            break
        answer += chunked[eol + 2 : eol + 2 + length]
        at = eol + 2 + length + 2  # past the chunk's data and its CRLF
    return status, bytes(answer).splitlines()


def test_an_ndjson_stream_of_ten_thousand_pages_in_flat_memory(server_on) -> None:
    # A node that only serves: the pages are queued for the processing nodes, and what is
    # measured is the stream's memory, not the embedding of 10,000 pages.
    server: Server = server_on(RAPPORT_KB_WORKER="false")
    key = server.new_tenant("clone-kb-stream")
    raised = server.cli_in_process(
        "accounts", "plan", "--account", "clone-kb-stream", "--knowledge-units", "1000000"
    )
    assert raised.returncode == 0, raised.stderr
    assert server.process is not None
    pid = server.process.pid
    marks: dict[int, int] = {}
    filler = "This page says one more thing about the product line. " * 60  # ~3.3 KB

    def lines() -> Iterator[bytes]:
        for n in range(10_000):
            if n in (2_000, 9_999):
                marks[n] = rss_kib(pid)
            page = {"title": f"Page {n}", "content": f"Fact number {n}. {filler}"}
            yield json.dumps(page).encode() + b"\n"
        yield b"this line is not json\n"

    headers = {"X-Api-Key": key, "Content-Type": "application/x-ndjson"}
    status, answer = duplex_post(server, "/api/kb/stream-pages?stream_id=bulk", headers, lines())
    assert status == 200
    *pages, bad, summary = [json.loads(line) for line in answer]
    assert len(pages) == 10_000, answer[-3:]
    assert len(pages) == 10_000 and {p["status"] for p in pages} == {"created"}
    assert pages[123] == {"id": page_id("Page 123"), "title": "Page 123", "status": "created"}
    assert bad["status"] == "failed" and bad["error"].startswith("line 10001:")
    assert summary == {
        "status": "success",
        "message": "Pages streamed successfully",
        "stream_id": "bulk",
        "pages": 10_000,
        "failed": 1,
    }
    # Queued for the processing nodes; this one processes nothing.
    with httpx.Client(base_url=server.base_url, headers={"X-Api-Key": key}) as client:
        doc = client.get(f"/api/knowledge/docs/by-external-id/{page_id('Page 5')}").json()
        assert doc["processing_status"] == "pending"
    # Flat: the server holds a line at a time. Between the 2,000th page and the 10,000th,
    # 26 MB of pages went by; a server that held the body would have grown by that much.
    assert marks[9_999] - marks[2_000] < 4 * 1024, marks


@pytest.mark.parametrize(
    "path", ["/api/kb/store-pages", "/api/v1/conversation", "/api/knowledge/docs"]
)
def test_a_body_nested_thousands_deep_is_a_validation_failure(server: Server, path: str) -> None:
    method = "PUT" if path == "/api/knowledge/docs" else "POST"
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        # Metadata is any JSON object: msgspec decodes it recursively, and runs out of stack.
        nested = b"[" * 50_000 + b"]" * 50_000
        deep = b'{"pages": [{"title": "t", "content": "c", "metadata": {"a": ' + nested + b"}}]}"
        # The knowledge batch skips its items' values as raw JSON: that recursed too.
        if path == "/api/knowledge/docs":
            deep = b'{"items": [' + nested + b"]}"
        response = client.request(
            method, path, content=deep, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text


def test_with_a_model_the_prompts_are_written_from_the_passages(llm_server: Server, fake) -> None:
    faq = "How do I reset my router? Hold the reset button for ten seconds."
    with tenant(llm_server, "clone-kb-model") as client:
        body = {"pages": [{"title": "Router help", "content": faq}]}
        assert client.post("/api/kb/store-pages", json=body).status_code == 200
        assert wait_ready(client, page_id("Router help"))["processing_status"] == "ready"
        persona = client.get("/api/personas/default").json()["id"]
        active = {"external_ids": [page_id("Router help")]}
        assert client.put(f"/api/personas/{persona}/knowledge", json=active).status_code == 200
        fake.configure(reply="1. How long do I hold the reset button?\n- Is it safe?\nThanks!")
        asked = {"data": {"topics": ["router reset"], "context": "home internet"}}
        response = client.post("/api/kb/auto-generate-prompts", json=asked)
        assert response.status_code == 200, response.text
        assert response.json()["prompts"] == [
            "How long do I hold the reset button?",
            "Is it safe?",
        ]
        sent = json.dumps(fake.calls()[-1]["messages"])
        assert "Hold the reset button for ten seconds." in sent and "router reset" in sent
        # A model that writes no question: the documents' own questions.
        fake.configure(reply="I cannot help with that.")
        again = client.post("/api/kb/auto-generate-prompts", json=asked)
        assert "How do I reset my router?" in again.json()["prompts"]
