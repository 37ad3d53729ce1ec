"""RecordInteractions' append script goes out by its SHA1 (EVALSHA), not with its whole text each call (EVAL):
a server or node that lacks it (first call, restart, SCRIPT FLUSH) gets the text once, from the call itself,
so a cluster master that is down costs no other master's recordings. Its two ways of dropping repeats (LPOS
for a few ids, one pass for more) keep what a plain Python model of the list keeps."""

from __future__ import annotations

import random
import shutil

import pytest
from redis import Redis

from query_service.storage.live_history import LPOS_UP_TO, LiveHistory, LiveHistoryConfig, history_key
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


def appended(history: list[str], ids: tuple[str, ...], cap: int) -> list[str]:
    """The list after an append, by the README's rule: newest first, each item once where it was recorded last,
    the newest ``cap`` kept."""
    return list(dict.fromkeys([*reversed(ids), *history]))[:cap]


@pytest.mark.parametrize("mac_key", [b"", b"k" * 32], ids=["plain", "sealed"])
async def test_appends_keep_each_item_once_newest_first_within_the_cap(mac_key):
    redis = RedisProcess().start()
    rng = random.Random(7)
    try:
        for cap in (5, 100):
            history = LiveHistory(RedisLink(redis.url, "", 5.0, 5.0), f"cap{cap}", LiveHistoryConfig(max_items=cap),
                                  mac_key=mac_key)
            expected: dict[str, list[str]] = {}
            sizes = [*range(1, LPOS_UP_TO + 3), 30, 100]
            for call in range(300):
                customer = f"c{rng.randrange(4)}"
                # A small alphabet: repeats within a call, against the list and beyond the cap.
                ids = tuple(f"i{rng.randrange(40)}" for _ in range(rng.choice(sizes)))
                expected[customer] = appended(expected.get(customer, []), ids, cap)
                assert await history.record(customer, ids) == len(expected[customer]), (cap, call)
                assert list(await history.get(customer)) == expected[customer], (cap, call, ids)
            with Redis(host="127.0.0.1", port=redis.port) as client:
                for customer, items in expected.items():
                    assert client.llen(history_key(f"cap{cap}", customer)) == len(items)  # no repeat left stored
            await history.close()
            await history.link.close()
    finally:
        redis.stop()
