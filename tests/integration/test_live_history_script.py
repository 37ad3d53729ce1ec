"""RecordInteractions' append script goes out by its SHA1 (EVALSHA), not with its whole text each call (EVAL):
a server or node that lacks it (first call, restart, SCRIPT FLUSH) gets the text once, from the call itself,
so a cluster master that is down costs no other master's recordings."""

from __future__ import annotations

import shutil

import pytest
from redis import Redis

from query_service.storage.live_history import LiveHistory, LiveHistoryConfig, history_key
from query_service.storage.redis_link import RedisLink
from tests.processes import RedisClusterProcesses, RedisProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server and redis-cli are not installed")]


def script_calls(port: int) -> tuple[int, int]:
    """(EVAL calls, EVALSHA calls) the server on ``port`` has answered."""
    with Redis(host="127.0.0.1", port=port) as client:
        stats = client.info("commandstats")
    return tuple(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))


async def test_appends_send_the_script_once_and_then_its_sha():
    redis = RedisProcess().start()
    history = LiveHistory(RedisLink(redis.url, "", 1.0, 1.0), "sha", LiveHistoryConfig(max_items=3))
    try:
        assert [await history.record(f"c{i}", ("i1", "i2")) for i in range(20)] == [2] * 20
        assert script_calls(redis.port) == (1, 20)  # the first EVALSHA (counted) answered NOSCRIPT
        with Redis(host="127.0.0.1", port=redis.port) as client:
            client.script_flush()  # what a restart leaves
        assert await history.record("c0", ("i3", "i4")) == 3
        assert await history.get("c0") == ("i4", "i3", "i2")
        assert script_calls(redis.port) == (2, 21)
    finally:
        await history.close()
        await history.link.close()
        redis.stop()


async def test_a_master_down_costs_no_other_master_its_first_append(tmp_path):
    """The library's Script object loads a missing script with SCRIPT LOAD on every master: one master
    down, every other master's first append failed, and backed that healthy master off."""
    cluster = RedisClusterProcesses(tmp_path).start()
    link = RedisLink(cluster.url, "", 1.0, 1.0)
    history = LiveHistory(link, "down", LiveHistoryConfig(max_items=3))
    try:
        await link.client.initialize()
        dead = cluster.nodes[2].port
        cluster.kill(2)
        customers = [c for c in (f"c{i}" for i in range(60))
                     if not (await link.node_of(history_key("down", c))).endswith(f":{dead}")]
        assert len(customers) > 20
        assert [await history.record(c, ("i1",)) for c in customers] == [1] * len(customers)
        assert [await history.get(c) for c in customers] == [("i1",)] * len(customers)
        for node in cluster.nodes[:2]:
            evals, shas = script_calls(node.port)
            assert evals == 1 and shas > 5, (node.port, evals, shas)
    finally:
        await history.close()
        await link.close()
        cluster.stop()
