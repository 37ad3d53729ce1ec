"""The result cache against a real Redis, including Redis going away and values
written by someone else. Tests of the Redis tier turn the in-process tier off
(``local_mb=0``); the last tests cover it."""

import asyncio
import contextlib
import gc
import json
import time
import tracemalloc

import prometheus_client
import pytest
import redis.asyncio as redis

from query_service.storage import redis_link
from query_service.storage.cache import CacheConfig, CachedResult, ResultCache, cache_key
from query_service.storage.cache import MAC_BYTES
from query_service.storage.live_history import LiveHistory, history_key
from query_service.storage.redis_link import MAX_CONNECTIONS, UNREACHED
from serving.errors import ResourceExhausted
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
    cache = ResultCache(CacheConfig(redis_server.url, ttl_s=1, local_mb=0))
    key = cache_key("m", 1, "round-trip", 2, frozenset())
    assert await cache.get(key) is None
    await cache.put(key, CachedResult(["i1", "i2"], [2.5, 1.0], "model"))
    assert await cache.get(key) == CachedResult(["i1", "i2"], [2.5, 1.0], "model")
    await asyncio.sleep(1.2)
    assert await cache.get(key) is None
    await cache.close()


async def test_every_redis_operation_s_error_counter_is_exported_from_the_start(redis_server):
    # A series that appears with its first increment hides that increment, the first burst of errors after a start,
    # from rate() and the Redis-errors alert.
    cache = ResultCache(CacheConfig(redis_server.url))
    LiveHistory(cache.link, "m")
    for op in ("MGET", "SET", "LRANGE", "RecordInteractions"):
        assert prometheus_client.REGISTRY.get_sample_value("recsys_redis_errors_total", {"op": op}) is not None, op
    await cache.close()


async def test_outage_degrades_to_misses_then_recovers():
    redis = RedisProcess().start()
    cache = ResultCache(CacheConfig(redis.url, retry_after_s=0.3, local_mb=0))
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


async def test_connections_pooled_before_a_restart_fail_no_call_after_it():
    """A restart closes every pooled connection: each is found closed when taken, not by a failed call
    that backs Redis off again (for retry_after_s a time, one pooled connection after another)."""
    redis_process = RedisProcess().start()
    cache = ResultCache(CacheConfig(redis_process.url, local_mb=0))
    keys = [cache_key("m", 1, f"restart-{i}", 1, frozenset()) for i in range(8)]
    try:
        await asyncio.gather(*(cache.link.mget("MGET", [key]) for key in keys))  # 8 connections pooled
        redis_process.stop()
        redis_process.start()
        await asyncio.sleep(0.1)  # the loop sees the connections closed, as a serving replica's does at once
        assert await asyncio.gather(*(cache.link.mget("MGET", [key]) for key in keys)) == [[None]] * len(keys)
        assert cache.link.available()
    finally:
        await cache.close()
        redis_process.stop()


async def test_concurrent_gets_and_puts_are_batched_and_each_gets_its_own_value(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url, local_mb=0))
    stats = redis.from_url(redis_server.url)

    async def mget_calls() -> int:
        return (await stats.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0)

    keys = [cache_key("m", 1, f"batch-{i}", 3, frozenset()) for i in range(50)]
    await asyncio.gather(*(cache.put(key, CachedResult([f"i{i}"], [float(i)], "model"))
                           for i, key in enumerate(keys)))
    before = await mget_calls()
    results = await asyncio.gather(*(cache.get(key) for key in keys))
    assert [r.ids for r in results] == [(f"i{i}",) for i in range(50)]
    assert await mget_calls() - before < 10  # 50 concurrent gets, a handful of MGETs
    await cache.close()
    await stats.aclose()


async def test_local_tier_serves_through_a_redis_outage_and_fills_from_redis():
    redis_process = RedisProcess().start()
    writer = ResultCache(CacheConfig(redis_process.url, mac_key="shared"))
    reader = ResultCache(CacheConfig(redis_process.url, mac_key="shared"))  # another replica, sharing Redis
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


