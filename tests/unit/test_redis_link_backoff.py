"""The Redis link's back-off against a real redis-server on a free port: reads and writes back off
apart, one timeout is not an outage, and the log tells an outage's start, its causes and its end."""

import asyncio
import logging

import pytest
import redis.asyncio as redis

from query_service.storage.cache import CacheConfig, CachedResult, ResultCache, cache_key
from query_service.storage.live_history import LiveHistory
from query_service.storage.redis_link import UNREACHED
from serving.errors import Unavailable
from tests.conftest import RedisProcess

RESULT = CachedResult(["i1"], [1.0], "model")


def link_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "query_service.storage.redis_link"]


@pytest.fixture
def server():
    process = RedisProcess().start()
    yield process
    process.stop()


async def test_a_redis_refusing_writes_keeps_serving_reads_and_failed_records_leave_reads_on(server, caplog):
    """Out of memory under noeviction, Redis refuses SET and the live history's appends but answers
    MGET and LRANGE: exclude_seen must keep seeing the recorded items (it lost them for the whole
    write outage, as one failed write switched reads off, and each failed record re-extended that)."""
    caplog.set_level(logging.WARNING, "query_service.storage.redis_link")
    cache = ResultCache(CacheConfig(server.url, local_mb=0, timeout_s=1.0, retry_after_s=0.3))
    history = LiveHistory(cache.link, "m")
    raw = redis.from_url(server.url)
    stored, refused = (cache_key("m", 1, customer, 1, frozenset()) for customer in ("stored", "refused"))
    try:
        assert await history.record("c1", ("i1",)) == 1
        await cache.put(stored, RESULT)
        await raw.config_set("maxmemory", 1)  # below what Redis holds: every write is refused (OOM)
        await cache.put(refused, RESULT)  # dropped quietly
        for _ in range(3):
            with pytest.raises(Unavailable, match="did not take the interactions"):
                await history.record("c1", ("i2",))
        assert await history.get("c1") == ("i1",)
        assert cache.link.available() and await cache.get(stored) == RESULT
        assert not cache.link.writable()
        [line] = link_lines(caplog)
        assert "redis SET failed (OutOfMemoryError" in line and "reads go on" in line
        await raw.config_set("maxmemory", 0)
        await asyncio.sleep(0.35)
        assert await history.record("c1", ("i2",)) == 2
        assert "Redis answers again after" in link_lines(caplog)[-1]
        await cache.put(refused, RESULT)
        assert await cache.get(refused) == RESULT
    finally:
        await cache.close()
        await raw.aclose()


async def test_the_log_names_an_outage_once_each_cause_with_a_hint_for_auth_and_its_end(caplog):
    """One line at the start, none per back-off while the cause stays, one when it changes (a
    restart with another requirepass: the lasting cause was never logged), one when Redis is back."""
    caplog.set_level(logging.WARNING, "query_service.storage.redis_link")
    server = RedisProcess().start()
    cache = ResultCache(CacheConfig(server.url, local_mb=0, timeout_s=1.0, retry_after_s=0.1))
    link, key = cache.link, cache_key("m", 1, "log", 1, frozenset())
    relocked = RedisProcess("--requirepass", "another", port=server.port)
    raw = redis.from_url(server.url, password="another")
    try:
        assert await link.mget("MGET", [key]) == [None]
        server.stop()
        for _ in range(2):  # a second back-off, the same cause
            assert await link.mget("MGET", [key]) == [UNREACHED]
            await asyncio.sleep(0.15)
        relocked.start()
        assert await link.mget("MGET", [key]) == [UNREACHED]
        await asyncio.sleep(0.15)
        await raw.config_set("requirepass", "")
        assert await link.mget("MGET", [key]) == [None]
        start, change, back = link_lines(caplog)
        assert "redis MGET failed (ConnectionError" in start and "serving without Redis" in start
        assert "reads still fail" in change and "now with AuthenticationError" in change
        assert "check --redis-password-file" in change
        assert back.startswith("Redis answers again after")
    finally:
        await cache.close()
        await raw.aclose()
        relocked.stop()
        server.stop()


async def test_one_timeout_is_no_outage_but_a_second_within_the_back_off_is(server):
    """On a loaded host a call misses its 50 ms now and then with Redis healthy: one such miss switched
    the cache and every live history off for 2 s. Redis paused (CLIENT PAUSE) times out every call
    (a timeout of 0.2 s, not 50 ms: no call times out on a loaded test machine before the pause)."""
    cache = ResultCache(CacheConfig(server.url, local_mb=0, timeout_s=0.2, retry_after_s=5.0))
    raw = redis.from_url(server.url)
    key = cache_key("m", 1, "timeout", 1, frozenset())
    try:
        await raw.client_pause(1000, all=True)
        assert await cache.link.mget("MGET", [key]) == [UNREACHED]
        assert cache.link.available() and cache.link.writable()
        assert await cache.link.mget("MGET", [key]) == [UNREACHED]
        assert not cache.link.available() and not cache.link.writable()
    finally:
        await raw.client_unpause()
        await cache.close()
        await raw.aclose()


async def test_writes_timing_out_back_off_writes_only(server):
    """``CLIENT PAUSE ... WRITE``: writes time out while reads answer, and keep being read."""
    cache = ResultCache(CacheConfig(server.url, local_mb=0, timeout_s=0.2, retry_after_s=5.0))
    raw = redis.from_url(server.url)
    stored, paused = (cache_key("m", 1, customer, 1, frozenset()) for customer in ("before", "paused"))
    try:
        await cache.put(stored, RESULT)
        await raw.client_pause(1000, all=False)
        await cache.put(paused, RESULT)
        await cache.put(paused, RESULT)
        assert cache.link.available() and await cache.get(stored) == RESULT
        assert not cache.link.writable()
    finally:
        await raw.client_unpause()
        await cache.close()
        await raw.aclose()
