"""Redis result cache. Keys carry model and version, so a promotion can never
serve a previous version's results; values expire after a bounded TTL.

Redis is an optimisation, never a dependency: any Redis error makes the cache
report a miss (get) or drop the write (put), and after an error the cache stays
off for ``retry_after_s`` so an outage costs no per-request timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import prometheus_client
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CACHE_EVENTS = prometheus_client.Counter(
    "recsys_cache_events_total", "Result cache lookups and failures", ["event"])


@dataclass(frozen=True)
class CacheConfig:
    url: str
    ttl_s: int = 300
    timeout_s: float = 0.05
    retry_after_s: float = 2.0


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
    """Async get/put of recommendation results. Safe for one event loop."""

    def __init__(self, config: CacheConfig):
        self.config = config
        self._redis = redis.from_url(config.url, socket_timeout=config.timeout_s,
                                     socket_connect_timeout=config.timeout_s)
        self._off_until = 0.0
        self._pending: set[asyncio.Task] = set()

    def _available(self) -> bool:
        return time.monotonic() >= self._off_until

    def _failed(self, op: str, error: Exception) -> None:
        CACHE_EVENTS.labels("error").inc()
        if self._available():
            log.warning("redis %s failed (%s: %s); serving uncached for %.1fs",
                        op, type(error).__name__, error, self.config.retry_after_s)
        self._off_until = time.monotonic() + self.config.retry_after_s

    async def get(self, key: str) -> CachedResult | None:
        if not self._available():
            CACHE_EVENTS.labels("skipped").inc()
            return None
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed("GET", e)
            return None
        CACHE_EVENTS.labels("hit" if raw is not None else "miss").inc()
        if raw is None:
            return None
        ids, scores, source = json.loads(raw)
        return CachedResult(ids, scores, source)

    async def put(self, key: str, result: CachedResult) -> None:
        if not self._available():
            return
        value = json.dumps([result.ids, result.scores, result.source])
        try:
            await self._redis.set(key, value, ex=self.config.ttl_s)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed("SET", e)

    def put_in_background(self, key: str, result: CachedResult) -> None:
        """Writes without making the caller wait; the task is kept referenced
        until done so it is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(self.put(key, result))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()
