"""POST /api/knowledge/files: every supported type end to end with a real file, and every
upload error code of seed 000."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Server
from tests.test_extract import EXE, HTML, make_docx, make_pdf
from tests.test_knowledge import doc_path, wait_ready

FILES = "/api/knowledge/files"


@pytest.fixture
def client(server: Server):
    key = server.new_tenant(f"files-{uuid.uuid4().hex[:8]}")
    with server.client(headers={"X-Api-Key": key}, timeout=60) as http:
        yield http


def upload(client: httpx.Client, name: str, data: bytes, mime: str, **fields: str):
    return client.post(FILES, files={"file": (name, data, mime)}, data=fields)


CASES = {
    "txt": ("notes.txt", b"Returns are free for thirty days.", "text/plain", None, False),
    "md": ("guide.md", b"# Guide\n\nReturns are free for thirty days.", "text/markdown", None,
           False),
    "html": ("returns.html", HTML.encode(), "text/html", 1, True),
    "pdf": ("spec.pdf", make_pdf(["Aurora X1 headphones.", "Battery lasts 30 hours."]),
            "application/pdf", 2, True),
    "docx": ("spec.docx", make_docx(),
             "application/vnd.openxmlformats-officedocument.wordprocessingml.document", 2, True),
}  # fmt: skip


@pytest.mark.parametrize("kind", CASES)
def test_each_type_is_processed_end_to_end(client: httpx.Client, kind: str) -> None:
    name, data, mime, pages, extracted = CASES[kind]
    response = upload(client, name, data, mime, external_id=f"file-{kind}", label=kind.upper())
    assert response.status_code == 201, response.text
    accepted = response.json()
    assert accepted["external_id"] == f"file-{kind}" and accepted["label"] == kind.upper()
    assert accepted["original_file_name"] == name and accepted["content_type"] == kind
    assert accepted["content_size_bytes"] == len(data)
    assert accepted["processing_status"] == "pending"
    assert accepted["estimated_pages"] == pages
    ready = wait_ready(client, f"file-{kind}")
    assert ready["processing_status"] == "ready", ready["error_message"]
    assert ready["actual_pages"] == pages
    assert ready["has_extracted_text"] is extracted
    assert ready["knowledge_units"] >= 1
    if kind in ("html", "docx"):
        links = ready["link_library"]
        assert links and all(link["source"] == "extractor" for link in links)
        assert all(link["url"].startswith("https://") for link in links)

    again = upload(client, name, data, mime, external_id=f"file-{kind}")
    assert again.status_code == 200
    assert again.json()["processed_at"] == ready["processed_at"], "same bytes: no re-embedding"


def test_an_upload_without_external_id_gets_a_uuid7(client: httpx.Client) -> None:
    response = upload(client, "a.txt", b"Some text.", "text/plain")
    assert response.status_code == 201
    external_id = response.json()["external_id"]
    parsed = uuid.UUID(external_id)
    assert parsed.version == 7 and len(external_id) == 36
    assert client.get(doc_path(external_id)).status_code == 200


@pytest.mark.parametrize(
    ("name", "data", "mime", "status", "code"),
    [
        ("fake.pdf", EXE, "application/pdf", 400, "upload.invalid_signature"),
        ("fake.docx", make_pdf(["x"]), "application/octet-stream", 400, "upload.invalid_signature"),
        ("binary.txt", b"\x00\x01\x02\xff" * 10, "text/plain", 400, "upload.invalid_signature"),
        ("broken.pdf", b"%PDF-1.4 garbage", "application/pdf", 400, "upload.invalid_signature"),
        ("tool.exe", EXE, "application/octet-stream", 415, "upload.unsupported_type"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(32), "image/png", 415,
         "upload.unsupported_type"),
        ("noname", b"text", "application/octet-stream", 415, "upload.unsupported_type"),
    ],
)  # fmt: skip
def test_upload_errors(
    client: httpx.Client, name: str, data: bytes, mime: str, status: int, code: str
) -> None:
    response = upload(client, name, data, mime, external_id="refused")
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert client.get(doc_path("refused")).status_code == 404, "nothing stored"


def test_page_and_size_limits(server_on) -> None:
    server = server_on(RAPPORT_KB_MAX_PAGES="2", RAPPORT_KB_MAX_FILE_BYTES="4096")
    with server.client(headers={"X-Api-Key": server.demo_key}) as http:
        pages = upload(http, "long.pdf", make_pdf(["one", "two", "three"]), "application/pdf")
        assert pages.status_code == 413
        assert pages.json()["code"] == "upload.page_limit_exceeded"
        big = upload(http, "big.txt", b"a" * 5000, "text/plain")
        assert big.status_code == 413
        assert big.json()["code"] == "upload.file_too_large"
        assert http.get("/api/knowledge/docs").json()["total_count"] == 0


def test_bad_multipart_requests(client: httpx.Client) -> None:
    no_file = client.post(FILES, data={"label": "x"})
    assert no_file.status_code == 400 and no_file.json()["code"] == "validation.failed"
    not_multipart = client.post(FILES, json={"file": "x"})
    assert not_multipart.status_code == 400
    bad_id = upload(client, "a.txt", b"text", "text/plain", external_id="bad id!")
    assert bad_id.status_code == 400 and bad_id.json()["code"] == "validation.failed"
