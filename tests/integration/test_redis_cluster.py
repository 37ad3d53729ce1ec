"""The query service on a Redis Cluster of three masters (``redis+cluster://``):
cache hits served from keys on every master, RecordInteractions kept on the
cluster, a master SIGKILLed under a Recommend load with no request failing
(its keys become misses, the other masters keep serving theirs), and a master
restarted on its port, or a replica promoted in its place, serving its keys
again within a back-off or two."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections import Counter

import grpc
import pytest
from redis import Redis
from redis.cluster import RedisCluster

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.storage.cache import CacheConfig, CachedResult, ResultCache, cache_key
from query_service.storage.live_history import LiveHistory, LiveHistoryConfig, history_key
from query_service.storage.redis_link import MAX_CONNECTIONS
from recsys_client.loadtest import LoadConfig, run_load
from tests.integration.conftest import MODEL, index_slot, query_replica
from tests.processes import RedisClusterProcesses, RedisProcess, wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server and redis-cli are not installed")]

CUSTOMERS = [f"c{i:06d}" for i in range(60)]  # their keys hash to slots on all three masters


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    redis_cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster")).start()
    yield redis_cluster
    redis_cluster.stop()


@pytest.fixture(scope="module")
def query(trained_registry, cluster, tmp_path_factory):
    """Index slot blue and a query replica on the cluster, without the in-process
    cache tier (every hit comes from Redis) and with a short backoff."""
    logs = tmp_path_factory.mktemp("cluster-logs")
    index = index_slot(trained_registry, "blue", logs / "index.log").start()
    try:
        replica = query_replica(trained_registry, [index], logs / "query.log", "--redis-url", cluster.url,
                                "--local-cache-mb", "0", "--redis-retry-after-s", "0.5").start()
        try:
            yield replica
        finally:
            replica.stop()
    finally:
        index.stop()


@pytest.fixture(scope="module")
def stub(query):
    with grpc.insecure_channel(query.address) as channel:
        yield pb_grpc.QueryServiceStub(channel)


def recommend(stub, customer_id: str, **kwargs) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(customer_id=customer_id, k=10, **kwargs), timeout=10)


def keys_per_master(cluster: RedisClusterProcesses, pattern: str) -> Counter:
    """How many keys matching ``pattern`` each live master holds."""
    counts = Counter()
    for node in cluster.nodes:
        if node.proc is not None:
            client = RedisCluster(host="127.0.0.1", port=node.port)
            try:
                counts[node.port] = len(client.keys(pattern, target_nodes=client.get_node("127.0.0.1", node.port)))
            finally:
                client.close()
    return counts


def test_cache_hits_are_served_from_every_master(stub, cluster):
    first = [recommend(stub, c) for c in CUSTOMERS]
    second = [recommend(stub, c) for c in CUSTOMERS]
    assert not any(r.cache_hit for r in first)
    assert all(r.cache_hit for r in second)
    assert [r.candidates for r in second] == [r.candidates for r in first]
    per_master = keys_per_master(cluster, f"recsys:{MODEL}:v*")
    assert len(per_master) == 3 and min(per_master.values()) >= 5, per_master


def test_record_interactions_is_kept_on_the_cluster_and_excluded_as_seen(stub, cluster):
    for customer in CUSTOMERS[:20]:
        top = recommend(stub, customer, exclude_seen=True).candidates[0].candidate_id
        response = stub.RecordInteractions(pb.RecordInteractionsRequest(customer_id=customer, candidate_ids=[top]),
                                           timeout=10)
        assert response.history_length >= 1
        after = [c.candidate_id for c in recommend(stub, customer, exclude_seen=True).candidates]
        assert top not in after, customer
    assert len(keys_per_master(cluster, f"recsys:{MODEL}:hist:*")) == 3


async def test_a_key_of_another_type_costs_that_key_only(cluster):
    """A list under one cache key (someone else's write) is that key's miss: the keys its master
    holds beside it still hit, the master is not backed off, and the next write replaces it."""
    cache = ResultCache(CacheConfig(cluster.url, local_mb=0, mac_key="shared"))
    keys = [cache_key(MODEL, 1, c, 10, frozenset()) for c in CUSTOMERS]
    raw = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        for i, key in enumerate(keys):
            await cache.put(key, CachedResult([f"i{i}"], [1.0], "model"))
        raw.delete(keys[0])
        raw.rpush(keys[0], "not a result")
        found = await cache.get_remote_many(keys)
        assert found[0] is None and [r.ids for r in found[1:]] == [(f"i{i}",) for i in range(1, len(keys))]
        await cache.put(keys[0], CachedResult(["i0"], [1.0], "model"))
        assert (await cache.get(keys[0])).ids == ("i0",)
    finally:
        raw.close()
        await cache.close()


async def test_recording_interactions_on_a_cluster_blocks_no_event_loop(cluster, monkeypatch):
    """redis-py's cluster client queues each command of a MULTI/EXEC by starting a thread (with an event
    loop of its own) and joining it: ~0.5 ms of the replica's event loop blocked per command, which a burst
    of appends stretched past the connect timeout of the calls beside them."""
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (started.append(thread.name), start(thread)))
    cache = ResultCache(CacheConfig(cluster.url, local_mb=0))
    history = LiveHistory(cache.link, "no-threads", LiveHistoryConfig(max_items=3))
    raw = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        raw.set(history_key("no-threads", "garbled"), "not a list")
        assert [await history.record(c, ("i1", "i2")) for c in CUSTOMERS[:6]] == [2] * 6
        assert await history.record(CUSTOMERS[0], ("i3", "i4")) == 3
        assert await history.record("garbled", ("i5",)) == 1
        assert started == []
        assert await asyncio.gather(history.get(CUSTOMERS[0]), history.get("garbled")) == [("i4", "i3", "i2"),
                                                                                            ("i5",)]
        assert raw.ttl(history_key("no-threads", CUSTOMERS[0])) > 0
    finally:
        raw.close()
        await cache.close()


@pytest.mark.alone  # 50 ms per Redis call: 22 timed out once beside another test's load
async def test_a_burst_of_concurrent_appends_is_kept_and_leaves_every_master_on(cluster):
    """RecordInteractions calls each take a connection of their key's master: a burst must queue for a
    bounded number per master. Each opening its own, their connects starved each other's connect timeout
    (past 100 a master, redis-py refused them), and each failure backed a healthy master off."""
    cache = ResultCache(CacheConfig(cluster.url + "?client_name=burst", local_mb=0))
    history = LiveHistory(cache.link, "burst")
    customers = [f"burst-{i}" for i in range(200)]
    try:
        await history.record("before-burst", ("i1",))  # the slot map read, as a serving replica has it
        replies = await asyncio.gather(*(history.record(c, ("i1",)) for c in customers), return_exceptions=True)
        assert [reply for reply in replies if isinstance(reply, Exception)] == []
        assert await asyncio.gather(*(history.get(c) for c in customers)) == [("i1",)] * len(customers)
        assert max(cluster_connections(cluster, "burst")) <= MAX_CONNECTIONS + 1  # + the slot map's
    finally:
        await cache.close()


def cluster_connections(cluster: RedisClusterProcesses, name: str) -> list[int]:
    """Connections of the clients called ``name`` to each master."""
    counts = []
    for node in cluster.nodes:
        with Redis(host="127.0.0.1", port=node.port) as client:
            counts.append(sum(c["name"] == name for c in client.client_list()))
    return counts


@pytest.mark.alone  # 2 s deadlines under load
async def test_a_master_killed_under_load_fails_no_request(query, cluster):
    async def kill_a_master() -> None:
        await asyncio.sleep(2.0)
        cluster.kill(1)

    killer = asyncio.create_task(kill_a_master())
    report = await run_load(LoadConfig(query.address, qps=100, duration_s=5, num_customers=300, timeout_s=2))
    await killer
    assert report["requests"]["scheduled"] == 500
    assert report["requests"]["errors"] == 0 and report["requests"]["dropped"] == 0, report["errors_by_code"]
    assert all(row["ok"] == row["requests"] for row in report["timeline"])
    # After the kill the other two masters still serve hits, and the lost one's keys are misses, not errors.
    async with grpc.aio.insecure_channel(query.address) as channel:
        aio_stub = pb_grpc.QueryServiceStub(channel)
        after = await asyncio.gather(*(aio_stub.Recommend(pb.RecommendRequest(customer_id=c, k=10), timeout=2)
                                       for c in CUSTOMERS))
    assert all(len(r.candidates) == 10 for r in after)
    assert 0.3 * len(CUSTOMERS) <= sum(r.cache_hit for r in after) < len(CUSTOMERS)


def cli(port: int, *args: str) -> str:
    """What ``redis-cli -p port args...`` prints ("" when the node does not answer)."""
    return subprocess.run([shutil.which("redis-cli"), "-p", str(port), *args], capture_output=True, text=True).stdout


def cluster_ok(ports: list[int]) -> bool:
    """Whether every node reports cluster_state:ok (a node just restarted answers CLUSTERDOWN until then)."""
    return all("cluster_state:ok" in cli(port, "cluster", "info") for port in ports)


async def recovers_within(cache: ResultCache, limit_s: float, what: str) -> None:
    """Writes and reads back a result under every key until all are hits, failing after ``limit_s``."""
    keys = [cache_key(MODEL, 1, c, 10, frozenset()) for c in CUSTOMERS]
    start = time.monotonic()
    while True:
        await asyncio.gather(*(cache.put(key, CachedResult([key], [1.0], "model")) for key in keys))
        found = await cache.get_remote_many(keys)
        if all(r is not None and r.ids == (key,) for key, r in zip(keys, found)):
            return
        assert time.monotonic() - start < limit_s, f"{what}: its keys are still missed after {limit_s}s"
        await asyncio.sleep(0.05)


RETRY_AFTER_S = 0.5
# One back-off per stale pooled connection (16 of them) would take 8 s: a margin for a loaded machine, well under it.
RECOVERY_S = 6 * RETRY_AFTER_S


def cache_on(cluster: RedisClusterProcesses) -> ResultCache:
    """A cache on ``cluster`` with a short back-off, and a timeout long enough that a loaded
    test machine causes no failures of its own (each would back a node off once more)."""
    return ResultCache(CacheConfig(cluster.url, local_mb=0, mac_key="shared", timeout_s=1.0,
                                   retry_after_s=RETRY_AFTER_S))


async def pool_connections(cache: ResultCache) -> None:
    """Concurrent batches, as under load: several pooled connections to each master."""
    keys = [cache_key(MODEL, 1, c, 10, frozenset()) for c in CUSTOMERS]
    await asyncio.gather(*(cache.get_remote_many(keys) for _ in range(16)))


@pytest.mark.alone  # bounds a recovery by back-offs
async def test_a_master_restarted_on_its_port_serves_its_keys_again_within_a_back_off_or_two(tmp_path):
    """Connections pooled to a master before it restarted are dead: unless the slot map refresh
    that a node failure starts recycles them, each fails in its turn and backs the node off again,
    one back-off per pooled connection."""
    cluster = RedisClusterProcesses(tmp_path).start()
    cache = cache_on(cluster)
    try:
        await recovers_within(cache, 5, "a new cluster")
        await pool_connections(cache)
        cluster.kill(0)
        cluster.nodes[0].start()  # its nodes-0.conf keeps its id and slots; its keys are gone
        wait_until(lambda: cluster_ok([node.port for node in cluster.nodes]), 15, "the master to rejoin")
        await recovers_within(cache, RECOVERY_S, "the restarted master")
    finally:
        await cache.close()
        cluster.stop()


@pytest.mark.alone  # bounds a recovery by back-offs
async def test_a_replica_promoted_for_a_lost_master_serves_its_keys_within_a_back_off_or_two(tmp_path):
    """The slot map names the lost master until it is read again: the refresh a node failure
    starts is what sends the keys to the replica promoted in its place."""
    cluster = RedisClusterProcesses(tmp_path).start()
    replica = RedisProcess("--cluster-enabled", "yes", "--cluster-node-timeout", "500",
                           "--cluster-require-full-coverage", "no", "--dir", str(tmp_path),
                           "--cluster-config-file", "nodes-replica.conf")
    cache = cache_on(cluster)
    try:
        replica.start()
        master = cluster.nodes[0].port
        subprocess.run([shutil.which("redis-cli"), "--cluster", "add-node", f"127.0.0.1:{replica.port}",
                        f"127.0.0.1:{master}", "--cluster-slave", "--cluster-master-id",
                        cli(master, "cluster", "myid").strip()], check=True, capture_output=True, timeout=30)
        wait_until(lambda: "master_link_status:up" in cli(replica.port, "info", "replication"), 15,
                   "the replica to sync")
        await recovers_within(cache, 5, "a new cluster")
        await pool_connections(cache)
        cluster.kill(0)
        others = [replica.port, *(node.port for node in cluster.nodes[1:])]
        wait_until(lambda: cli(replica.port, "role").startswith("master") and cluster_ok(others), 15,
                   "the replica to take over")
        await recovers_within(cache, RECOVERY_S, "the promoted replica")
    finally:
        await cache.close()
        replica.stop()
        cluster.stop()
