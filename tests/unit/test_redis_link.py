"""``--redis-url`` forms: a single server, and a Redis Cluster named by its startup nodes."""

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from query_service.storage.cache import CacheConfig
from query_service.storage.redis_link import RedisLink, cluster_client
from settings.flags import ConfigError


def test_a_cluster_url_lists_every_startup_node_and_applies_credentials_to_all():
    client = cluster_client("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"
                            "?health_check_interval=5")
    nodes = client.nodes_manager.startup_nodes
    assert sorted(nodes) == ["10.0.0.1:7000", "10.0.0.2:7001", "::1:7002"]
    assert {(n.connection_kwargs["username"], n.connection_kwargs["password"]) for n in nodes.values()} == {
        ("app", "s@cret")}
    assert all(n.connection_kwargs["health_check_interval"] == 5 for n in nodes.values())


def test_tls_cluster_and_plain_server():
    assert cluster_client("rediss+cluster://h:7000").connection_kwargs["connection_class"] is SSLConnection
    link = RedisLink("redis+cluster://127.0.0.1:7000", "pw", 0.05, 1.0)
    assert link.cluster and isinstance(link.client, RedisCluster)
    assert link.client.nodes_manager.startup_nodes["127.0.0.1:7000"].connection_kwargs["password"] == "pw"
    assert not RedisLink("redis://127.0.0.1:6379/0", "", 0.05, 1.0).cluster


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://host-without-port", "redis+cluster://h:1,,x"])
def test_a_cluster_url_without_host_port_pairs_is_refused(url):
    with pytest.raises(ValueError, match="host:port"):
        cluster_client(url)


@pytest.mark.parametrize("url", ["localhost:6379", "127.0.0.1:6379", "http://127.0.0.1:6379"])
def test_a_redis_url_without_a_redis_scheme_is_a_flag_error(url):
    """redis-py refused it only when the replica first connected, with a traceback."""
    with pytest.raises(ConfigError, match="names no Redis: give redis://HOST:PORT"):
        CacheConfig(url=url)
    for good in ("", "redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock", "redis+cluster://h:7000"):
        assert CacheConfig(url=good).url == good
