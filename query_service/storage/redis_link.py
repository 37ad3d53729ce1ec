"""A query replica's connection to Redis, shared by the result cache and the
live interaction history, and its outage backoff.

After a Redis error the link backs Redis off for ``retry_after_s``: callers
then skip it instead of each paying a timeout, so an outage costs the replica
no latency. Reads and writes back off apart: a Redis that refuses writes (out
of memory under ``noeviction``, ``CLIENT PAUSE ... WRITE``) still serves the
result cache's lookups and the live histories, so a failed write backs off
writes alone. A failed read backs off both: reads fail only when the server
does not answer, refuses this client (AUTH) or is loading, and writes would
fail the same way. A timeout is a failure only when another follows within
``retry_after_s``: on a loaded host the event loop misses a 50 ms budget now
and then (6 times in 10 minutes at load 7, with a healthy Redis), and one such
miss switched the cache and every live history off for everyone for 2 s; in an
outage every call times out, concurrent ones together, so the second comes
within about one timeout. The log gets a line when an outage starts (what
failed, why), when its cause changes, and when Redis answers again, not one
per request nor per back-off.

``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS)
names a Redis Cluster by its startup nodes. On a cluster the backoff is per
node (and its reads and writes apart, as above): the keys of a master that
fails are skipped (misses, empty live histories) for ``retry_after_s`` while
the other masters keep serving theirs, because one node of N down should cost
1/N of the cache, not all of it. Each batch goes out as one pipeline per node,
concurrently, so a dead node fails only its own keys; redis-py's cluster-level
retries are off (they close every connection and sleep 250 ms per attempt),
and a node failure instead refreshes the slot map in the background, so a
replica promoted in its place is found without a request waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import prometheus_client
import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import (AuthenticationError, RedisClusterException, RedisError, ResponseError,
                              SlotNotCoveredError)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from query_service.batching import BatchingConfig
from serving.errors import ResourceExhausted
from serving.telemetry.log_throttle import LogThrottle
from serving.telemetry.tracing import span

log = logging.getLogger(__name__)

# What a failed Redis call raises: redis-py's own errors (its cluster ones are
# not RedisErrors: no node reachable, a slot no node holds), socket errors and its timeouts.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
# Those of a call that ran out of its ``--redis-timeout-s``: alone, not yet an outage (see the module docstring).
TIMEOUTS = (RedisTimeoutError, asyncio.TimeoutError)
AUTH_HINT = ("; Redis refuses this replica's credentials: check --redis-password-file and the user name in "
             "--redis-url against Redis's requirepass / ACL")

# Concurrent requests' Redis calls go out together: whatever queued while the
# previous round trips were out, never waiting for more, so batching adds no
# latency and under load saves a round trip and redis-py's per-command cost.
PIPELINED = BatchingConfig(max_batch_size=256, max_wait_ms=0.0, max_in_flight=4, overlap_after_ms=0.0)

# Concurrent calls to one Redis server (or cluster node), each holding a connection; more wait for one of them, up
# to POOL_WAIT_S. Unbounded, a burst of calls opened a connection each, whose connects starved each other's connect
# timeout on a busy loop (and redis-py refuses calls past 100 connections a node): each failure backed a healthy
# Redis off, so a burst of 200 RecordInteractions lost ~60% of them and switched the cache and live history off
# for everyone. Through 8 a burst of 1000 appends took ~90 ms (server or cluster; no faster through 16), so a
# call still waiting after a second is behind this replica's own overload, not behind a burst.
MAX_CONNECTIONS = 8
# The longest expiry either store gives Redis (ten years): far larger, and Redis refuses the SET or EXPIRE
# ("invalid expire time"), after the live history's script has already pushed its items.
MAX_TTL_S = 10 * 365 * 86400
POOL_WAIT_S = 1.0

REDIS_ERRORS_TOTAL = prometheus_client.Counter("recsys_redis_errors_total", "Failed Redis calls by operation",
                                               ["op"])

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
NO_NODE = "(slot held by no node)"


class _Unreached:
    def __repr__(self) -> str:
        return "UNREACHED"


# The reply of a command that Redis did not answer: its node failed, or is
# backed off after failing (on a single server: Redis is), or its key holds a
# value of another type. Not None, which is a reply (a missing key).
UNREACHED: Any = _Unreached()


def wrong_type(reply: Any) -> bool:
    """Whether ``reply`` is Redis refusing a command for its key's value, of
    another type than the command's (someone else's write under the key)."""
    return isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")


def _cluster_nodes(hosts: str) -> list:
    """The nodes of a cluster URL's ``host:port[,host:port...]``; ValueError naming it otherwise."""
    try:
        nodes = [urlsplit(f"//{host}") for host in hosts.split(",") if host]
        if nodes and all(node.hostname is not None and node.port is not None for node in nodes):
            return nodes
    except ValueError:  # a port past 65535 or not a number
        pass
    raise ValueError(f"a cluster URL lists its nodes as host:port[,host:port...]; got {hosts!r}")