async def test_a_result_read_from_redis_is_held_in_process_for_what_is_left_of_its_ttl(redis_server):
    writer = ResultCache(CacheConfig(redis_server.url, ttl_s=2, local_mb=0, mac_key="shared"))
    reader = ResultCache(CacheConfig(redis_server.url, ttl_s=2, mac_key="shared"))
    raw = redis.from_url(redis_server.url)
    key = cache_key("m", 1, "ttl-left", 1, frozenset())
    try:
        await writer.put(key, CachedResult(["i1"], [1.0], "model"))
        await asyncio.sleep(1.2)
        assert await reader.get(key) == CachedResult(["i1"], [1.0], "model")  # from Redis, 0.8 s left
        await raw.delete(key)
        assert reader.get_local(key) is not None
        await asyncio.sleep(1.0)  # 2.2 s after the write: past the TTL, not past a TTL from the read
        assert reader.get_local(key) is None
        # Expired by the reader's clock while Redis, on a clock behind it, still holds the value: Redis's clock
        # rules whether it is served; the reader's that it is not held in process.
        await raw.set(key, writer._seal(key, CachedResult(["i2"], [2.0], "model"), int(time.time() * 1000) - 1))
        assert await reader.get(key) == CachedResult(["i2"], [2.0], "model")
        assert reader.get_local(key) is None
    finally:
        await writer.close()
        await reader.close()
        await raw.aclose()


@pytest.mark.parametrize("writer_skew_s, reader_skew_s", [(-3600, 0), (3600, 0), (0, 600)])
async def test_replicas_whose_clocks_differ_share_values_that_live_one_ttl(redis_server, monkeypatch,
                                                                          writer_skew_s, reader_skew_s):
    # An NTP step, or two hosts' clocks apart: an expiry from the writer's clock (PXAT) was in Redis's past for a
    # writer an hour behind (nothing stored), 13 TTLs away for one ahead, and every value read as expired by a
    # reader 10 minutes ahead.
    writer = ResultCache(CacheConfig(redis_server.url, ttl_s=300, local_mb=0, mac_key="shared"))
    reader = ResultCache(CacheConfig(redis_server.url, ttl_s=300, mac_key="shared"))
    raw = redis.from_url(redis_server.url)
    key = cache_key("m", 1, f"skew{writer_skew_s}:{reader_skew_s}", 1, frozenset())
    now = time.time
    try:
        monkeypatch.setattr(time, "time", lambda: now() + writer_skew_s)
        await writer.put(key, CachedResult(["i1"], [1.0], "model"))
        monkeypatch.setattr(time, "time", lambda: now() + reader_skew_s)
        assert 299_000 < await raw.pttl(key) <= 300_000
        assert await reader.get(key) == CachedResult(["i1"], [1.0], "model")
        if writer_skew_s > 0:  # held in process no longer than a TTL, whatever the writer's clock said
            assert reader._local._entries[key][0] - time.monotonic() <= 300
    finally:
        monkeypatch.setattr(time, "time", now)
        await writer.close()
        await reader.close()
        await raw.aclose()


def big_result(seed: int, k: int = 1000) -> CachedResult:
    """A k = 1000 result as the cache holds one (ids and scores decoded from JSON)."""
    return CachedResult.decode(json.dumps([[f"item-{seed}-{i:06d}" for i in range(k)],
                                           [float(k - i) for i in range(k)], "model"]).encode())


async def test_local_tier_is_bounded_in_bytes_and_expires(redis_server):
    budget_mb = 2.0
    cache = ResultCache(CacheConfig(redis_server.url, ttl_s=1, local_mb=budget_mb))
    keys = [cache_key("m", 1, f"bounded-{i}", 1000, frozenset()) for i in range(100)]
    tracemalloc.start()
    try:
        # ~100 x 210 KB offered to a 2 MiB tier: each result is counted with the response a hit may
        # build from it (about as large again; upb's memory, which tracemalloc does not see).
        for i, key in enumerate(keys):
            await cache.put(key, big_result(i))
        held_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cache._local.currsize <= budget_mb * (1 << 20) and 8 <= len(cache._local) < 20
    assert held_bytes < 1.3 * budget_mb * (1 << 20)  # the estimate is not far below the truth
    assert keys[0] not in cache._local and keys[-1] in cache._local  # least recently used went first
    await asyncio.sleep(1.2)
    assert await cache.get(keys[-1]) is None  # expired in both tiers
    await cache.close()


