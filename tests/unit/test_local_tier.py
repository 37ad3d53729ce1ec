"""The result cache's in-process tier (``LocalTier``): its byte bound, LRU order, expiry, and what it
leaves to Python's garbage collector."""

from __future__ import annotations

import gc
import types

import pytest

from query_service.storage import local_tier
from query_service.storage.local_tier import LocalTier
from query_service.storage.result import CachedResult


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(local_tier, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


def result(i: int) -> CachedResult:
    return CachedResult([f"item-{i}", f"item-{i + 1}"], [2.0, 1.0], "model")


def tier(max_bytes: int = 300, ttl_s: float = 60.0) -> LocalTier:
    return LocalTier(max_bytes, ttl_s, sizeof=lambda r: 100 * len(r.ids) // 2)  # 100 bytes a result here


def test_the_least_recently_used_go_first_once_the_bytes_pass_the_bound(clock):
    held = tier()
    for i in range(3):
        held.put(f"k{i}", result(i))
    assert held.get("k0") == result(0)  # k0 is now the most recently used
    held.put("k3", result(3))
    assert list(held) == ["k2", "k0", "k3"] and held.currsize == 300
    held.put("k2", result(20))  # replaced, not counted twice
    assert held.currsize == 300 and held.get("k2") == result(20) and len(held) == 3
    held.put("big", CachedResult([f"i{j}" for j in range(8)], [1.0] * 8, "model"))  # 400 bytes > the whole tier
    assert "big" not in held and held.currsize == 300


def test_results_expire_and_a_put_drops_the_expired_ones_first(clock):
    held = tier(max_bytes=1000, ttl_s=10.0)
    held.put("old", result(0))
    clock.now += 6
    held.put("newer", result(1))
    clock.now += 5  # "old" has expired; "newer" has 5 s left
    assert "old" in held and held.currsize == 200  # nothing looked at it yet: it still counts
    held.put("new", result(2))
    assert list(held) == ["newer", "new"] and held.currsize == 200  # dropped without being looked up
    clock.now += 5
    assert held.get("newer") is None and list(held) == ["new"] and held.currsize == 100
    held.clear()
    assert len(held) == 0 and held.currsize == 0 and held.get("new") is None


def test_held_results_leave_nothing_to_the_garbage_collector_and_hits_share_what_was_rendered(clock):
    held = tier(max_bytes=10_000)
    for i in range(50):
        held.put(f"k{i}", result(i))
    first = held.get("k7")
    first.rendered["response bytes"] = b"\x08\x01"  # what the RPC layer keeps for the next hits
    # The first collection stops tracking the ids and scores, the next the entries holding them (while
    # serving: a young collection, then the next one of the generation the entries are in).
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in held._entries.values())
    assert not gc.is_tracked(held._rendered["k7"])
    assert held.get("k7").rendered is first.rendered and held.get("k8").rendered == {}
    held.put("k7", result(70))  # a new result under the key: what was rendered for the old one goes
    assert held.get("k7").rendered == {}


_MEASURE = """
import gc, os, sys
from protos.recsys.v1 import retrieval_pb2 as pb
from query_service.storage.cache import _local_bytes
from query_service.storage.local_tier import LocalTier
from query_service.storage.result import CachedResult
from serving.rpc.grpc_server import add_scored

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

k, n = int(sys.argv[1]), int(sys.argv[2])
tier = LocalTier(1 << 40, 300, _local_bytes)
gc.collect()
before = rss()
for i in range(n):
    key = f"recsys:m:v1:g0:{i:032d}"
    tier.put(key, CachedResult(tuple(f"c{i:06d}i{j:05d}" for j in range(k)), tuple(float(k - j) for j in range(k)),
                               "model"))
    hit = tier.get(key)
    response = pb.RecommendResponse(model_version=1, model_name="m")
    add_scored(response.candidates, hit.ids, hit.scores)
    hit.rendered["response"], hit.rendered["bytes"] = response, response.SerializeToString()
gc.collect()
print(tier.currsize / (rss() - before))
"""


@pytest.mark.parametrize("k, results", [(10, 20_000), (100, 2_000)])
def test_the_bytes_counted_cover_what_held_results_take_rendered_both_ways(k, results):
    """A hit renders a result as a response (BatchRecommend) and as its bytes (Recommend): with both kept, the
    tier's count was 0.75x of what the process grew by at k=10, so --local-cache-mb 256 held ~340 MB."""
    import subprocess
    import sys

    counted_over_grown = float(subprocess.run([sys.executable, "-c", _MEASURE, str(k), str(results)], check=True,
                                              capture_output=True, text=True, timeout=120).stdout)
    assert counted_over_grown >= 0.95, counted_over_grown


@pytest.mark.parametrize("ttl_s", [0.0, -1.0])
def test_a_result_already_expired_is_not_held_and_replaces_what_was(clock, ttl_s):
    """Put into a tier with nothing else, it was dropped as the oldest expired entry and the eviction loop then
    asked an empty tier for its oldest: StopIteration, an INTERNAL error for the request that cached it."""
    held = tier()
    held.put("a", result(1), ttl_s=ttl_s)
    assert len(held) == 0 and held.currsize == 0
    held.put("b", result(2))
    held.put("b", result(3), ttl_s=ttl_s)  # a newer answer, already expired: the older one goes too
    assert held.get("b") is None and held.currsize == 0