def check_url(url: str) -> None:
    """Raises ValueError for a Redis URL that redis-py refuses only when it connects (a port past 65535 or not a
    number, a cluster URL without its nodes: a traceback at start) or reads otherwise than written (a database
    that is no number, as database 0)."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        _cluster_nodes(parts.netloc.rpartition("@")[2])
        return
    parse_url(url)
    database = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"the database {database!r} is not a number: give redis://HOST:PORT/N")


def cluster_client(url: str, **kwargs: Any) -> RedisCluster:
    """A RedisCluster for ``redis+cluster://[user:password@]host:port[,host:port...][?option=value]``:
    every listed node is a startup node (any one that answers gives the slot
    map); user, password, TLS (``rediss+cluster``) and options apply to all."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = _cluster_nodes(hosts)
    first_host = hosts.split(",")[0]
    first = urlunsplit((CLUSTER_SCHEMES[parts.scheme], f"{userinfo}@{first_host}" if userinfo else first_host,
                        parts.path, parts.query, ""))
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(node.hostname, node.port) for node in nodes[1:]],
                                 **kwargs)


class _Side:
    """Reads or writes of Redis (or of one cluster node): backed off until when, the outage they are in (since
    when, failing with what) and the last timeout not yet taken for an outage."""

    __slots__ = ("off_until", "since", "cause", "timed_out_at")

    def __init__(self) -> None:
        self.off_until = 0.0
        self.since: float | None = None
        self.cause = ""
        self.timed_out_at = -float("inf")


