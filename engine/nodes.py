"""The nodes of one deployment, and where its vectors live (issue 22, "Many nodes").

Nodes that share a Redis share every document's record, so they must share the vectors too.
Two nodes on one Redis, each on its embedded Chroma, split the knowledge base silently: a
document processed on one is ``ready`` everywhere and found only there. So:

- each ``rapport serve`` process announces itself while it runs: a :class:`Node` in the
  deployment's sorted set of nodes, scored by when its heartbeat runs out (renewed every
  third of ``RAPPORT_SESSION_LEASE_SECONDS``, removed on a clean stop), so the live nodes are
  read in one command, with no scan of the keyspace;
- the first node to index anything records its vector store as the deployment's;
- at start, a node whose vectors the others could not read refuses, with a message naming
  ``RAPPORT_CHROMA_URL``: a node on its embedded Chroma while another node is live, a node
  on a Chroma server while a node on its embedded Chroma is live, or a node on its embedded
  Chroma when the deployment's documents were indexed elsewhere.

A node is known by its data dir (a random id kept there): restarted after a crash, its own
heartbeat that has not run out yet is not another node's, and the workers of one
``rapport serve --workers N`` (one data dir, and a Chroma server: engine/config.py) are one
node. Both keys carry the ``{deployment}`` hash tag: one cluster slot, so the start's
transaction over them is legal on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from engine.config import ConfigError, Settings, env_name, flag_name
from engine.errors import RapportError
from engine.keyspace import DeploymentKeys
from engine.state import Client, redis_boundary

log = logging.getLogger("rapport.nodes")

NODE_ID_FILE = "node_id"
EMBEDDED = "embedded:"
"""How :attr:`Node.vectors` names an embedded store: followed by its node's id."""
SERVER = "chroma:"
"""How :attr:`Node.vectors` names a Chroma server: followed by RAPPORT_CHROMA_URL."""
SETTING = f"{env_name('chroma_url')} ({flag_name('chroma_url')})"
REMEDY = (
    f"give every node that shares this Redis the same {env_name('chroma_url')} (a Chroma server)"
)


class Node(msgspec.Struct, frozen=True):
    """One running ``rapport serve`` process, as the others see it."""

    id: str
    """Its data dir's id."""
    host: str
    pid: int
    vectors: str
    """Where it keeps its vectors: ``embedded:<id>`` or ``chroma:<RAPPORT_CHROMA_URL>``."""

    @property
    def embedded(self) -> bool:
        return self.vectors.startswith(EMBEDDED)

    def describe(self) -> str:
        return f"{self.host}, pid {self.pid}, " + (
            "on its embedded Chroma" if self.embedded else f"on {self.vectors[len(SERVER) :]}"
        )


def node_id(data_dir: Path) -> str:
    """The data dir's id, made on first use. Made whole and linked into place, so that
    processes starting together on one data dir agree on it."""
    path = data_dir / NODE_ID_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f"{NODE_ID_FILE}.{os.getpid()}"
        draft.write_text(uuid.uuid4().hex)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: its id stands
        finally:
            draft.unlink()
    return path.read_text().strip()


def where(vectors: str) -> str:
    if vectors.startswith(EMBEDDED):
        return f"the embedded Chroma of another node (node id {vectors[len(EMBEDDED) :]})"
    return f"the Chroma server at {vectors[len(SERVER) :]}"


class Nodes:
    """This process's place among the deployment's nodes."""

    def __init__(
        self, redis: Client, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._ttl = settings.session_lease_seconds
        self._chroma_path = settings.chroma_path
        me = node_id(settings.data_path)
        vectors = EMBEDDED + me if settings.chroma_url is None else SERVER + settings.chroma_url
        self.me = Node(id=me, host=socket.gethostname(), pid=os.getpid(), vectors=vectors)
        self._member = msgspec.json.encode(self.me).decode()
        self._claimed = False

    def _expiry(self) -> int:
        return int((self._clock() + self._ttl) * 1000)

    def _shares(self, other: Node) -> bool:
        # The same data dir is this node: restarted before its old heartbeat ran out, or
        # another worker of the same `rapport serve`.
        return other.id == self.me.id or not (self.me.embedded or other.embedded)

    @redis_boundary
    async def _announce(self) -> tuple[list[str], str | None]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(DeploymentKeys.nodes, "-inf", int(self._clock() * 1000))
            pipe.zadd(DeploymentKeys.nodes, {self._member: self._expiry()})
            pipe.zrange(DeploymentKeys.nodes, 0, -1)
            pipe.get(DeploymentKeys.vectors)
            _, _, members, home = await pipe.execute()
        return members, home

    async def join(self) -> None:
        """Announce this node; raise ConfigError, naming RAPPORT_CHROMA_URL, when its vectors
        would not be the deployment's. One transaction: of two nodes starting at once, the
        later sees the earlier."""
        members, home = await self._announce()
        others = [msgspec.json.decode(m, type=Node) for m in members if m != self._member]
        refusal = None
        stranger = next((o for o in others if not self._shares(o)), None)
        if stranger is not None and self.me.embedded:
            refusal = (
                f"another node is live on this Redis ({stranger.describe()}), and this node's"
                " vectors would be in its own embedded Chroma: documents processed by one would"
                f" never be found by the other; {REMEDY}"
            )
        elif stranger is not None:
            refusal = (
                f"a node live on this Redis ({stranger.describe()}) keeps its vectors where"
                f" this node cannot read them; {REMEDY}"
            )
        elif self.me.embedded and home is not None and home != self.me.vectors:
            refusal = (
                f"this deployment's documents were indexed into {where(home)}, not into this"
                f" node's embedded Chroma ({self._chroma_path}), so its replies would never"
                f" find them; start the node that holds them, or set {env_name('chroma_url')}"
                " to the deployment's Chroma server"
            )
        if refusal is not None:
            with contextlib.suppress(RapportError):
                await self.leave()
            raise ConfigError(f"{SETTING}: {refusal}")

    @redis_boundary
    async def beat(self) -> None:
        """Renew this node's heartbeat (and bring it back if a sweep dropped it)."""
        await self._redis.zadd(DeploymentKeys.nodes, {self._member: self._expiry()})

    async def keep(self) -> None:
        """Until cancelled: renew the heartbeat every third of its lifetime. A failed round
        (Redis down) is logged and the next one tries again."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self.beat()
            except RapportError as error:
                log.warning("could not renew this node's heartbeat: %s", error.message)

    @redis_boundary
    async def leave(self) -> None:
        """Remove this node's heartbeat (a clean stop): nobody waits for it to run out."""
        await self._redis.zrem(DeploymentKeys.nodes, self._member)

    @redis_boundary
    async def claim(self) -> None:
        """Record this node's vector store as the deployment's, unless one is recorded
        already; asked before every write of vectors, done once a process."""
        if not self._claimed:
            await self._redis.set(DeploymentKeys.vectors, self.me.vectors, nx=True)
            self._claimed = True
