"""Issue 21's upload findings against a real server: ``stream-pages``' JSON body is bounded
like ``store-pages``' (413 from its declared length, or while counting a chunked one) while
NDJSON still streams; streamed pages count against KnowledgeUploadsRate as batches would; a
crafted .docx is refused or read without its tree. Memory is the server's own, from
``/proc/<pid>/status``: its peak (VmHWM, reset through ``/proc/<pid>/clear_refs``) over the
request, less its resident set before, with a generous bound."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.upload_memory import crafted_docx
from kb.pages import page_id
from tests.conftest import Server
from tests.test_clone_kb import duplex_post
from tests.test_extract import make_docx
from tests.test_knowledge import wait_ready

MIB = 1024 * 1024
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def status_kib(server: Server, field: str) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


class PeakGrowth:
    """How far the server's resident set rose above where it was, at its highest."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> PeakGrowth:
        assert self.server.process is not None
        self.before = status_kib(self.server, "VmRSS")
        # "5" resets the peak resident set (VmHWM) to the current one (proc(5), clear_refs).
        Path(f"/proc/{self.server.process.pid}/clear_refs").write_text("5")
        return self

    def __exit__(self, *_: object) -> None:
        self.bytes = (status_kib(self.server, "VmHWM") - self.before) * 1024


