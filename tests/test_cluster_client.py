"""Rapport's Redis Cluster client (engine/state.py) while one master is down, on a real
cluster of its own (3 masters + 3 replicas, tests/redis_cluster.py): the commands of the slots
on the other masters never fail, whatever fails on the dead one's, and the dead one's come
back once its replica is promoted.

redis-py 8.1's own recovery cut them: each refresh of the map of the slots asked the first
listed master, often the dead one, for its table of commands and failed, closing every
connection (nearly every command on the healthy masters refused); and each recovery closed
every connection in use and unset the default node for a moment (about 1 in 1,000 refused,
some with an AttributeError, an internal error).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from engine.state import client_name, connect
from tests.redis_cluster import NODE_TIMEOUT_MS, RedisCluster, cli

TIMEOUT_S = 1.0
"""RAPPORT_REDIS_TIMEOUT of the client under test."""


def keys_on(cluster: RedisCluster, port: int, count: int, on: bool = True) -> list[str]:
    """``count`` key names whose slot is (``on``) or is not on the master at ``port``."""
    names = (f"k{n}" for n in itertools.count())
    return list(itertools.islice((n for n in names if (cluster.master_of(n) == port) == on), count))


def connections(port: int) -> int:
    """Connections this process holds on the node at ``port`` (CLIENT LIST, by name)."""
    listing = cli(port, "CLIENT", "LIST")
    return sum(f" name={client_name()} " in f" {line} " for line in listing.splitlines())


async def test_a_close_lets_a_command_in_flight_finish_then_closes_its_connection(
    redis_cluster: RedisCluster,
) -> None:
    """The recovery redis-py runs after a failure (``aclose``) must not cut a command that a
    healthy master is answering."""
    client = connect(redis_cluster.url, TIMEOUT_S, cluster=True)
    await client.initialize()
    port = redis_cluster.masters()[0]
    (key,) = keys_on(redis_cluster, port, 1)
    cli(port, "CONFIG", "RESETSTAT")
    # A blocking pop that waits 0.3 s for nothing: in flight while the client is closed.
    waiting = asyncio.create_task(client.blpop([key], timeout=0.3))
    await asyncio.sleep(0.1)
    await client.aclose()
    assert await waiting is None
    # Once: redis-py's own close cut it, and the library sent it again on a new connection.
    assert "cmdstat_blpop:calls=1," in cli(port, "INFO", "commandstats")
    await asyncio.sleep(0.1)  # the connection is closed as it is released
    assert connections(port) == 0
    # And the client is usable again: it learns the map anew.
    assert await client.set(key, "1") and await client.get(key) == "1"
    await client.aclose()
    held = {port: connections(port) for port in redis_cluster.live_ports()}
    assert not any(held.values()), held


async def test_while_a_master_is_down_the_other_masters_slots_never_fail(
    redis_cluster: RedisCluster,
) -> None:
    """Last in this module: it kills a master. Commands and pipelines keep failing on the
    dead master's slot (each one starts redis-py's recovery) while commands on the other
    masters' slots run beside them; not one of those fails. The dead slot answers again once
    the replica is promoted."""
    client = connect(redis_cluster.url, TIMEOUT_S, cluster=True)
    await client.initialize()
    # The worst master to lose: redis-py's default node (the first master it lists), which
    # it asks for its table of commands at every refresh of the map.
    victim = client.get_default_node().port
    (doomed,) = keys_on(redis_cluster, victim, 1)
    spared = keys_on(redis_cluster, victim, 6, on=False)
    for key in (doomed, *spared):
        await client.set(key, "0")
    await asyncio.sleep(1.5)  # past the AOF's fsync and the replicas' catch-up
    for port in redis_cluster.live_ports():
        # Redis's default refuses every slot while a master is failed (README: set it to no).
        cli(port, "CONFIG", "SET", "cluster-require-full-coverage", "no")
    redis_cluster.kill(victim)

    refused: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    done = 0
    back = asyncio.Event()

    async def on_the_dead_master() -> None:
        # A single command's failure and a pipeline's start redis-py's two recoveries.
        while not back.is_set():
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.incr(doomed).get(doomed)
                    await pipe.execute()
                await client.get(doomed)
                back.set()
            except Exception as exc:  # every kind is counted, none expected to be odd
                refused[type(exc).__name__] += 1
                await asyncio.sleep(0.01)

    async def on_another_master(key: str) -> None:
        nonlocal done
        while not back.is_set():
            try:
                if done % 2:
                    await client.incr(key)
                else:
                    async with client.pipeline(transaction=False) as pipe:
                        await pipe.incr(key).execute()
                done += 1
            except Exception as exc:
                failed[f"{type(exc).__name__}: {exc}"] += 1
            await asyncio.sleep(0.001)

    deadline = NODE_TIMEOUT_MS / 1000 + 30  # the node timeout and an election, slowed by load
    async with asyncio.timeout(deadline):
        await asyncio.gather(on_the_dead_master(), *(on_another_master(k) for k in spared))
    assert refused, "nothing was refused on the dead master's slot"
    assert set(refused) <= {"ConnectionError", "TimeoutError", "ClusterDownError"}, refused
    assert done and not failed, (done, failed)
    values = [int(await client.get(key)) for key in spared]
    assert sum(values) == done  # no increment lost or doubled by a retry
    await client.aclose()
    held = {port: connections(port) for port in redis_cluster.live_ports()}
    assert not any(held.values()), held
