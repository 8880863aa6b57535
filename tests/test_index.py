"""Which index errors mean "Chroma is down": Chroma failing, or the way to it, is
IndexUnavailable (a 503); a bug of ours stays the bug it is (a 500 with a traceback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from engine.config import Settings
from engine.errors import IndexUnavailable
from kb.index import VectorIndex
from tests.conftest import free_port

VECTOR = np.full((1, 384), 384**-0.5, dtype=np.float32)


class BadGateway(BaseHTTPRequestHandler):
    """A proxy in front of a Chroma server that is gone: 502 to everything."""

    def do_GET(self) -> None:
        self.send_response(502)
        self.send_header("Content-Length", "11")
        self.end_headers()
        self.wfile.write(b"Bad Gateway")

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


async def test_a_bug_of_ours_is_not_reported_as_chroma_being_down(tmp_path: Path) -> None:
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    with pytest.raises(TypeError):  # our own code, inside the thread: no vectors to slice
        await index.add(
            "acct", ids=["a@1#0"], vectors=None, texts=["a"], metadatas=[{"external_id": "a"}]
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two where expressions"):  # chromadb refusing our call
        await index.delete("acct", {"$or": [{"external_id": "a"}]})
    await index.ping()  # Chroma itself was fine all along


async def test_an_embedded_store_that_cannot_open_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "chroma").write_text("not a directory")
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    with pytest.raises(IndexUnavailable):
        await index.ping()


async def test_a_chroma_server_that_is_not_there_is_unavailable(tmp_path: Path) -> None:
    index = VectorIndex(
        Settings(data_dir=str(tmp_path), chroma_url=f"http://127.0.0.1:{free_port()}")
    )
    with pytest.raises(IndexUnavailable):
        await index.ping()
    with pytest.raises(IndexUnavailable):  # dialled again, still refused
        await index.query("acct", VECTOR[0], 5, ["a@1#0"])


async def test_an_error_response_from_the_way_to_chroma_is_unavailable(
    tmp_path: Path, bad_gateway: str
) -> None:
    index = VectorIndex(Settings(data_dir=str(tmp_path), chroma_url=bad_gateway))
    with pytest.raises(IndexUnavailable):
        await index.ping()