class RedisLink:
    """One Redis client (a server's or a cluster's) and the times until which
    Redis, or one cluster node, is taken as down for reads and for writes."""

    def __init__(self, url: str, password: str, timeout_s: float, retry_after_s: float):
        self.cluster = urlsplit(url).scheme in CLUSTER_SCHEMES
        options = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, password=password or None)
        # Slots of a lost master stay unserved rather than failing the client, and
        # no cluster-level retry: a retry sleeps 250 ms, five times the call's budget.
        # A single server's maintenance notifications off (a RESP3 feature, unused here): on, even as "auto",
        # redis-py skips its check of a pooled connection when it is taken, so after a restart each pooled
        # connection failed a call and backed Redis off again, one after another.
        self.client = (cluster_client(url, require_full_coverage=False, retry=Retry(NoBackoff(), 0), **options)
                       if self.cluster else
                       redis.from_url(url, maint_notifications_config=MaintNotificationsConfig(enabled=False),
                                      **options))
        self.retry_after_s = retry_after_s
        self._sides: dict[tuple[bool, str], _Side] = {}  # by (writes, cluster node; "": the server or cluster)
        self._reads, self._writes = self._side(False, ""), self._side(True, "")
        self._refresh: asyncio.Task | None = None
        self._wrong_type_log = LogThrottle()
        self._calls: dict[str, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def calling(self, node: str = "") -> AsyncIterator[None]:
        """Holds one of the ``MAX_CONNECTIONS`` concurrent calls to the cluster ``node`` (to the server: ""),
        waiting up to ``POOL_WAIT_S`` for one. Past that it raises ResourceExhausted, not one of
        ``REDIS_ERRORS``: the call is behind this replica's own calls, so Redis is not backed off for it."""
        calls = self._calls.get(node)
        if calls is None:
            calls = self._calls[node] = asyncio.Semaphore(MAX_CONNECTIONS)
        try:
            if calls.locked():  # a timer only for a call that waits: a free call took 6.6 us with one, 2.5 without
                async with asyncio.timeout(POOL_WAIT_S):
                    await calls.acquire()
            else:
                await calls.acquire()
        except TimeoutError:
            raise ResourceExhausted(f"more calls wait for a connection to Redis{' node ' + node if node else ''} "
                                    f"than it served within {POOL_WAIT_S:g}s: this replica is overloaded; retry "
                                    "with backoff or on another replica") from None
        try:
            yield
        finally:
            calls.release()

    def available(self) -> bool:
        """Whether to read from Redis: False within ``retry_after_s`` of a failed read (on a cluster: of
        one that was not a single node's, such as no startup node answering). Writes do not turn it off."""
        return time.monotonic() >= self._reads.off_until

    def writable(self) -> bool:
        """Whether to write to Redis: False within ``retry_after_s`` of a failed read or write."""
        return time.monotonic() >= self._writes.off_until

    def _side(self, write: bool, node: str) -> _Side:
        side = self._sides.get((write, node))
        if side is None:
            side = self._sides[write, node] = _Side()
        return side

    @staticmethod
    def expect(*ops: str) -> None:
        """Makes the error series of ``ops`` at 0 now: a counter series that appears with its first increment hides
        that increment (the first burst of errors after a start) from ``rate()``, and the alert on it."""
        for op in ops:
            REDIS_ERRORS_TOTAL.labels(op)

    def failed(self, op: str, error: Exception, node: str = "", write: bool = False) -> None:
        """Records a failed call (a write's with ``write``): backs off for ``retry_after_s`` the writes of
        Redis (or of the cluster ``node``), and its reads too if the call was a read; logs the start of an
        outage and a change of its cause. A timeout while Redis is up backs nothing off unless another came
        within ``retry_after_s`` (see the module docstring); it is counted all the same."""
        REDIS_ERRORS_TOTAL.labels(op).inc()
        now = time.monotonic()
        side = self._side(write, node)
        if isinstance(error, TIMEOUTS) and side.since is None and now - side.timed_out_at > self.retry_after_s:
            side.timed_out_at = now
            return
        if node and now >= side.off_until:
            self._refresh_slots()
        for backed_off in (side,) if write else (side, self._side(True, node)):
            backed_off.off_until = now + self.retry_after_s
        if write and self._side(False, node).since is not None:
            return  # reads fail too: their outage's lines tell it
        cause = f"{type(error).__name__}: {error}{AUTH_HINT if isinstance(error, AuthenticationError) else ''}"
        where, name = (f"redis cluster node {node}: ", f"node {node}") if node else ("redis ", "Redis")
        if side.since is None:
            side.since, side.cause = now, type(error).__name__
            if write:
                log.warning("%s%s failed (%s); not writing to %s (results not shared through it, RecordInteractions "
                            "fail) until a try after %.1fs succeeds; reads go on", where, op, cause, name,
                            self.retry_after_s)
            else:
                log.warning("%s%s failed (%s); serving without %s (%s) until a try after %.1fs succeeds",
                            where, op, cause, name, "its keys are misses and empty live histories" if node else
                            "no result cache, no live history", self.retry_after_s)
        elif type(error).__name__ != side.cause:
            side.cause = type(error).__name__
            log.warning("%s%s still fail %.1fs into the outage, now with %s", where, "writes" if write else "reads",
                        now - side.since, cause)

    def answered(self, node: str = "", write: bool = False) -> None:
        """Records a call (a write's with ``write``) that Redis (or the cluster ``node``) answered: past
        the back-off, it ends the outage, and the log says so. Within it, an answer to a call sent before
        the failure (or a RecordInteractions, which is always sent) does not: the back-off runs out first."""
        side = self._sides.get((write, node))
        if side is not None and side.since is not None:
            now = time.monotonic()
            if now >= side.off_until:
                log.warning("%s answers again after %.1fs (%s)", f"redis cluster node {node}" if node else "Redis",
                            now - side.since, "writes" if write else "reads")
                side.since = None

    def skipped_key(self, op: str, key: str) -> None:
        """Records a key whose value is of another type than ``op`` takes: a
        fault of that key, not of Redis, which stays on (one log line a minute)."""
        REDIS_ERRORS_TOTAL.labels(op).inc()
        if self._wrong_type_log.due(None, 60) is not None:
            log.warning("redis key %s holds a value of another type than %s takes (not written by this service): "
                        "reads skip it, a write replaces it; see recsys_redis_errors_total for the count", key, op)

    def _refresh_slots(self) -> None:
        """Re-reads the slot map off the request path: a replica promoted in
        place of a failed master then takes its keys at the next batch."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._read_slots())

    async def _read_slots(self) -> None:
        try:
            await self.client.nodes_manager.initialize()
        except REDIS_ERRORS as e:  # no node answered: the next batch's failures try again
            log.info("redis cluster: slot map not refreshed (%s: %s)", type(e).__name__, e)

    async def node_of(self, key: str) -> str:
        """The cluster node serving ``key`` ("" on a single server)."""
        if not self.cluster:
            return ""
        await self.client.initialize()  # once; again only after redis-py closed the client
        return self._node_of(key)

    def _node_of(self, key: str) -> str:
        try:
            return self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key)).name
        except SlotNotCoveredError:  # its pipeline fails, and backs off every slot no node holds together
            return NO_NODE

    async def _by_node(self, op: str, keys: Sequence[str], write: bool) -> dict[str, list[int]]:
        """Positions of ``keys`` by the cluster node serving them, leaving out those of nodes backed off
        (for writes with ``write``, else for reads)."""
        try:
            await self.client.initialize()
        except REDIS_ERRORS as e:
            self.failed(op, e, write=write)
            return {}
        now = time.monotonic()
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            node = self._node_of(key)
            if now >= self._side(write, node).off_until:
                groups.setdefault(node, []).append(i)
        return groups

    async def mget(self, op: str, keys: Sequence[str]) -> list[Any]:
        """The values of ``keys`` (None where missing, UNREACHED where Redis or their node did not answer)."""
        if self.cluster:  # MGET is one slot's: on a cluster, a GET per key, pipelined per node
            return await self.pipelined(op, keys, lambda pipe, key: pipe.get(key))
        try:
            async with self.calling():
                with span("redis " + op, keys=len(keys)):
                    values = await self.client.mget(keys)
        except REDIS_ERRORS as e:
            self.failed(op, e)
            return [UNREACHED] * len(keys)
        except ResourceExhausted:
            return [UNREACHED] * len(keys)
        self.answered()
        return values

    async def pipelined(self, op: str, keys: Sequence[str], queue: Callable[[Any, str], Any],
                        write: bool = False) -> list[Any]:
        """Sends ``queue(pipe, key)`` for each key in a non-transactional
        pipeline (on a cluster, one per node, concurrently) and returns the
        replies in order: UNREACHED for the keys of a pipeline that failed or
        was not sent (Redis or the node backed off). ``write``: the commands
        write, and a failure backs off writes only."""
        replies = [UNREACHED] * len(keys)
        if not self.cluster:
            await self._pipeline(op, "", keys, range(len(keys)), queue, replies, write)
            return replies
        groups = await self._by_node(op, keys, write)
        await asyncio.gather(*(self._pipeline(op, node, keys, positions, queue, replies, write)
                               for node, positions in groups.items()))
        return replies

    async def _pipeline(self, op: str, node: str, keys: Sequence[str], positions: Sequence[int],
                        queue: Callable[[Any, str], Any], replies: list[Any], write: bool) -> None:
        """Fills ``replies`` at ``positions`` from one pipeline; a failure is ``node``'s (or Redis's),
        but a key holding a value of another type fails only that key: one such key must not cost
        the others of its pipeline their replies, nor the replica its Redis."""
        try:
            with span("redis " + op, keys=len(positions), node=node):
                async with self.calling(node), self.client.pipeline(transaction=False) as pipe:
                    for i in positions:
                        queue(pipe, keys[i])
                    answers = await pipe.execute(raise_on_error=False)
                for reply in answers:
                    if isinstance(reply, Exception) and not wrong_type(reply):
                        raise reply
                for i, reply in zip(positions, answers):
                    if wrong_type(reply):
                        self.skipped_key(op, keys[i])
                    else:
                        replies[i] = reply
        except REDIS_ERRORS as e:
            self.failed(op, e, node, write)
        except ResourceExhausted:
            pass  # its keys' replies stay UNREACHED
        else:
            self.answered(node, write)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        await self.client.aclose()
