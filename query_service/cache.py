"""Result cache: a bounded in-process LRU in front of Redis.

Keys carry model and version, so a promotion can never serve a previous
version's results; values expire after a bounded TTL. A key names everything a
result depends on (version, customer, k, exclusions, recent items), so an entry
can never be stale within its TTL, and the in-process tier needs no
invalidation: it saves the Redis round trip (and redis-py's per-command cost)
for the hottest customers of each replica, while Redis shares results across
replicas and restarts.

Redis is an optimisation, never a dependency: any Redis error makes the cache
report a miss (get) or drop the write (put), and after an error Redis stays
off for ``retry_after_s`` so an outage costs no per-request timeouts; the
in-process tier keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import cachetools
import prometheus_client
import redis.asyncio as redis
from redis.exceptions import RedisError

from query_service.batching import BatchingConfig, MicroBatcher
from settings.flags import option, require

log = logging.getLogger(__name__)

CACHE_EVENTS = prometheus_client.Counter(
    "recsys_cache_events_total", "Result cache lookups (local_hit, hit, miss, skipped) and Redis errors", ["event"])


@dataclass(frozen=True)
class CacheConfig:
    url: str = option("", "result cache, e.g. redis://127.0.0.1:6379/0; empty: no cache", flag="redis-url")
    ttl_s: int = option(300, "result cache TTL in seconds", flag="cache-ttl-s")
    timeout_s: float = option(0.05, "timeout of each Redis call", flag="redis-timeout-s")
    retry_after_s: float = option(2.0, "after a Redis error, serve uncached this long before trying again",
                                  flag="redis-retry-after-s")
    local_entries: int = option(50_000, "results kept in process in front of Redis (0: none); ~1 KB each at k = 10",
                                flag="local-cache-entries")

    def __post_init__(self) -> None:
        require(self.ttl_s >= 1, "ttl_s", "must be >= 1")
        require(self.timeout_s > 0 and self.retry_after_s >= 0, "timeout_s", "must be positive")
        require(self.local_entries >= 0, "local_entries", "must be >= 0")


@dataclass(frozen=True)
class CachedResult:
    ids: list[str]
    scores: list[float]
    source: str


def cache_key(model: str, version: int, customer_id: str, k: int, exclusions: frozenset[str],
              recent: tuple[str, ...] = (), exclude_seen: bool = False) -> str:
    """``recsys:<model>:v<version>:<digest of the request shape>``; the readable
    prefix lets an operator drop one version's entries with SCAN/DEL, the digest
    bounds key length."""
    shape = json.dumps([customer_id, k, sorted(exclusions), list(recent), exclude_seen], ensure_ascii=False)
    return f"recsys:{model}:v{version}:{hashlib.sha256(shape.encode()).hexdigest()[:32]}"


class ResultCache:
    """Async get/put of recommendation results. Safe for one event loop.

    Concurrent gets become one MGET and concurrent puts one pipeline: the
    batchers take whatever is queued when they run and never wait for more,
    so batching adds no latency, and under load it saves a round trip and
    redis-py's per-command overhead per request.
    """

    def __init__(self, config: CacheConfig):
        self.config = config
        self._redis = redis.from_url(config.url, socket_timeout=config.timeout_s,
                                     socket_connect_timeout=config.timeout_s)
        self._off_until = 0.0
        self._local: cachetools.TTLCache | None = (
            cachetools.TTLCache(config.local_entries, config.ttl_s) if config.local_entries > 0 else None)
        opportunistic = BatchingConfig(max_batch_size=256, max_wait_ms=0.0, max_in_flight=4)
        self._gets: MicroBatcher[str, bytes | None] = MicroBatcher(self._mget, opportunistic)
        self._puts: MicroBatcher[tuple[str, str], None] = MicroBatcher(self._mset, opportunistic)
        self._pending: set[asyncio.Task] = set()

    def _available(self) -> bool:
        return time.monotonic() >= self._off_until

    def _failed(self, op: str, error: Exception) -> None:
        CACHE_EVENTS.labels("error").inc()
        if self._available():
            log.warning("redis %s failed (%s: %s); serving uncached for %.1fs",
                        op, type(error).__name__, error, self.config.retry_after_s)
        self._off_until = time.monotonic() + self.config.retry_after_s

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        try:
            return await self._redis.mget(keys)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed("MGET", e)
            return [None] * len(keys)

    async def _mset(self, items: list[tuple[str, str]]) -> list[None]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=self.config.ttl_s)
                await pipe.execute()
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed("SET", e)
        return [None] * len(items)

    async def get(self, key: str) -> CachedResult | None:
        if self._local is not None and (local := self._local.get(key)) is not None:
            CACHE_EVENTS.labels("local_hit").inc()
            return local
        if not self._available():
            CACHE_EVENTS.labels("skipped").inc()
            return None
        raw = await self._gets.submit(key)
        CACHE_EVENTS.labels("hit" if raw is not None else "miss").inc()
        if raw is None:
            return None
        ids, scores, source = json.loads(raw)
        result = CachedResult(ids, scores, source)
        if self._local is not None:
            self._local[key] = result
        return result

    async def put(self, key: str, result: CachedResult) -> None:
        if self._local is not None:
            self._local[key] = result
        if self._available():
            await self._puts.submit((key, json.dumps([result.ids, result.scores, result.source])))

    def put_in_background(self, key: str, result: CachedResult) -> None:
        """Writes without making the caller wait; the task is kept referenced
        until done so it is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(self.put(key, result))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._gets.close()
        await self._puts.close()
        await self._redis.aclose()
