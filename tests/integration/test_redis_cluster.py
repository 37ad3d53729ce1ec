"""The query service on a Redis Cluster of three masters (``redis+cluster://``):
cache hits served from keys on every master, RecordInteractions kept on the
cluster, and a master SIGKILLed under a Recommend load with no request failing
(its keys become misses, the other masters keep serving theirs)."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter

import grpc
import pytest
from redis.cluster import RedisCluster

from protos.recsys.v1 import retrieval_pb2 as pb
from query_service.cache import CacheConfig, CachedResult, ResultCache, cache_key
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.loadtest import LoadConfig, run_load
from tests.integration.conftest import MODEL, index_slot, query_replica
from tests.processes import RedisClusterProcesses

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
