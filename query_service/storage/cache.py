"""Result cache: a bounded in-process LRU in front of Redis.

Keys carry model, version (and its manifest's digest) and catalogue generation,
so neither a promotion nor a catalogue delta can serve results of the catalogue
before, nor another registry's version of the number; values expire
after a bounded TTL. A key names everything a result depends on (version,
generation, customer, k, exclusions, recent and live items, filter), so an
entry can never be stale within its TTL, and the in-process tier needs no
invalidation: it saves the Redis round trip (and redis-py's per-command cost)
for the hottest customers of each replica, while Redis shares results across
replicas and restarts.

Redis is an optimisation, never a dependency: any Redis error makes the cache
report a miss (get) or drop the write (put), and after an error Redis stays
off for ``retry_after_s`` so an outage costs no per-request timeouts; the
in-process tier keeps serving meanwhile. Without a Redis URL the in-process
tier is the whole cache: a replica then shares no result with another.

Redis is not trusted with answers: whoever can write to it must not be able to
change what a client gets. Each value carries an HMAC over its key and payload
with a key only the services hold (``--cache-key-file``; without it, a random
key per process, or per ``--workers`` pool, so no other replica shares it), and
is checked for shape on the way back; a value that fails either is a miss, and
the answer computed instead overwrites it.

Redis expires a value a TTL after its write by its own clock (``PX``), so replicas
whose clocks differ agree on when a value goes and may all read it (with ``PXAT``
from the writer's clock, a writer an hour behind stored nothing and one an hour
ahead stored values for 13 TTLs). A value also carries the moment it expires by
its writer's clock, so a result read from Redis is held in process only for what
is left of its TTL, and never for more than a TTL: with clocks in step, no result
outlives the TTL, however many tiers it passed through; with clocks skewed, the
in-process hold is off by the skew, at most a TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import struct
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import prometheus_client

from query_service.batching import BATCH_SIZE, MicroBatcher
from query_service.storage.local_tier import LocalTier
from query_service.storage.redis_link import CLUSTER_SCHEMES, MAX_TTL_S, PIPELINED, UNREACHED, RedisLink, check_url
from query_service.storage.result import CachedResult
from serving.errors import ResourceExhausted
from serving.telemetry.log_throttle import LogThrottle
from settings.flags import ConfigError, option, require

log = logging.getLogger(__name__)

# A truncated HMAC-SHA256: 128 bits is ample against forgery, and the value stays small.
MAC_BYTES = 16
# After the MAC: when the value expires by its writer's clock, in milliseconds since the epoch.
_EXPIRES = struct.Struct(">Q")
# Results are written to Redis this long after the first of them, all in one
# pipeline: a pipeline costs redis-py ~90 us of CPU plus ~30 us per SET
# (measured: 1 SET 115 us, 8 SETs 245 us), and a miss's write is off its
# caller's path. Until then another replica misses the key (this one holds it
# in process at once). Without the in-process tier a replica reads its own
# results back from Redis, so they go at once (the next turn of the loop).
WRITE_DELAY_S = 0.01
# Writes waiting for their pipeline; beyond it a write is dropped (Redis is slower than the misses).
MAX_QUEUED_WRITES = 1024
# The ``recsys_batch_size`` series of keys per MGET, whoever gathered them: the lookups' own
# micro-batcher or a caller that batches its lookups itself (``get_remote_many``).
MGET_BATCHER = "ResultCache._mget"


def seal(secret: bytes, key: str, payload: bytes) -> bytes:
    """A Redis value: ``payload`` after an HMAC of the Redis ``key`` and the payload."""
    return hmac.digest(secret, key.encode() + b"\0" + payload, "sha256")[:MAC_BYTES] + payload


def unseal(secret: bytes, key: str, value: bytes) -> bytes | None:
    """The payload ``seal`` stored under ``key``; None if the value was forged, altered or written for another key."""
    payload = value[MAC_BYTES:]
    return payload if hmac.compare_digest(value[:MAC_BYTES], seal(secret, key, payload)[:MAC_BYTES]) else None


CACHE_EVENTS = prometheus_client.Counter(
    "recsys_cache_events_total",
    "Result cache lookups (local_hit, hit, miss, invalid, skipped: Redis or the key's cluster node down or backed "
    "off) and writes dropped; failed Redis calls are recsys_redis_errors_total", ["event"])
# Children bound once: ``labels()`` takes a lock and builds a tuple on every call.
_LOCAL_HIT, _HIT, _MISS, _INVALID, _SKIPPED, _DROPPED = (
    CACHE_EVENTS.labels(event) for event in ("local_hit", "hit", "miss", "invalid", "skipped", "dropped"))


# The password of ``[user]:password@`` (up to the authority's last '@', as urlsplit and redis-py read it), with or
# without a scheme (a mistyped URL is shown in its error), and redis-py's ``password=`` query option.
_URL_PASSWORD = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:/*)?[^:@/?#]*:)[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, as ``***``: a Redis URL as logs and error messages may show it."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url, count=1))


@dataclass(frozen=True)
class CacheConfig:
    url: str = option("", "Redis of the result cache and the live interaction history, e.g. "
                            "redis://127.0.0.1:6379/0; a Redis Cluster: redis+cluster://host:port[,host:port...] "
                            "(rediss+cluster:// for TLS; any node that answers gives the others; a lost master's "
                            "keys are misses); empty: neither", flag="redis-url")
    ttl_s: int = option(300, "result cache TTL in seconds", flag="cache-ttl-s")
    timeout_s: float = option(0.05, "timeout of each Redis call", flag="redis-timeout-s")
    retry_after_s: float = option(2.0, "after a Redis error, serve uncached this long before trying again",
                                  flag="redis-retry-after-s")
    local_mb: float = option(256.0, "memory for results kept in process (in front of Redis, or alone without "
                                    "--redis-url), in MiB (0: none); "
                                    "a result is counted at ~3.8 KB at k = 10, ~240 KB at k = 1000 (with the "
                                    "response a hit builds from it)", flag="local-cache-mb")
    mac_key: str = option("", "secret that authenticates values in Redis (cached results and live history "
                              "entries), shared by the query replicas; none: cached results under a random key per "
                              "process (per pool with --workers), so replicas share none, and live histories in "
                              "plain ids", flag="cache-key",
                          secret=True)
    password: str = option("", "Redis password (AUTH / ACL); a user name goes in the URL", flag="redis-password",
                           secret=True)

    def __post_init__(self) -> None:
        # Else redis-py refuses it only when the replica connects, with a traceback ("localhost:6379").
        require(not self.url or urlsplit(self.url).scheme in ("redis", "rediss", "unix", *CLUSTER_SCHEMES), "url",
                f"{redacted_url(self.url)!r} names no Redis: give redis://HOST:PORT[/DB], rediss://..., unix://PATH or "
                "redis+cluster://HOST:PORT[,HOST:PORT...]")
        if self.url:
            try:
                check_url(self.url)
            except ValueError as e:
                raise ConfigError("url", f"{redacted_url(self.url)!r}: {e}") from None
        require(1 <= self.ttl_s <= MAX_TTL_S, "ttl_s", f"must be from 1 to {MAX_TTL_S:,} (ten years)")
        require(self.timeout_s > 0, "timeout_s", "must be positive")
        require(self.retry_after_s >= 0, "retry_after_s", "must be >= 0")
        require(self.local_mb >= 0, "local_mb", "must be >= 0")


def _local_bytes(result: CachedResult) -> int:
    """An upper estimate of what a result held in process costs: its lists, their
    strings and floats, as much again for the response rendered from it, the
    response's bytes (a candidate is its id and ~25 bytes of framing, score and
    object overhead), and ~1.3 KB for the entry, its key, the LRU's links and the
    dict of renderings. Checked against the process's growth holding 30,000 results
    of k=10 (3,000 of k=100, 300 of k=1000), each rendered as a response and as
    bytes: with ~300 bytes and 9 a candidate it counted 0.75x (0.91x, 1.09x) of it."""
    lists = sys.getsizeof(result.ids) + sum(map(sys.getsizeof, result.ids)) + sys.getsizeof(result.scores)
    return 1_300 + 2 * (lists + 24 * len(result.scores)) + 33 + sum(len(i) + 25 for i in result.ids)


def _key(model: str, version: int, generation: int, identity: str, shape: tuple) -> str:
    """``recsys:<model>:v<version>:g<generation>:<digest of the identity and request shape>``;
    the readable prefix lets an operator drop one version's entries with
    SCAN/DEL, the digest bounds key length. ``identity`` is the version's
    ``Manifest.digest``: another registry's version of the number (one made
    anew, staging beside production on one Redis) is another key. The shape
    (strings, ints, bools and tuples of them) is digested as its ``repr``,
    canonical for those types and a quarter of the CPU of a JSON dump; replicas
    on one Python compute the same keys."""
    digest = hashlib.sha256(repr((identity, shape)).encode()).hexdigest()[:32]
    return f"recsys:{model}:v{version}:g{generation}:{digest}"


def cache_key(model: str, version: int, customer_id: str, k: int, exclusions: frozenset[str],
              recent: tuple[str, ...] = (), exclude_seen: bool = False, *, generation: int = 0,
              live: tuple[str, ...] = (), filter_key: str = "", identity: str = "") -> str:
    """The key of a Recommend result: ``live`` is what the customer's live
    history contributed to it, ``filter_key`` the filter's ``Filter.key()``,
    ``identity`` the version's ``Manifest.digest``."""
    return _key(model, version, generation, identity,
                (customer_id, k, tuple(sorted(exclusions)), tuple(recent), exclude_seen, tuple(live), filter_key))