async def test_values_not_written_by_the_service_are_misses_and_get_overwritten(redis_server):
    secret = "a secret the query replicas share"
    cache = ResultCache(CacheConfig(redis_server.url, local_mb=0, mac_key=secret))
    other_replica = ResultCache(CacheConfig(redis_server.url, local_mb=0, mac_key=secret))
    stranger = ResultCache(CacheConfig(redis_server.url, local_mb=0))  # a random key of its own
    raw = redis.from_url(redis_server.url)
    key, other_key = (cache_key("m", 1, customer, 2, frozenset()) for customer in ("victim", "someone-else"))
    real = CachedResult(["i1", "i2"], [2.5, 1.0], "model")
    try:
        await cache.put(key, real)
        assert await other_replica.get(key) == real  # replicas with the key share results
        assert await stranger.get(key) is None
        genuine = await raw.get(key)
        forged = json.dumps([["fake"], [9.0], "model"]).encode()
        malformed = genuine[:MAC_BYTES] + b"{not json"
        await cache.put(other_key, CachedResult(["i9", "i8"], [3.0, 2.0], "model"))
        copied = await raw.get(other_key)  # a real value, but for another key
        for bad in (forged, b"x" * MAC_BYTES + forged, malformed, copied, b"", b"\xff" * 40):
            await raw.set(key, bad)
            assert await cache.get(key) is None, bad
        await cache.put(key, real)  # the miss path's answer replaces the bad value
        assert cache._open(key, await raw.get(key))[0] == real and await cache.get(key) == real
    finally:
        for c in (cache, other_replica, stranger):
            await c.close()
        await raw.aclose()


def test_decode_keeps_only_well_formed_results():
    good = CachedResult(["a", "b"], [2.0, 1.0], "model")
    assert CachedResult.decode(good.encode()) == good
    for bad in ([["a"], [1.0, 0.5], "model"], [["a", "a"], [2.0, 1.0], "model"], [["a", "b"], [1.0, 2.0], "model"],
                [["a"], [float("nan")], "model"], [[1], [1.0], "model"], [["a"], ["1"], "model"], [["a"], [1.0]],
                {"ids": ["a"]}, [["a"], [1.0], 7]):
        assert CachedResult.decode(json.dumps(bad).encode()) is None, bad


async def test_redis_password():
    redis_process = RedisProcess("--requirepass", "s3cret").start()
    right = ResultCache(CacheConfig(redis_process.url, local_mb=0, password="s3cret"))
    wrong = ResultCache(CacheConfig(redis_process.url, local_mb=0, password="guess"))
    key = cache_key("m", 1, "auth", 1, frozenset())
    try:
        await right.put(key, CachedResult(["i1"], [1.0], "model"))
        assert await right.get(key) == CachedResult(["i1"], [1.0], "model")
        await wrong.put(key, CachedResult(["i2"], [2.0], "model"))  # refused by Redis: dropped, no error
        assert await wrong.get(key) is None
    finally:
        await right.close()
        await wrong.close()
        redis_process.stop()


