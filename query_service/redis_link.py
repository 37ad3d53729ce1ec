"""A query replica's connection to Redis, shared by the result cache and the
live interaction history, and its outage backoff.

After any Redis error the link reports itself unavailable for
``retry_after_s``: readers then skip Redis instead of each paying a timeout,
so an outage costs the replica no latency, and the log gets one line per
outage rather than one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

import prometheus_client
import redis.asyncio as redis
from redis.exceptions import RedisError

from query_service.batching import BatchingConfig

log = logging.getLogger(__name__)

# What a failed Redis call raises: redis-py's own errors, socket errors and its timeouts.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# Concurrent requests' Redis calls go out together: whatever queued while the
# previous round trips were out, never waiting for more, so batching adds no
# latency and under load saves a round trip and redis-py's per-command cost.
PIPELINED = BatchingConfig(max_batch_size=256, max_wait_ms=0.0, max_in_flight=4)

REDIS_ERRORS_TOTAL = prometheus_client.Counter("recsys_redis_errors_total", "Failed Redis calls by operation",
                                               ["op"])


class RedisLink:
    """One Redis client and the time until which Redis is taken as down."""

    def __init__(self, url: str, password: str, timeout_s: float, retry_after_s: float):
        self.client = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     password=password or None)
        self.retry_after_s = retry_after_s
        self._off_until = 0.0

    def available(self) -> bool:
        """False within ``retry_after_s`` of the last error."""
        return time.monotonic() >= self._off_until

    def failed(self, op: str, error: Exception) -> None:
        """Records a failed call: logs it if Redis was taken as up, and keeps Redis off for ``retry_after_s``."""
        REDIS_ERRORS_TOTAL.labels(op).inc()
        if self.available():
            log.warning("redis %s failed (%s: %s); serving without Redis (no result cache, no live history) "
                        "for %.1fs", op, type(error).__name__, error, self.retry_after_s)
        self._off_until = time.monotonic() + self.retry_after_s

    async def close(self) -> None:
        await self.client.aclose()