def similar_key(model: str, version: int, candidate_id: str, k: int, exclusions: frozenset[str], *,
                generation: int = 0, filter_key: str = "", identity: str = "") -> str:
    """The key of a RecommendSimilar result (its shape starts with a marker no
    customer request has, so the two kinds never share a key)."""
    return _key(model, version, generation, identity,
                ("similar", candidate_id, k, tuple(sorted(exclusions)), filter_key))


class ResultCache:
    """Async get/put of recommendation results. Safe for one event loop.

    Concurrent ``get_remote`` calls become one MGET: the batcher takes whatever
    is queued when it runs and never waits for more, so batching adds no
    latency, and under load it saves a round trip and redis-py's per-command
    overhead per request. A caller that batches its own lookups (the query
    service's micro-batcher) sends them with ``get_remote_many``. Writes wait
    ``WRITE_DELAY_S`` for others to share their pipeline (with an in-process
    tier, which answers this replica meanwhile).
    """

    def __init__(self, config: CacheConfig):
        self.config = config
        # The live history uses this link too: one connection pool and one outage backoff per replica.
        self.link: RedisLink | None = (
            RedisLink(config.url, config.password, config.timeout_s, config.retry_after_s) if config.url else None)
        if self.link is not None:
            self.link.expect("MGET", "SET")
        if config.mac_key:
            self._mac_key = config.mac_key.encode()
        else:
            self._mac_key = secrets.token_bytes(32)
            if self.link is not None:
                log.warning("no --cache-key-file: values in Redis are authenticated with a key of this process "
                            "only, so other replicas and restarts cannot use them")
        self._invalid_log = LogThrottle()
        self._local: LocalTier | None = (
            LocalTier(int(config.local_mb * (1 << 20)), config.ttl_s, _local_bytes) if config.local_mb > 0 else None)
        self._gets: MicroBatcher[str, object] = MicroBatcher(self._mget, PIPELINED, MGET_BATCHER)
        self._mget_sizes = BATCH_SIZE.labels(MGET_BATCHER)
        self._writes: dict[str, CachedResult] = {}  # results waiting for their pipeline (a later put wins)
        self._written: asyncio.Future | None = None  # set once the pipeline carrying ``_writes`` is done
        self._flush_at: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task] = set()

    @property
    def holds_local(self) -> bool:
        """Whether results are kept in process (``get_local`` can hit)."""
        return self._local is not None

    async def _mget(self, keys: list[str]) -> list[object]:  # bytes, None (no such key) or UNREACHED
        return await self.link.mget("MGET", keys)

    def _seal(self, key: str, result: CachedResult, expires_ms: int) -> bytes:
        return seal(self._mac_key, key, _EXPIRES.pack(expires_ms) + result.encode())

    def _open(self, key: str, value: bytes) -> tuple[CachedResult, int] | None:
        """The result a Redis value holds and when it expires (ms since the epoch), if this
        service wrote it for ``key`` (MAC) and it is well formed."""
        payload = unseal(self._mac_key, key, value)
        if payload is None or len(payload) < _EXPIRES.size:
            return None
        result = CachedResult.decode(payload[_EXPIRES.size:])
        return None if result is None else (result, _EXPIRES.unpack_from(payload)[0])

    def _keep_local(self, key: str, result: CachedResult, ttl_s: float | None = None) -> None:
        if self._local is not None:
            self._local.put(key, result, ttl_s)  # not held when larger than the whole tier: Redis alone keeps it

    def _flush(self) -> None:
        values, written = self._writes, self._written
        self._writes, self._written = {}, None
        task = asyncio.get_running_loop().create_task(self._mset(values, written))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _mset(self, values: dict[str, CachedResult], written: asyncio.Future) -> None:
        try:
            expires_ms = int(time.time() * 1000) + self.config.ttl_s * 1000
            sealed = {key: self._seal(key, result, expires_ms) for key, result in values.items()}
            ttl_ms = self.config.ttl_s * 1000
            await self.link.pipelined("SET", list(sealed), lambda pipe, key: pipe.set(key, sealed[key], px=ttl_ms),
                                      write=True)
        finally:
            written.set_result(None)

    async def get(self, key: str) -> CachedResult | None:
        """The result under ``key`` from the in-process tier, else from Redis; None on a miss."""
        local = self.get_local(key)
        return local if local is not None else await self.get_remote(key)

    def get_local(self, key: str) -> CachedResult | None:
        """The result under ``key`` in the in-process tier, or None."""
        local = self._local.get(key) if self._local is not None else None
        if local is not None:
            _LOCAL_HIT.inc()
        return local

    async def get_remote(self, key: str) -> CachedResult | None:
        """The result under ``key`` in Redis (kept in process after), or None on a
        miss, a bad value or when Redis is unreachable. Concurrent calls share an MGET."""
        if self._unasked(1):
            return None
        try:
            raw = await self._gets.submit(key)
        except ResourceExhausted:  # more lookups queued than Redis keeps up with: this one is a miss
            _SKIPPED.inc()
            return None
        return self._from_reply(key, raw)

    async def get_remote_many(self, keys: list[str]) -> list[CachedResult | None]:
        """``get_remote`` of each key, in one MGET (for a caller that batches its lookups itself)."""
        if self._unasked(len(keys)):
            return [None] * len(keys)
        self._mget_sizes.observe(len(keys))
        return [self._from_reply(key, raw) for key, raw in zip(keys, await self._mget(keys))]

    def _unasked(self, keys: int) -> bool:
        """Whether lookups of ``keys`` keys go without asking Redis, counted as what they are:
        misses without Redis, skipped while it is backed off after an error."""
        if self.link is None:
            _MISS.inc(keys)
            return True
        if not self.link.available():
            _SKIPPED.inc(keys)
            return True
        return False

    def _from_reply(self, key: str, raw: object) -> CachedResult | None:
        """The result of Redis's reply ``raw`` for ``key``, counted by what it was."""
        if raw is UNREACHED:  # Redis, or the cluster node holding the key, failed or is backed off
            _SKIPPED.inc()
            return None
        if raw is None:
            _MISS.inc()
            return None
        opened = self._open(key, raw)
        if opened is None:
            _INVALID.inc()
            if self._invalid_log.due(None, 60) is not None:  # one line per minute, however many bad values
                log.warning("a Redis value (key %s) is not one this service wrote (bad MAC or shape): treated as a "
                            "miss; see recsys_cache_events_total{event=\"invalid\"} for the count", key)
            return None
        result, expires_ms = opened
        _HIT.inc()  # Redis holds it, so by Redis's clock its TTL has not passed
        # Held in process for what is left of its TTL by the writer's clock (the tier holds nothing longer than a
        # TTL, if the writer's clock is ahead of this one), not at all when this clock reads it expired.
        left_s = expires_ms / 1000 - time.time()
        if left_s > 0:
            self._keep_local(key, result, left_s)
        return result

    async def put(self, key: str, result: CachedResult) -> None:
        """``put_in_background``, returning once Redis has the value (or the write failed or was dropped)."""
        written = self.put_in_background(key, result)
        if written is not None:
            await asyncio.shield(written)

    def put_in_background(self, key: str, result: CachedResult) -> asyncio.Future | None:
        """Keeps ``result`` in process now and queues its Redis write, which goes
        out with the others queued within ``WRITE_DELAY_S`` as one pipeline;
        returns that pipeline's future, None if the write is dropped."""
        self._keep_local(key, result)
        if self.link is None or not self.link.writable():
            return None
        if len(self._writes) >= MAX_QUEUED_WRITES:
            _DROPPED.inc()
            return None
        self._writes[key] = result
        if self._written is None:
            loop = asyncio.get_running_loop()
            self._written = loop.create_future()
            self._flush_at = loop.call_later(WRITE_DELAY_S if self._local is not None else 0, self._flush)
        return self._written

    async def close(self) -> None:
        if self._written is not None:
            self._flush_at.cancel()
            self._flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._gets.close()
        if self.link is not None:
            await self.link.close()
