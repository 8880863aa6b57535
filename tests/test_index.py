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
from kb.index import VectorIndex, _hit, pack, unpack
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


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_packed_vectors_come_back_at_float16_precision() -> None:
    vectors = unit_rows(6, seed=3)
    packed = pack(list(vectors), 384)
    assert isinstance(packed, str) and packed.startswith("6:")
    back = np.array(unpack(packed))
    assert back.shape == (6, 384) and back.dtype == np.float32
    assert np.abs(back - vectors).max() < 1e-3  # float16 keeps ~3 decimal digits
    # Cosines, between themselves and with another vector, are kept to 1e-3.
    back_unit = back / np.linalg.norm(back, axis=1, keepdims=True)
    assert np.abs(np.sum(back_unit * vectors, axis=1) - 1).max() < 1e-3
    other = unit_rows(1, seed=4)[0]
    assert np.abs(back_unit @ other - vectors @ other).max() < 1e-3
    assert np.abs(back_unit @ back_unit.T - vectors @ vectors.T).max() < 1e-3


def test_a_missing_vector_packs_as_zeros_and_comes_back_as_none() -> None:
    vectors = unit_rows(2, seed=5)
    packed = pack([vectors[0], None, vectors[1]], 384)
    rows = unpack(packed)
    assert len(rows) == 3 and not rows[1].any()
    hit = _hit(
        "faq@1#0",
        "First. Second. Third.",
        {
            "external_id": "faq",
            "context": "FAQ",
            "document": pack([vectors[0]], 384),
            "sentences": packed,
        },
        0.5,
    )
    assert hit.sentences[1] is None
    assert hit.sentences[0] is not None and hit.sentences[2] is not None
    assert float(hit.sentences[2] @ vectors[1]) > 1 - 1e-3
    assert hit.document is not None and float(hit.document @ vectors[0]) > 1 - 1e-3
    assert hit.context == "FAQ" and hit.external_id == "faq" and hit.score == 0.5


def test_an_empty_pack_and_a_chunk_from_before_vectors_unpack_to_nothing() -> None:
    assert unpack("") == []
    old = _hit("faq@1#0", "Text.", {"external_id": "faq"}, 0.2)
    assert old.document is None and old.sentences == [] and old.context == ""


async def test_packed_vectors_survive_a_round_trip_through_chroma(tmp_path: Path) -> None:
    index = VectorIndex(Settings(data_dir=str(tmp_path)))
    chunk, document, sentence = unit_rows(3, seed=6)
    await index.add(
        "packs",
        ids=["faq@1#0"],
        vectors=chunk[None, :],
        texts=["One sentence. Another one, past the model's reach."],
        metadatas=[
            {
                "external_id": "faq",
                "doc_gen": "faq@1",
                "chunk": 0,
                "context": "FAQ",
                "document": pack([document], 384),
                "sentences": pack([sentence, None], 384),
            }
        ],
    )
    for hit in [
        *await index.query("packs", chunk, 1, ["faq@1#0"]),
        *await index.chunks("packs", ["faq@1#0"], chunk),
    ]:
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.context == "FAQ"
        assert hit.document is not None and float(hit.document @ document) > 1 - 1e-3
        assert len(hit.sentences) == 2 and hit.sentences[1] is None
        assert hit.sentences[0] is not None and float(hit.sentences[0] @ sentence) > 1 - 1e-3
    # Read without a vector, a chunk's text and metadata come back, scored 0.
    (plain,) = await index.chunks("packs", ["faq@1#0"])
    assert plain.score == 0.0 and plain.context == "FAQ" and len(plain.sentences) == 2


def test_no_vectors_pack_and_unpack_to_nothing() -> None:
    assert unpack(pack([], 384)) == []


async def test_collection_handles_are_bounded_and_a_dropped_one_reopens(tmp_path: Path) -> None:
    # A process serves any number of accounts: it keeps the handles of the latest only.
    index = VectorIndex(Settings(data_dir=str(tmp_path)), collections_kept=2)
    chunk = unit_rows(1, seed=3)[0]
    for account in ("a", "b", "c"):
        await index.add(
            account, ids=[f"{account}@1#0"], vectors=chunk[None, :], texts=[f"About {account}."],
            metadatas=[{"external_id": account, "doc_gen": f"{account}@1", "chunk": 0}],
        )  # fmt: skip
    assert len(index._collections) == 2 and ("a", index._settings.embedding_model) not in (
        index._collections
    )
    (hit,) = await index.query("a", chunk, 1, ["a@1#0"])  # reopened, its vectors all there
    assert hit.text == "About a." and hit.score == pytest.approx(1.0, abs=1e-5)
    assert ("a", index._settings.embedding_model) in index._collections
    assert len(index._collections) == 2


async def test_a_search_reads_each_chunk_once_and_keeps_a_bounded_number(tmp_path: Path) -> None:
    # Searches ask Chroma for ids and distances; the chunks themselves are read the first
    # time only (a chunk id's content never changes), and only the latest are kept.
    index = VectorIndex(Settings(data_dir=str(tmp_path)), chunks_kept=2)
    rows = unit_rows(3, seed=9)
    ids = [f"faq@1#{n}" for n in range(3)]
    await index.add(
        "kept", ids=ids, vectors=rows, texts=[f"Chunk {n}." for n in range(3)],
        metadatas=[
            {"external_id": "faq", "doc_gen": "faq@1", "chunk": n, "context": f"Part {n}",
             "sentences": pack([rows[n]], 384)}
            for n in range(3)
        ],
    )  # fmt: skip
    first = await index.query("kept", rows[0], 2, ids)
    again = await index.query("kept", rows[0], 2, ids)
    assert first[0].chunk_id == again[0].chunk_id == "faq@1#0"
    assert [h.chunk_id for h in again] == [h.chunk_id for h in first]
    assert [h.score for h in again] == pytest.approx([h.score for h in first])
    assert first[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(a.sentences is b.sentences for a, b in zip(first, again, strict=True)), "kept"
    for hit in first:
        n = int(hit.chunk_id[-1])
        assert (hit.text, hit.context) == (f"Chunk {n}.", f"Part {n}")
        assert hit.sentences[0] is not None and float(hit.sentences[0] @ rows[n]) > 0.999
    (third,) = await index.query(
        "kept", rows[0], 1, [c for c in ids if c not in {h.chunk_id for h in first}]
    )
    assert third.text == f"Chunk {third.chunk_id[-1]}."
    assert len(index._chunks) == 2, "bounded: the third chunk pushed the oldest out"