def raw_post(server: Server, target: str, head: dict[str, str], body: Iterator[bytes]) -> bytes:
    """Send a request's head and as much of ``body`` as the server takes, while reading its
    answer; the server may answer, and close, before the body is done."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{k}: {v}" for k, v in head.items())]  # fmt: skip

    def send() -> None:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            for piece in body:
                sock.sendall(piece)
        except OSError:
            pass  # answered and closed: the rest is not wanted

    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        # The server closed with the rest of the body unread, which resets the connection
        # (RFC 9112 section 9.6); what it answered before that has been read.
        pass
    finally:
        with contextlib.suppress(OSError):  # already closed by the server
            sock.shutdown(socket.SHUT_RDWR)  # a sender still blocked in sendall gets out
        sender.join(60)
        sock.close()
    return bytes(received)


def problem_code(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)["code"]


def stored(client: httpx.Client, title: str) -> bool:
    return client.get(f"/api/knowledge/docs/by-external-id/{page_id(title)}").status_code == 200


def stored_count(client: httpx.Client) -> int:
    return client.get("/api/kb/training-data").json()["total_count"]


def test_a_json_stream_body_is_bounded_like_store_pages(server_on) -> None:
    server: Server = server_on(RAPPORT_KB_WORKER="false")
    key = server.demo_key
    with server.client(headers={"X-Api-Key": key}) as client:
        kept = {"stream_data": {"stream_id": "s", "pages": [{"title": "Kept", "content": "c"}]}}
        assert client.post("/api/kb/stream-pages", json=kept).status_code == 200

        # Declared: refused before a byte of the body is read (the server would wait for it).
        head = {"X-Api-Key": key, "Content-Type": "application/json"}
        declared = raw_post(
            server, "/api/kb/stream-pages", {**head, "Content-Length": str(1 << 30)}, iter(())
        )
        assert problem_code(declared) == (413, "request.body_too_large")

        # Chunked: refused while counting, 16 MiB in; 300 MB sent, the server's peak stays
        # far below it (it held the whole body, twice over, before).
        prefix = b'{"stream_data": {"stream_id": "s", "pages": [{"title": "t", "content": "'
        piece = b"x" * MIB

        def chunked() -> Iterator[bytes]:
            for data in (prefix, *(piece for _ in range(300))):
                yield b"%x\r\n%s\r\n" % (len(data), data)
            yield b"0\r\n\r\n"

        with PeakGrowth(server) as growth:
            counted = raw_post(
                server, "/api/kb/stream-pages", {**head, "Transfer-Encoding": "chunked"}, chunked()
            )
        assert problem_code(counted) == (413, "request.body_too_large")
        assert growth.bytes < 150 * MIB, growth.bytes

        # NDJSON on the same route still takes a body longer than the JSON limit.
        filler = "A line of the page. " * 2_000  # 40 KB a page, 20 MB in all
        lines = (json.dumps({"title": f"Long {n}", "content": filler}).encode() + b"\n"
                 for n in range(500))  # fmt: skip
        ndjson = {"X-Api-Key": key, "Content-Type": "application/x-ndjson"}
        status, answer = duplex_post(server, "/api/kb/stream-pages?stream_id=long", ndjson, lines)
        assert status == 200
        assert json.loads(answer[-1])["pages"] == 500

        # Nothing stored before was lost.
        assert all(stored(client, title) for title in ("Kept", "Long 0", "Long 499"))
        assert stored_count(client) == 501


def test_streamed_pages_count_against_the_upload_rate(server_on) -> None:
    # Three uploads a minute: the request and pages 101-200 and 201-300 spend them; page
    # 301 is refused, and so is every page after it, unstored.
    server: Server = server_on(RAPPORT_KB_WORKER="false", RAPPORT_UPLOADS_RPM="3")
    key = server.demo_key
    lines = (json.dumps({"title": f"Page {n}", "content": f"Fact {n}."}).encode() + b"\n"
             for n in range(1, 351))  # fmt: skip
    headers = {"X-Api-Key": key, "Content-Type": "application/x-ndjson"}
    status, answer = duplex_post(server, "/api/kb/stream-pages?stream_id=s", headers, lines)
    assert status == 200
    *results, summary = [json.loads(line) for line in answer]
    assert [r["status"] for r in results] == ["created"] * 300 + ["failed"] * 50
    assert results[299]["id"] == page_id("Page 300")
    assert results[300]["error"].startswith("line 301: Too many requests (KnowledgeUploadsRate")
    assert (summary["pages"], summary["failed"]) == (300, 50)
    with server.client(headers={"X-Api-Key": key}) as client:
        assert stored_count(client) == 300 and stored(client, "Page 300")
        assert not stored(client, "Page 301")
        later = client.post("/api/kb/store-pages", json={"pages": [{"title": "t", "content": "c"}]})
        assert later.status_code == 429, "the stream spent the account's uploads"


def test_a_crafted_docx_is_read_without_its_tree(server_on) -> None:
    server: Server = server_on()
    with server.client(headers={"X-Api-Key": server.demo_key}, timeout=120) as client:

        def upload(name: str, data: bytes) -> httpx.Response:
            return client.post(
                "/api/knowledge/files",
                files={"file": (name, data, DOCX)},
                data={"external_id": name.removesuffix(".docx")},
            )

        normal = upload("normal.docx", make_docx())
        assert normal.status_code == 201, normal.text
        assert normal.json()["estimated_pages"] == 2
        ready = wait_ready(client, "normal")
        assert ready["processing_status"] == "ready", ready["error_message"]
        assert ready["actual_pages"] == 2

        # ~330 KB that unpack to 100 MiB of one-character paragraphs: 1.4-1.9 GB as a tree.
        # Refused from the archive's directory, over the 32 MiB that are parsed.
        bomb = crafted_docx(100)
        assert len(bomb) < 400_000
        with PeakGrowth(server) as growth:
            refused = upload("bomb.docx", bomb)
        assert refused.status_code == 413, refused.text
        assert refused.json()["code"] == "upload.file_too_large"
        assert growth.bytes < 475 * MIB, growth.bytes

        # Under that cap, it is parsed, streamed (~500 MB as a tree): 926 pages, too many.
        dense = crafted_docx(30)
        with PeakGrowth(server) as growth:
            counted = upload("dense.docx", dense)
        assert counted.status_code == 413, counted.text
        assert counted.json()["code"] == "upload.page_limit_exceeded"
        assert "has 926 pages" in counted.json()["detail"]  # every page counted
        assert growth.bytes < 150 * MIB, growth.bytes

        assert client.get("/api/knowledge/docs").json()["total_count"] == 1
