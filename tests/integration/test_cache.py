"""The result cache against a real Redis, including Redis going away. Tests of the
Redis tier turn the in-process tier off (``local_entries=0``); the last tests cover it."""

import asyncio

import pytest
import redis.asyncio as redis

from query_service.cache import CacheConfig, CachedResult, ResultCache, cache_key
from tests.conftest import RedisProcess

pytestmark = pytest.mark.integration


def test_key_carries_model_and_version_and_request_shape():
    base = cache_key("m", 3, "c1", 10, frozenset({"a", "b"}))
    assert base.startswith("recsys:m:v3:")
    assert base == cache_key("m", 3, "c1", 10, frozenset({"b", "a"}))
    others = {
        cache_key("m", 4, "c1", 10, frozenset({"a", "b"})),
        cache_key("n", 3, "c1", 10, frozenset({"a", "b"})),
        cache_key("m", 3, "c2", 10, frozenset({"a", "b"})),
        cache_key("m", 3, "c1", 11, frozenset({"a", "b"})),
        cache_key("m", 3, "c1", 10, frozenset({"a"})),
    }
    assert base not in others and len(others) == 5


async def test_round_trip_and_ttl(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url, ttl_s=1, local_entries=0))
    key = cache_key("m", 1, "round-trip", 2, frozenset())
    assert await cache.get(key) is None
    await cache.put(key, CachedResult(["i1", "i2"], [2.5, 1.0], "model"))
    assert await cache.get(key) == CachedResult(["i1", "i2"], [2.5, 1.0], "model")
    await asyncio.sleep(1.2)
    assert await cache.get(key) is None
    await cache.close()


async def test_outage_degrades_to_misses_then_recovers():
    redis = RedisProcess().start()
    cache = ResultCache(CacheConfig(redis.url, retry_after_s=0.3, local_entries=0))
    key = cache_key("m", 1, "outage", 1, frozenset())
    try:
        await cache.put(key, CachedResult(["i1"], [1.0], "model"))
        redis.stop()
        assert await cache.get(key) is None  # error -> miss, not an exception
        await cache.put(key, CachedResult(["i9"], [9.0], "model"))  # dropped quietly
        redis.start()
        await asyncio.sleep(0.35)
        await cache.put(key, CachedResult(["i2"], [2.0], "model"))
        assert await cache.get(key) == CachedResult(["i2"], [2.0], "model")
    finally:
        await cache.close()
        redis.stop()


async def test_concurrent_gets_and_puts_are_batched_and_each_gets_its_own_value(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url, local_entries=0))
    stats = redis.from_url(redis_server.url)

    async def mget_calls() -> int:
        return (await stats.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0)

    keys = [cache_key("m", 1, f"batch-{i}", 3, frozenset()) for i in range(50)]
    await asyncio.gather(*(cache.put(key, CachedResult([f"i{i}"], [float(i)], "model"))
                           for i, key in enumerate(keys)))
    before = await mget_calls()
    results = await asyncio.gather(*(cache.get(key) for key in keys))
    assert [r.ids for r in results] == [[f"i{i}"] for i in range(50)]
    assert await mget_calls() - before < 10  # 50 concurrent gets, a handful of MGETs
    await cache.close()
    await stats.aclose()


async def test_local_tier_serves_through_a_redis_outage_and_fills_from_redis():
    redis_process = RedisProcess().start()
    writer = ResultCache(CacheConfig(redis_process.url))
    reader = ResultCache(CacheConfig(redis_process.url))  # another replica, sharing Redis
    mine, shared = cache_key("m", 1, "local", 1, frozenset()), cache_key("m", 1, "shared", 1, frozenset())
    try:
        await writer.put(mine, CachedResult(["i1"], [1.0], "model"))
        await writer.put(shared, CachedResult(["i2"], [2.0], "model"))
        assert await reader.get(shared) == CachedResult(["i2"], [2.0], "model")  # from Redis
        redis_process.stop()
        assert await writer.get(mine) == CachedResult(["i1"], [1.0], "model")
        assert await reader.get(shared) == CachedResult(["i2"], [2.0], "model")  # kept locally
        assert await reader.get(mine) is None  # never seen by this replica, Redis is down
    finally:
        await writer.close()
        await reader.close()
        redis_process.stop()


async def test_local_tier_is_bounded_and_expires(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url, ttl_s=1, local_entries=2))
    keys = [cache_key("m", 1, f"bounded-{i}", 1, frozenset()) for i in range(3)]
    for i, key in enumerate(keys):
        await cache.put(key, CachedResult([f"i{i}"], [float(i)], "model"))
    assert len(cache._local) == 2 and keys[0] not in cache._local  # least recently used went first
    await asyncio.sleep(1.2)
    assert await cache.get(keys[2]) is None  # expired in both tiers
    await cache.close()
