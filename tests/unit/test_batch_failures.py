"""The query replica's failures under load, in process over the tests' tiny tower
(tests/unit/tiny_versions.py, a real TensorFlow tower; the index is played in
process and can hang): a timeout's message says where the time went, measured
(queued in this replica for a micro-batch, or waiting on the index), and a
BatchRecommend fails as soon as one of its items is refused."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from query_service.batching import BatchingConfig
from query_service.core.queries import SOURCE_MODEL, SOURCE_POPULARITY, RecommendQuery
from query_service.core.recommender import Recommender
from query_service.index.searches import OverMaxK
from query_service.storage.cache import CacheConfig, ResultCache
from query_service.tower import QueryModel
from serving import errors
from serving.lifecycle.versions import VersionManager
from tests.unit.test_query_paths import ExactIndex, tiny_index, tiny_model  # noqa: F401 - fixtures


class HungIndex(ExactIndex):
    """Takes searches and answers none until ``gate`` is set; ``timeout_s``: the service's index deadline."""

    def __init__(self, index: ExactIndex, timeout_s: float):
        super().__init__(index.ids, index.vectors)
        self.timeout_s = timeout_s
        self.gate = asyncio.Event()

    async def search(self, queries, version, timeout_s):
        await self.gate.wait()
        return await super().search(queries, version, timeout_s)


def replica(model: QueryModel, index: HungIndex, batching: BatchingConfig) -> Recommender:
    """A replica over ``index`` whose results are cached in process (no Redis)."""
    manager: VersionManager[QueryModel] = VersionManager(model.manifest.model)
    manager.add(model.version, model, make_live=True)
    return Recommender(manager, index, ResultCache(CacheConfig("")), ThreadPoolExecutor(1), batching)


async def test_a_timeout_says_whether_the_time_went_queued_in_this_replica_or_waiting_on_the_index(
        tiny_model, tiny_index):
    """One batch in flight, stuck in a hung index: its miss's time went waiting on the index. A miss that
    arrived behind it never left this replica's queue, and its message must say so (the p11 walk-through:
    'no answer from the index ... it is overloaded or hung' for time spent in the replica's own queue)."""
    index = HungIndex(tiny_index, timeout_s=0.3)
    recommender = replica(tiny_model, index, BatchingConfig(max_in_flight=1))
    first = asyncio.create_task(recommender.recommend("c000", 3))
    await asyncio.sleep(0.1)  # its batch is in the index, holding the only batch slot
    queued = asyncio.create_task(recommender.recommend("c001", 3))
    at_index, in_queue = await asyncio.gather(first, queued, return_exceptions=True)
    assert isinstance(at_index, errors.Unavailable) and isinstance(in_queue, errors.Unavailable)
    assert re.fullmatch(r"no answer within 0\.3s: 0\.0\ds queued in this replica for a micro-batch, "
                        r"0\.\d\ds in its cache lookup and tower call, 0\.[1-9]\ds waiting on the index: "
                        r"the index is overloaded or hung; retry later or on another replica", str(at_index)), at_index
    assert re.fullmatch(r"no answer within 0\.3s: 0\.[3-9]\ds queued in this replica for a micro-batch: this replica "
                        r"is overloaded \(its micro-batches were all busy\); retry later or on another replica",
                        str(in_queue)), in_queue
    # The caller's shorter deadline: DEADLINE_EXCEEDED, saying where its time went.
    with pytest.raises(errors.DeadlineExceeded, match=r"deadline \(0\.100s left on arrival\) passed before it "
                                                       r"was answered: 0\.[1-9]\ds queued in this replica"):
        await recommender.recommend("c002", 3, timeout_s=0.1)
    index.gate.set()
    assert (await recommender.recommend("c003", 3)).source == SOURCE_MODEL
    await recommender.close()


async def test_a_batch_fails_at_once_when_an_item_is_refused_and_leaves_the_batcher_sound(
        tiny_model, tiny_index, caplog):
    """Four items fill the micro-batcher's queue and the fifth is refused RESOURCE_EXHAUSTED, which the README
    promises 'at once': the call must not wait for the four (here they would wait 5 s on a hung index). They are
    abandoned without leaving tasks that log errors, and the batcher serves the next calls."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    index = HungIndex(tiny_index, timeout_s=5.0)
    recommender = replica(tiny_model, index, BatchingConfig(max_queued=4))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(errors.ResourceExhausted, match="4 requests are already waiting for a batch"):
        await asyncio.wait_for(recommender.recommend_batch([RecommendQuery(f"c{i:03d}", 3) for i in range(6)]),
                               1.0)
    assert loop.time() - start < 0.5
    index.gate.set()
    version, answers = await recommender.recommend_batch([RecommendQuery(f"c{i:03d}", 3) for i in range(4)])
    assert version == 1 and [(a.source, a.cache_hit) for a in answers] == [(SOURCE_MODEL, False)] * 4
    await recommender.close()
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


async def test_a_failed_batch_keeps_what_its_finished_items_cached(tiny_model, tiny_index):
    """An item answered before another item failed the call was cached as Recommend would cache it."""
    index = HungIndex(tiny_index, timeout_s=0.3)
    recommender = replica(tiny_model, index, BatchingConfig(max_batch_size=1))
    with pytest.raises(errors.Unavailable):
        # c001 hangs in the index; the stranger's batch is answered from the popular list meanwhile.
        await recommender.recommend_batch([RecommendQuery("c001", 3), RecommendQuery("stranger", 3)])
    again = await recommender.recommend("stranger", 3)
    assert (again.source, again.cache_hit) == (SOURCE_POPULARITY, True)
    index.gate.set()
    await recommender.close()


class CappedIndex(ExactIndex):
    """Refuses a whole search holding a k over ``max_k``, as an index started with a lower --max-k does."""

    def __init__(self, index: ExactIndex, max_k: int):
        super().__init__(index.ids, index.vectors)
        self.max_k = max_k

    async def search(self, queries, version, timeout_s):
        over = [q.k for q in queries if q.k > self.max_k]
        if over:
            self.searches.append(queries)
            raise OverMaxK(f"index search failed: INVALID_ARGUMENT: k={over[0]} is out of range: ask for 1 to "
                           f"{self.max_k} candidates", self.max_k)
        return await super().search(queries, version, timeout_s)


async def test_a_k_over_the_indexs_max_k_fails_its_own_request_not_the_others_in_its_batch(tiny_model, tiny_index):
    """The index refuses a whole batch for one query's k over its --max-k: the other misses batched with it
    failed INVALID_ARGUMENT too, told their k was out of range."""
    index = CappedIndex(tiny_index, max_k=5)
    recommender = replica(tiny_model, index, BatchingConfig())
    small, large = await asyncio.gather(recommender.recommend("c000", 3), recommender.recommend("c001", 8),
                                        return_exceptions=True)
    assert len(index.searches[0]) == 2, "the two misses were not batched together"
    assert isinstance(large, errors.InvalidArgument) and "ask for 1 to 5 candidates" in str(large)
    assert not isinstance(small, Exception), small
    assert small.source == SOURCE_MODEL and small.ids == (await tiny_index.search(index.searches[1], 1, 1.0))[0].ids
    await recommender.close()
