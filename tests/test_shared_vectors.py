"""Nodes that share a Redis share their vectors (issue 22, "Many nodes"; engine/nodes.py).

Real ``rapport serve`` processes on one real redis-server: a node whose vectors the others
could not read refuses to start, naming RAPPORT_CHROMA_URL, instead of splitting the
knowledge base silently; nodes on one Chroma server (``chroma run``) share it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ChromaServer, RedisServer, Server
from tests.test_knowledge import REFUNDS, activate, doc_path, wait_ready

QUESTION = {"user_id": "u", "message": "How are refunds paid back?"}


def refused(server: Server) -> str:
    """Start ``server``, which must refuse: it exits with a failure status. What it said."""
    with pytest.raises(RuntimeError, match="rapport serve exited"):
        server.start()
    assert server.process is not None and server.process.returncode not in (None, 0)
    return server.stderr_path.read_text()


def test_a_node_on_its_embedded_chroma_is_refused_beside_a_live_node(
    tmp_path: Path, redis_server: RedisServer, chroma_server: ChromaServer
) -> None:
    first = Server(tmp_path / "a", RAPPORT_REDIS_URL=redis_server.url).start()
    second = Server(tmp_path / "b", RAPPORT_REDIS_URL=redis_server.url)
    third = Server(
        tmp_path / "c", RAPPORT_REDIS_URL=redis_server.url, RAPPORT_CHROMA_URL=chroma_server.url
    )
    try:
        said = refused(second)
        assert "RAPPORT_CHROMA_URL (--chroma-url): another node is live on this Redis" in said
        assert f"pid {first.process.pid}" in said  # type: ignore[union-attr]
        # A node on a Chroma server cannot read the live node's embedded store either.
        said = refused(third)
        assert "RAPPORT_CHROMA_URL (--chroma-url): a node live on this Redis" in said
        assert "on its embedded Chroma" in said
        with first.client() as client:
            assert client.get("/healthz").status_code == 200

        # Killed outright and restarted on its data dir, the node is not refused by its own
        # heartbeat, which has not run out yet.
        assert first.process is not None
        first.process.kill()
        first.process.wait(10)
        first.start()
        with first.client(headers={"X-Api-Key": first.demo_key}) as client:
            assert client.get("/api/subscription/limits").status_code == 200
    finally:
        first.stop()


def test_a_node_is_refused_where_the_documents_were_indexed_by_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    first = Server(tmp_path / "a", RAPPORT_REDIS_URL=redis_server.url).start()
    try:
        with first.client(headers={"X-Api-Key": first.demo_key}, timeout=30) as client:
            assert client.put(doc_path("refunds"), json={"content": REFUNDS}).status_code == 201
            assert wait_ready(client, "refunds")["processing_status"] == "ready"
            assert activate(client, ["refunds"]).status_code == 200
        first.stop()  # a clean stop: no node is live any more

        said = refused(Server(tmp_path / "b", RAPPORT_REDIS_URL=redis_server.url))
        assert "RAPPORT_CHROMA_URL (--chroma-url): this deployment's documents were indexed" in said
        assert str(tmp_path / "b" / "chroma") in said

        # The node that indexed them starts again and finds them.
        first.start()
        with first.client(headers={"X-Api-Key": first.demo_key}, timeout=30) as client:
            assert client.post("/api/v1/conversation", json=QUESTION).json()["sources"] == [
                "refunds"
            ]
    finally:
        first.stop()


def test_nodes_on_one_chroma_server_share_the_knowledge(
    tmp_path: Path, redis_server: RedisServer, chroma_server: ChromaServer
) -> None:
    env = {"RAPPORT_REDIS_URL": redis_server.url, "RAPPORT_CHROMA_URL": chroma_server.url}
    one = Server(tmp_path / "a", **env).start()
    # The second node runs no processing worker: what it cites, the first processed.
    two = Server(tmp_path / "b", RAPPORT_KB_WORKER="false", **env)
    try:
        two.start()
        with one.client(headers={"X-Api-Key": one.demo_key}, timeout=30) as client:
            assert client.put(doc_path("refunds"), json={"content": REFUNDS}).status_code == 201
            assert wait_ready(client, "refunds")["processing_status"] == "ready"
            assert activate(client, ["refunds"]).status_code == 200
        with two.client(headers={"X-Api-Key": one.demo_key}, timeout=30) as client:
            answer = client.post("/api/v1/conversation", json=QUESTION).json()
        assert answer["sources"] == ["refunds"], answer
        assert "original card within five business days" in answer["reply"]
        # And a node on its embedded Chroma is refused beside them.
        said = refused(Server(tmp_path / "c", RAPPORT_REDIS_URL=redis_server.url))
        assert "RAPPORT_CHROMA_URL (--chroma-url): another node is live on this Redis" in said
    finally:
        two.stop()
        one.stop()
