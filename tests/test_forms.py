"""Reading a multipart upload (api.forms), in process: the file and its fields, the file's
limit, and a body that passes the route's limit while it streams (Starlette's 413), which
an upload answers as upload.file_too_large, not request.body_too_large."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from api.forms import read_upload
from api.problems import handle_rapport_error
from engine.errors import RapportError

MAX_FILE = 1000
BODY_LIMIT = 4096


async def endpoint(request: Request) -> Response:
    upload = await read_upload(request, max_file_bytes=MAX_FILE, max_fields=2)
    return JSONResponse(
        {"size": len(upload.data), "name": upload.file_name, "mime": upload.mime,
         "fields": upload.fields}
    )  # fmt: skip


def client() -> TestClient:
    app = Starlette(
        routes=[Route("/upload", endpoint, methods=["POST"], max_body_size=BODY_LIMIT)],
        exception_handlers={RapportError: handle_rapport_error},
    )
    return TestClient(app)


def multipart(size: int) -> httpx.Request:
    files = {"file": ("notes.txt", b"a" * size, "text/plain")}
    return httpx.Request("POST", "http://test/upload", files=files, data={"label": "Notes"})


def test_the_file_and_the_fields_are_read() -> None:
    response = client().post(
        "/upload", files={"file": ("notes.txt", b"abc", "text/plain")}, data={"label": "Notes"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "size": 3, "name": "notes.txt", "mime": "text/plain", "fields": {"label": "Notes"}
    }  # fmt: skip


def test_a_form_without_a_file_is_validation_failed() -> None:
    response = client().post("/upload", data={"label": "Notes"})
    assert response.status_code == 400
    assert response.json()["code"] == "validation.failed"
    assert response.json()["errors"] == {"file": ["required"]}


def test_a_file_over_its_limit_is_file_too_large() -> None:
    response = client().post("/upload", files={"file": ("big.txt", b"a" * (MAX_FILE + 1))})
    assert response.status_code == 413
    assert response.json()["code"] == "upload.file_too_large"
    assert str(MAX_FILE) in response.json()["detail"]


def test_a_streamed_body_over_the_routes_limit_is_file_too_large() -> None:
    request = multipart(BODY_LIMIT)
    body = request.read()

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    response = client().post(
        "/upload", content=chunks(), headers={"Content-Type": request.headers["Content-Type"]}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "upload.file_too_large"