async def test_a_key_holding_a_value_of_another_type_costs_that_key_only(redis_server):
    """A string where a customer's live history list goes (someone else's write) is that customer's
    empty live history: the others read with it keep theirs, Redis stays on for the cache, and
    RecordInteractions replaces it rather than failing forever."""
    cache = ResultCache(CacheConfig(redis_server.url, local_mb=0, mac_key="shared"))
    history = LiveHistory(cache.link, "m", mac_key=b"shared")
    raw = redis.from_url(redis_server.url)
    key, result = cache_key("m", 1, "other-type", 1, frozenset()), CachedResult(["i9"], [9.0], "model")
    try:
        await history.record("tidy", ("i1", "i2"))
        await cache.put(key, result)
        await raw.set(history_key("m", "garbled"), "not a list")
        assert await asyncio.gather(history.get("tidy"), history.get("garbled")) == [("i2", "i1"), ()]
        assert cache.link.available() and await cache.get(key) == result
        assert await history.record("garbled", ("i3",)) == 1
        assert await history.get("garbled") == ("i3",) and await history.get("tidy") == ("i2", "i1")
    finally:
        await cache.close()
        await raw.aclose()


async def test_a_burst_of_concurrent_appends_is_kept_and_leaves_the_cache_and_live_history_on():
    """RecordInteractions calls each take a connection: a burst of them must queue for a bounded pool.
    redis-py's default pool refused callers past 100 connections, and the burst's own connects starved
    each other's connect timeout; each failure backed a healthy Redis off, losing appends and switching
    the cache and every live history off for everyone."""
    redis_process = RedisProcess().start()
    cache = ResultCache(CacheConfig(redis_process.url, local_mb=0))
    history = LiveHistory(cache.link, "m")
    stats = redis.from_url(redis_process.url)
    key, result = cache_key("m", 1, "after-burst", 1, frozenset()), CachedResult(["i1"], [1.0], "model")
    # A full collection of the suite's garbage (32-64 ms measured) landing in the burst outlasts its 50 ms connect
    # timeouts: that is the suite's heap, not the pool under test.
    gc.collect()
    try:
        replies = await asyncio.gather(*(history.record(f"burst-{i}", ("i1",)) for i in range(200)),
                                       return_exceptions=True)
        assert [reply for reply in replies if isinstance(reply, Exception)] == []
        assert cache.link.available()
        assert (await stats.info("clients"))["connected_clients"] <= MAX_CONNECTIONS + 1  # + stats' own
        assert await history.get("burst-7") == ("i1",)
        await cache.put(key, result)
        assert await cache.get(key) == result
    finally:
        await cache.close()
        await stats.aclose()
        redis_process.stop()


async def test_calls_waiting_too_long_for_a_connection_are_shed_without_backing_redis_off(monkeypatch):
    """A call that waits past POOL_WAIT_S for a connection is behind this replica's own calls, not a
    failed Redis: it is shed (RESOURCE_EXHAUSTED, a miss), and Redis stays on for everyone else."""
    monkeypatch.setattr(redis_link, "POOL_WAIT_S", 0.0)
    redis_process = RedisProcess().start()
    # The subject is the wait for a pooled connection, not Redis's own time: with the default 50 ms socket timeout,
    # a connect on the suite's loaded host timed out once (CI, stop 59) and backed Redis off.
    cache = ResultCache(CacheConfig(redis_process.url, local_mb=0, timeout_s=2.0))
    history = LiveHistory(cache.link, "m")
    try:
        replies = await asyncio.gather(*(history.record(f"shed-{i}", ("i1",)) for i in range(50)),
                                       return_exceptions=True)
        shed = [reply for reply in replies if isinstance(reply, Exception)]
        assert shed and all(isinstance(reply, ResourceExhausted) for reply in shed)
        assert cache.link.available()
        assert await history.get(f"shed-{replies.index(1)}") == ("i1",)
        key = cache_key("m", 1, "shed", 1, frozenset())
        async with contextlib.AsyncExitStack() as held:  # every connection busy: lookups and writes shed
            for _ in range(MAX_CONNECTIONS):
                await held.enter_async_context(cache.link.calling())
            assert await cache.get_remote_many([key]) == [None]
            assert await cache.link.pipelined("GET", [key], lambda pipe, k: pipe.get(k)) == [UNREACHED]
            await cache.put(key, CachedResult(["i1"], [1.0], "model"))
        assert cache.link.available() and await cache.get(key) is None
    finally:
        await cache.close()
        redis_process.stop()
