"""The query replica's paths in process: the live interaction history in a real
Redis (history-aware tower input, exclude_seen, cache keys, outages),
catalogue generations in answers, cache keys and routing, filters, RecommendSimilar
and BatchRecommend. Real TensorFlow towers (tests/unit/tiny_versions.py and
the history tower of test_query_tower.py); the index is played by an exact
search in process, which records what it is asked."""

from __future__ import annotations

import asyncio
import gc
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import prometheus_client
import pytest
import redis.asyncio as redis

from model_registry import Registry
from model_registry.deltas import Delta
from protos.recsys.v1 import retrieval_pb2 as pb
from query_service.batching import BatchingConfig
from query_service.core.budget import Progress
from query_service.core.misses import MissPath, miss
from query_service.core.queries import SOURCE_MODEL, SOURCE_POPULARITY, KeyedRequest, RecommendQuery
from query_service.core.recommender import Recommender
from query_service.core.replays import REPLAY_MAX_BYTES, replay_cost
from query_service.index.routing import HEDGE_BUDGET, HEDGE_BURST, IndexRouter, RoutingConfig
from query_service.index.searches import IndexHits, IndexQuery, SimilarQuery, TimedOut
from query_service.servicer import QueryServicer
from query_service.storage.cache import CacheConfig, CachedResult, ResultCache
from query_service.storage.live_history import LiveHistory, LiveHistoryConfig, history_key
from query_service.tower import QueryModel
from serving import errors, validation
from serving.filters import Filter, TokenRestrict
from serving.lifecycle.versions import State, VersionManager
from tests.processes import free_port
from tests.unit import tiny_versions as tiny
from tests.unit.test_query_tower import ITEMS, write_version

_names = itertools.count()


class ExactIndex:
    """The router's role: exact search over ``vectors`` (rows of ``ids``) at
    catalogue ``generation``; keeps every query it was asked."""

    timeout_s = 3.0

    def __init__(self, ids: list[str], vectors: np.ndarray, generation: int = 0):
        self.ids, self.vectors, self.generation = list(ids), vectors, generation
        self.changing = False  # answers as an endpoint applying a catalogue delta does
        self.searches: list[list[IndexQuery]] = []
        self.similar_queries: list[SimilarQuery] = []

    @property
    def queries(self) -> list[IndexQuery]:
        return [q for search in self.searches for q in search]

    def _top(self, scores: np.ndarray, k: int, excluded: frozenset[str]) -> IndexHits:
        order = [i for i in np.argsort(-scores, kind="stable") if self.ids[i] not in excluded][:k]
        return IndexHits([self.ids[i] for i in order], [float(scores[i]) for i in order], self.generation,
                         changing=self.changing)

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]:
        self.searches.append(queries)
        # by_popularity: the rows' order stands for the version's popularity.
        return [self._top(-np.arange(len(self.ids), dtype=float) if q.by_popularity else self.vectors @ q.vector,
                          q.k, q.exclusions) for q in queries]

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float) -> IndexHits:
        self.similar_queries.append(query)
        if query.candidate_id not in self.ids:
            raise errors.NotFound(f"candidate_id {query.candidate_id!r} is not in the catalogue")
        vector = self.vectors[self.ids.index(query.candidate_id)]
        return self._top(self.vectors @ vector, query.k, query.exclusions | {query.candidate_id})


def replica(model: QueryModel, index: ExactIndex, cache: ResultCache | None = None,
            history: LiveHistory | None = None, name: str | None = None) -> Recommender:
    manager: VersionManager[QueryModel] = VersionManager(name or model.manifest.model)
    manager.add(model.version, model, make_live=True)
    return Recommender(manager, index, cache, ThreadPoolExecutor(1), history=history)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> QueryModel:
    registry = Registry(tmp_path_factory.mktemp("registry"), tiny.MODEL)
    tiny.publish(registry, 1)
    model = QueryModel.load(registry.version_dir(1), registry.manifest(1))
    # What an attributes file would name (tiny versions have none; the index side is played here).
    model.token_namespaces = frozenset({"genre"})
    return model


@pytest.fixture
def tiny_index() -> ExactIndex:
    return ExactIndex(tiny.CANDIDATES.tolist(), tiny.embeddings(1)[1])


@pytest.fixture
def history_model(tmp_path) -> QueryModel:
    """The history tower: embedding = [id is c1, id is c2, count of i1, i2, i3 in the history, age]."""
    return QueryModel.load(tmp_path, write_version(tmp_path))


def item_index() -> ExactIndex:
    """Candidates i1, i2, i3 scored by how often the tower's history holds them."""
    vectors = np.zeros((len(ITEMS), 6), np.float32)
    vectors[np.arange(len(ITEMS)), 2 + np.arange(len(ITEMS))] = 1
    return ExactIndex(ITEMS, vectors)


def live_replica(model: QueryModel, index: ExactIndex, url: str, config: LiveHistoryConfig = LiveHistoryConfig()):
    """A replica with a cache and a live history in the Redis at ``url``, under a model name of its own."""
    name = f"live{next(_names)}"
    cache = ResultCache(CacheConfig(url, retry_after_s=30))
    return replica(model, index, cache, LiveHistory(cache.link, name, config), name)


# ------------------------------------------------------------------ live history


async def test_recorded_interactions_feed_the_tower_exclude_seen_and_the_cache_key(history_model, redis_server):
    index = item_index()
    recommender = live_replica(history_model, index, redis_server.url)
    first = await recommender.recommend("c1", 3)
    np.testing.assert_allclose(index.queries[-1].vector, [1, 0, 2, 0, 0, 20])  # the stored history: i1, i1
    assert (await recommender.recommend("c1", 3)).cache_hit
    assert await recommender.record_interactions("c1", ["i3-with-a-long-id", "i2"]) == 2
    after = await recommender.recommend("c1", 3)
    assert not after.cache_hit and after.scores == [1.0, 1.0, 1.0] != first.scores
    # Request items, then live (newest first), then stored, each once: i2, i3, i1.
    np.testing.assert_allclose(index.queries[-1].vector, [1, 0, 1, 1, 1, 20])
    assert (await recommender.recommend("c1", 3)).cache_hit
    with_recent = await recommender.recommend("c1", 3, recent=["i2"])
    assert not with_recent.cache_hit
    np.testing.assert_allclose(index.queries[-1].vector, [1, 0, 1, 1, 1, 20])
    await recommender.recommend("c1", 3, exclude_seen=True)
    assert index.queries[-1].exclusions == {"i1", "i2", "i3-with-a-long-id"}  # stored seen and live
    # Recording what is already newest changes no input: the cached result still answers.
    await recommender.record_interactions("c1", ["i2"])
    assert (await recommender.recommend("c1", 3)).cache_hit
    # A customer the tower never saw becomes known through their live history.
    assert (await recommender.recommend("stranger", 2)).source == SOURCE_POPULARITY
    await recommender.record_interactions("stranger", ["i2"])
    assert (await recommender.recommend("stranger", 2)).source == SOURCE_MODEL
    await recommender.close()


async def test_towers_without_a_history_read_the_live_history_only_for_exclude_seen(tiny_model, tiny_index,
                                                                                      redis_server):
    recommender = live_replica(tiny_model, tiny_index, redis_server.url)
    plain = await recommender.recommend("c001", 3)
    await recommender.record_interactions("c001", [plain.ids[0]])
    assert (await recommender.recommend("c001", 3)).cache_hit  # the id tower's input did not change
    excluding = await recommender.recommend("c001", 3, exclude_seen=True)
    assert plain.ids[0] not in excluding.ids and plain.ids[0] in tiny_index.queries[-1].exclusions
    await recommender.close()


async def test_the_live_history_is_capped_newest_first_expires_and_drops_what_is_not_an_id(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url))
    history = LiveHistory(cache.link, f"cap{next(_names)}", LiveHistoryConfig(max_items=3, ttl_s=60))
    assert await history.record("c1", ("a", "b")) == 2
    assert await history.record("c1", ("c", "d", "e")) == 3
    assert await history.get("c1") == ("e", "d", "c")
    client = redis.from_url(redis_server.url)
    key = history_key(history.model, "c1")
    assert 0 < await client.ttl(key) <= 60
    await client.lpush(key, b"d", b"x" * 257, b"\xff\xfe")  # newest first: not UTF-8, too long, d
    assert await history.get("c1") == ("d",)  # of the newest three, the one that is an id
    assert await history.get("nobody") == ()
    await client.aclose()
    await history.close()
    await cache.close()


@pytest.mark.parametrize("mac_key", [b"", b"shared secret"])
async def test_a_repeated_interaction_counts_once_and_pushes_no_other_item_out(redis_server, mac_key):
    """The cap counts distinct items: a retried call or an item viewed again moves that item to the
    front, and the customer's other items stay in the history (and in exclude_seen)."""
    cache = ResultCache(CacheConfig(redis_server.url))
    history = LiveHistory(cache.link, f"rep{next(_names)}", LiveHistoryConfig(max_items=3, ttl_s=60), mac_key)
    assert await history.record("c1", ("a", "b")) == 2
    assert await history.record("c1", ("b",) * 5) == 2
    assert await history.get("c1") == ("b", "a")
    assert await history.record("c1", ("a", "c", "a")) == 3
    assert await history.get("c1") == ("a", "c", "b")
    client = redis.from_url(redis_server.url)
    assert await client.llen(history_key(history.model, "c1")) == 3
    await client.aclose()
    await history.close()
    await cache.close()


async def test_with_a_key_only_entries_a_replica_wrote_for_that_customer_count(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url))
    model = f"mac{next(_names)}"
    history = LiveHistory(cache.link, model, mac_key=b"shared secret")
    other_replica = LiveHistory(cache.link, model, mac_key=b"shared secret")
    await history.record("c1", ("a", "b"))
    await history.record("c2", ("z",))
    assert await other_replica.get("c1") == ("b", "a")
    client = redis.from_url(redis_server.url)
    key = history_key(model, "c1")
    assert all(len(v) > 16 for v in await client.lrange(key, 0, -1))  # HMAC + id, not the bare id
    stolen = (await client.lrange(history_key(model, "c2"), 0, 0))[0]  # c2's valid entry for z
    await client.lpush(key, b"forged", stolen, b"\0" * 16 + b"forged")  # no MAC, another list's, a wrong MAC
    assert await other_replica.get("c1") == ("b", "a")
    # A replica without the key reads none of it as ids it could trust.
    keyless = LiveHistory(cache.link, model, mac_key=b"another")
    assert await keyless.get("c1") == ()
    await client.aclose()
    for reader in (history, other_replica, keyless):
        await reader.close()
    await cache.close()


async def test_concurrent_reads_share_pipelines_and_each_gets_its_own_history(redis_server):
    cache = ResultCache(CacheConfig(redis_server.url))
    history = LiveHistory(cache.link, f"batch{next(_names)}")
    for i in range(20):
        await history.record(f"c{i}", (f"i{i}",))
    pipelines = 0
    open_pipeline = cache.link.client.pipeline

    def counted(*args, **kwargs):  # counts round trips, and makes them as before
        nonlocal pipelines
        pipelines += 1
        return open_pipeline(*args, **kwargs)

    cache.link.client.pipeline = counted
    histories = await asyncio.gather(*(history.get(f"c{i}") for i in range(20)))
    assert histories == [(f"i{i}",) for i in range(20)]
    assert pipelines <= 2  # the first read goes alone, the 19 that queued behind it together
    await history.close()
    await cache.close()


async def test_misses_queued_behind_a_batch_share_one_redis_lookup_and_a_result_redis_holds_is_a_hit(
        tiny_model, tiny_index, redis_server):
    """A result the in-process tier lacks is looked up in Redis by its micro-batch: the misses
    that queue while a batch is in the index cost one MGET together, not one each (a Redis round
    trip per miss was about one echo call of CPU: docs/BENCHMARKS.md)."""
    released = asyncio.Event()

    class HeldIndex(ExactIndex):
        async def search(self, queries, version, timeout_s):
            await released.wait()
            return await super().search(queries, version, timeout_s)

    index = HeldIndex(tiny_index.ids, tiny_index.vectors)
    manager: VersionManager[QueryModel] = VersionManager(f"mget{next(_names)}")
    manager.add(tiny_model.version, tiny_model, make_live=True)
    shared = CacheConfig(redis_server.url, mac_key="shared", local_mb=0)
    recommender = Recommender(manager, index, ResultCache(shared), ThreadPoolExecutor(1),
                              BatchingConfig(max_in_flight=1))
    other_replica = Recommender(manager, tiny_index, ResultCache(shared), ThreadPoolExecutor(1))
    held = await other_replica.recommend("c004", 3)  # in Redis, written by another replica
    mgets = 0
    mget = recommender.cache.link.client.mget

    async def counted(*args, **kwargs):
        nonlocal mgets
        mgets += 1
        return await mget(*args, **kwargs)

    recommender.cache.link.client.mget = counted

    def sizes_now() -> dict[str, float]:  # keys per MGET, on the dashboard's series
        return {part: prometheus_client.REGISTRY.get_sample_value(
            f"recsys_batch_size_{part}", {"batcher": "ResultCache._mget"}) or 0.0 for part in ("count", "sum")}

    sizes = sizes_now()
    first = asyncio.create_task(recommender.recommend("c000", 3))
    await asyncio.sleep(0.05)  # its batch waits in the index
    queued = []
    for customer in ("c001", "c002", "c003", "c004"):  # arriving one at a time, behind it
        queued.append(asyncio.create_task(recommender.recommend(customer, 3)))
        await asyncio.sleep(0.01)
    assert mgets == 1
    released.set()
    answers = [await first] + [await task for task in queued]
    assert mgets == 2  # the first batch's, then one for the four that queued
    assert {part: value - sizes[part] for part, value in sizes_now().items()} == {"count": 2, "sum": 5}
    assert [a.cache_hit for a in answers] == [False, False, False, False, True]
    assert answers[-1].ids == held.ids and answers[-1].scores == held.scores
    assert [q.vector is not None for q in index.queries] == [True] * 4  # c004 was not searched again
    await recommender.close()
    await other_replica.close()


async def test_without_redis_the_in_process_tier_is_the_whole_cache(tiny_model, tiny_index):
    """A replica without a Redis URL keeps its results in process: a repeated Recommend is a
    hit that asks the index nothing, and a new catalogue generation's key misses."""
    index = ExactIndex(tiny_index.ids, tiny_index.vectors)
    recommender = replica(tiny_model, index, ResultCache(CacheConfig("")))
    first = await recommender.recommend("c001", 3)
    again = await recommender.recommend("c001", 3)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert (again.ids, again.scores) == (first.ids, first.scores) and len(index.queries) == 1
    try:  # a catalogue delta: the new generation's key misses what the old one holds
        tiny_model.apply_catalogue([], 1)
        index.generation = 1
        after = await recommender.recommend("c001", 3)
        assert not after.cache_hit and after.generation == 1 and len(index.queries) == 2
    finally:
        tiny_model.apply_catalogue([], 0)
    await recommender.close()


async def test_record_interactions_checks_its_input_and_needs_redis(tiny_model, tiny_index):
    recommender = replica(tiny_model, tiny_index)
    for customer, ids, message in (("", ["i1"], "customer_id is empty"),
                                   ("c1", [], "candidate_ids is empty: send 1 to 100"),
                                   ("c1", ["i1"] * 101, "candidate_ids has 101 ids; at most 100"),
                                   ("c1", ["i1", ""], r"candidate_ids\[1\] is empty"),
                                   ("c1", ["x" * 257], r"candidate_ids\[0\] is 257 bytes")):
        with pytest.raises(errors.InvalidArgument, match=message):
            await recommender.record_interactions(customer, ids)
    with pytest.raises(errors.Unavailable, match="without Redis.*--redis-url"):
        await recommender.record_interactions("c1", ["i1"])


async def test_with_redis_down_recommend_uses_the_stored_history_and_recording_fails(history_model):
    index = item_index()
    recommender = live_replica(history_model, index, f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(errors.Unavailable, match="did not take the interactions"):
        await recommender.record_interactions("c1", ["i2"])
    result = await recommender.recommend("c1", 3, exclude_seen=True)
    assert result.source == SOURCE_MODEL and not result.cache_hit
    np.testing.assert_allclose(index.queries[-1].vector, [1, 0, 2, 0, 0, 20])
    assert not recommender.history.link.available()  # backed off: the next reads skip Redis
    with pytest.raises(errors.Unavailable):
        await recommender.record_interactions("c1", ["i2"])  # a write is still tried, and still fails
    await recommender.close()


# ------------------------------------------------------------------ catalogue generations and filters


async def test_answers_and_cache_keys_carry_the_catalogue_generation(tiny_model, tiny_index, redis_server):
    cache = ResultCache(CacheConfig(redis_server.url))
    recommender = replica(tiny_model, tiny_index, cache, name=f"gen{next(_names)}")
    tiny_model.apply_catalogue([], 2)
    tiny_index.generation = 3  # the index took a delta this replica has not yet
    first = await recommender.recommend("c001", 3)
    assert (first.generation, first.cache_hit) == (3, False)
    assert tiny_index.queries[-1].min_generation == 2
    await asyncio.sleep(0.01)  # the cache write runs in the background
    # Stored under generation 3, the index's: a replica at 2 does not find it.
    assert not (await recommender.recommend("c001", 3)).cache_hit
    tiny_model.apply_catalogue([], 3)
    again = await recommender.recommend("c001", 3)
    assert (again.generation, again.cache_hit, again.ids) == (3, True, first.ids)
    fallback = await recommender.recommend("stranger", 3)
    assert (fallback.source, fallback.generation) == (SOURCE_POPULARITY, 3)
    tiny_model.apply_catalogue([], 0)
    await recommender.close()


class _Context:
    """What the servicer reads of a gRPC call's context on a call that succeeds."""

    def time_remaining(self) -> float:
        return 10.0


def _sent(request: pb.RecommendRequest) -> bytes:
    return request.SerializeToString()


def _got(data: bytes) -> pb.RecommendResponse:
    return pb.RecommendResponse.FromString(data)


async def test_hits_share_the_response_built_for_their_cached_result_and_a_new_generation_builds_anew(
        tiny_model, tiny_index, redis_server):
    recommender = replica(tiny_model, tiny_index, ResultCache(CacheConfig(redis_server.url)), name=f"r{next(_names)}")
    servicer = QueryServicer(recommender)
    request, context = _sent(pb.RecommendRequest(customer_id="c001", k=3)), _Context()
    miss = await servicer.Recommend(request, context)
    first = await servicer.Recommend(request, context)
    assert not _got(miss).cache_hit and _got(first).cache_hit
    assert await servicer.Recommend(request, context) is first  # built once for the cached result, then shared
    expected = _got(miss)
    expected.cache_hit = True
    assert _got(first) == expected
    other = await servicer.Recommend(_sent(pb.RecommendRequest(customer_id="c001", k=2)), context)
    assert other is not first and [c.candidate_id for c in _got(other).candidates] == [
        c.candidate_id for c in _got(first).candidates[:2]]
    try:  # a catalogue delta: the old response, whose generation it names, is never served again
        tiny_model.apply_catalogue([], 1)
        tiny_index.generation = 1
        after = [await servicer.Recommend(request, context) for _ in range(3)]
        assert [_got(r).cache_hit for r in after] == [False, True, True] and after[1] is after[2] is not first
        assert _got(after[1]).catalogue_generation == 1 and _got(first).catalogue_generation == 0
    finally:
        tiny_model.apply_catalogue([], 0)
    await recommender.close()


async def test_similar_hits_share_the_bytes_built_for_their_cached_result_which_the_collector_does_not_track(
        tiny_model, tiny_index):
    """RecommendSimilar answers bytes like Recommend: built once per cached result, then shared by its
    hits. A response message kept instead would be an object the garbage collector tracks per result."""
    cache = ResultCache(CacheConfig(f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    servicer = QueryServicer(replica(tiny_model, tiny_index, cache))
    request, context = pb.RecommendSimilarRequest(candidate_id="i005", k=3), _Context()
    miss = await servicer.RecommendSimilar(request, context)
    first = await servicer.RecommendSimilar(request, context)
    assert await servicer.RecommendSimilar(request, context) is first
    expected = _got(miss)
    expected.cache_hit = True
    assert _got(first) == expected and len(expected.candidates) == 3 and not _got(miss).cache_hit
    gc.collect()
    assert not any(gc.is_tracked(rendered) for rendered in cache._local._rendered.values())
    await servicer.recommender.close()


async def test_a_request_seen_before_is_replayed_by_its_bytes_while_its_result_holds(
        tiny_model, tiny_index, redis_server, monkeypatch):
    cache = ResultCache(CacheConfig(redis_server.url))
    recommender = replica(tiny_model, tiny_index, cache, name=f"r{next(_names)}")
    query = RecommendQuery("c002", 4)
    data = _sent(pb.RecommendRequest(customer_id="c002", k=4))
    assert recommender.replay(data) is None  # never answered
    miss = await recommender.answer(query, fingerprint=data)
    replayed = recommender.replay(data)
    assert replayed is not None and replayed.cache_hit and (replayed.ids, replayed.version) == (miss.ids, miss.version)
    assert recommender.replay(data + b"\x00") is None  # other bytes are another request, even if they parse the same
    try:  # a catalogue delta: answered again (a miss of the new generation), then replayed at it
        tiny_model.apply_catalogue([], 1)
        tiny_index.generation = 1
        assert recommender.replay(data) is None
        assert not (await recommender.answer(query, fingerprint=data)).cache_hit
        assert recommender.replay(data).generation == 1
    finally:
        tiny_model.apply_catalogue([], 0)
        tiny_index.generation = 0
    cache._local.clear()  # the in-process tier let the result go (TTL, memory): answered again, not replayed
    assert recommender.replay(data) is None
    big = _sent(pb.RecommendRequest(customer_id="c002", k=4, exclude_candidate_ids=[f"x{i:04d}" for i in range(50)]))
    await recommender.answer(RecommendQuery("c002", 4, [f"x{i:04d}" for i in range(50)]), fingerprint=big)
    assert len(big) > REPLAY_MAX_BYTES and recommender.replay(big) is None  # long requests are not remembered
    await recommender.close()
    remembered = [_sent(pb.RecommendRequest(customer_id=c, k=3)) for c in ("c003", "c004", "c005")]
    monkeypatch.setattr("query_service.core.replays.REPLAY_BUDGET_BYTES", 2 * replay_cost(remembered[0]))
    recommender = replica(tiny_model, tiny_index, ResultCache(CacheConfig(redis_server.url)), name=f"r{next(_names)}")
    for customer, fingerprint in zip(("c003", "c004", "c005"), remembered):
        await recommender.answer(RecommendQuery(customer, 3), fingerprint=fingerprint)
    assert [recommender.replay(b) is not None for b in remembered] == [False, True, True]  # the oldest went first
    await recommender.close()


async def test_a_replay_checks_and_remembers_the_request_answered_its_exclusions_and_filter_included(
        tiny_model, tiny_index):
    """A replay entry and the warm-up's recency list hold a request as plain values (``KeyedRequest.held``).
    The request a replay finds must be the one answered: its exclusions are checked against the held
    result, and the warm-up remembers it once, as it was, not as a second request."""
    cache = ResultCache(CacheConfig(f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender = replica(tiny_model, tiny_index, cache)
    only_a = Filter((TokenRestrict("genre", frozenset({"a"})),))
    data = b"the bytes of a request with exclusions, a recent item and a filter"
    query = RecommendQuery("c006", 3, ["x1", "x2"], ["i005"], False, only_a)
    miss = await recommender.answer(query, fingerprint=data)
    replayed = recommender.replay(data)
    assert replayed is not None and replayed.cache_hit and replayed.ids == miss.ids
    (remembered,) = recommender._warmup.recent
    remembered = KeyedRequest.from_held(remembered)
    assert (remembered.exclusions, remembered.recent, remembered.filter) == (frozenset({"x1", "x2"}), ("i005",), only_a)
    _, _, key, _, _ = recommender._replays.get(data)
    cache._local.put(key, CachedResult(["x1", "i001"], [2.0, 1.0], SOURCE_MODEL))  # a result it must not serve
    assert recommender.replay(data) is None
    await recommender.close()


async def test_a_result_held_in_process_leaves_few_objects_to_the_garbage_collector(
        tiny_model, tiny_index, redis_server):
    """A full collection of Python's garbage collector walks every tracked object while requests wait: under
    800 misses/s it took 75-91 ms at 13-15k results held, 7 objects each. The in-process tier, the
    replay entries and the warm-up's recency list hold plain tuples of strings, numbers and tuples of
    them, which the collector stops tracking: none per result, and a little for what is in flight when
    counted."""
    cache = ResultCache(CacheConfig(redis_server.url))
    recommender = replica(tiny_model, tiny_index, cache, name=f"r{next(_names)}")
    requests = iter([(f"c{j:03d}", k) for j in range(40) for k in range(2, 12)])

    async def tracked_after(count: int) -> int:
        for customer, k in itertools.islice(requests, count):
            await recommender.answer(RecommendQuery(customer, k),
                                     fingerprint=_sent(pb.RecommendRequest(customer_id=customer, k=k)))
        await asyncio.sleep(0.1)
        while cache._written is not None or cache._pending:  # every Redis write out: one in flight holds its values
            await asyncio.sleep(0.01)
        tiny_index.searches.clear()  # what the stand-in index records
        gc.collect()
        return len(gc.get_objects())

    # The objects each further result adds; what the first ones build (connections, metrics) is shared. Counted
    # over two rounds, the lower kept: whatever else the process allocates meanwhile only adds (a full suite's
    # run once read 0.52 where this test alone reads 0.03-0.29), while a result that leaves objects does so in both.
    first = await tracked_after(100)
    second = await tracked_after(150)
    per_result = min(second - first, await tracked_after(150) - second) / 150
    assert len(cache._local) == 400 and per_result <= 0.5, per_result
    held = cache.get_local(next(iter(cache._local)))
    assert not gc.is_tracked(held.ids) and not gc.is_tracked(held.scores)
    await recommender.close()


async def test_results_that_read_the_live_history_are_never_replayed(history_model, redis_server):
    recommender = live_replica(history_model, item_index(), redis_server.url)
    data = _sent(pb.RecommendRequest(customer_id="c1", k=2))
    await recommender.answer(RecommendQuery("c1", 2), fingerprint=data)
    assert (await recommender.answer(RecommendQuery("c1", 2), fingerprint=data)).cache_hit
    assert recommender.replay(data) is None  # a recorded interaction would change it under the bytes
    await recommender.close()


async def test_filters_reach_the_index_and_the_cache_key_and_send_unknown_customers_there(tiny_model, tiny_index):
    cache = ResultCache(CacheConfig(f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender = replica(tiny_model, tiny_index, cache)
    only_a = Filter((TokenRestrict("genre", frozenset({"a"})),))
    await recommender.recommend("c001", 3, filter=only_a)
    await asyncio.sleep(0)  # the cache write runs in the background
    assert tiny_index.queries[-1].filter == only_a and not tiny_index.queries[-1].by_popularity
    assert not (await recommender.recommend("c001", 3)).cache_hit  # the filter is part of the key
    assert (await recommender.recommend("c001", 3, filter=only_a)).cache_hit
    searches = len(tiny_index.searches)
    plain = await recommender.recommend("stranger", 3)
    assert plain.source == SOURCE_POPULARITY and len(tiny_index.searches) == searches  # local fallback
    filtered = await recommender.recommend("stranger", 2, exclusions=["i000"], filter=only_a)
    asked = tiny_index.queries[-1]
    assert (asked.by_popularity, asked.vector, asked.filter, asked.exclusions) == (True, None, only_a, {"i000"})
    assert (filtered.source, filtered.ids) == (SOURCE_POPULARITY, ["i001", "i002"])
    await recommender.close()


async def test_an_unknown_customer_gets_k_candidates_when_the_popular_list_runs_out(tiny_model, tiny_index):
    """The popular list holds a version's most popular candidates only (10 of 50 here, up to 1000 of a
    trained version): past it, exclusions or deletions included, the index fills the fallback as it
    does under a filter, rather than the answer coming back short; with the index down, the list stands,
    and is not cached: once the index is back, the same request gets k."""
    recommender = replica(tiny_model, tiny_index)
    within = await recommender.recommend("stranger", 9, exclusions=["i000"])
    assert within.ids == [f"i{i:03d}" for i in range(1, 10)] and tiny_index.searches == []  # the local list
    past = await recommender.recommend("stranger", 10, exclusions=["i000"])
    assert (past.source, past.ids) == (SOURCE_POPULARITY, [f"i{i:03d}" for i in range(1, 11)])
    asked = tiny_index.queries[-1]
    assert (asked.by_popularity, asked.vector, asked.k, asked.exclusions) == (True, None, 10, {"i000"})
    await recommender.close()

    class FlakyIndex(ExactIndex):
        down = True

        async def search(self, queries, version, timeout_s):
            if self.down:
                raise errors.Unavailable("index down")
            return await super().search(queries, version, timeout_s)

    flaky = FlakyIndex(tiny_index.ids, tiny_index.vectors)
    recommender = replica(tiny_model, flaky, ResultCache(CacheConfig("")))  # the in-process tier
    short = await recommender.recommend("stranger", 12)
    assert (short.source, short.ids) == (SOURCE_POPULARITY, [f"i{i:03d}" for i in range(10)])
    flaky.down = False
    back = await recommender.recommend("stranger", 12)
    assert (back.cache_hit, back.ids) == (False, [f"i{i:03d}" for i in range(12)])
    await recommender.close()


async def test_a_filter_naming_a_namespace_the_version_lacks_is_refused_before_any_work(tiny_model, tiny_index):
    recommender = replica(tiny_model, tiny_index)
    typo = Filter((TokenRestrict("genra", frozenset({"a"})),))
    with pytest.raises(errors.InvalidArgument, match="filter namespace 'genra' is not a token namespace"):
        await recommender.recommend("c001", 3, filter=typo)
    with pytest.raises(errors.InvalidArgument, match="'genra'"):
        await recommender.similar("i001", 3, filter=typo)
    with pytest.raises(errors.InvalidArgument, match=r"^requests\[1\]\.filter namespace 'genra'"):
        await recommender.recommend_batch([RecommendQuery("c001", 3), RecommendQuery("c002", 3, filter=typo)])
    assert tiny_index.searches == [] and tiny_index.similar_queries == []
    await recommender.close()


async def test_the_router_sends_searches_only_to_endpoints_caught_up_with_the_generation():
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1")))
    a, b = router.endpoints
    a.versions, b.versions = {1: State.SERVING}, {1: State.SERVING}
    a.generations, b.generations = {1: 1}, {1: 2}
    answered: list[str] = []

    def fake_search(endpoint):
        async def search(queries, version, timeout_s):
            answered.append(endpoint.address)
            return [IndexHits(["x"], [1.0], endpoint.generations[version])]
        return search

    # The network call is the one piece replaced here: routing is what is under test.
    a.search, b.search = fake_search(a), fake_search(b)
    query = IndexQuery(np.zeros(2, np.float32), 1, frozenset(), min_generation=2)
    for _ in range(3):
        assert (await router.search([query], 1))[0].generation == 2
    assert answered == ["b:1"] * 3
    for _ in range(2):  # no generation asked: both holders take turns
        await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset())], 1)
    assert set(answered[3:]) == {"a:1", "b:1"}
    with pytest.raises(errors.Unavailable, match="has caught up with its catalogue generation 3"):
        await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset(), min_generation=3)], 1)
    with pytest.raises(errors.Unavailable, match="no index endpoint holds version 2"):
        await router.search([query], 2)
    await router.close()


def failing_endpoints(router: IndexRouter, error: errors.ServingError, wait: bool = False) -> list[str]:
    """Each of ``router``'s endpoints holding version 1 and failing its searches with ``error`` (after the call's
    whole time, with ``wait``); the addresses tried, in order. Routing is under test, not the network."""
    called: list[str] = []
    for endpoint in router.endpoints:
        endpoint.versions = {1: State.SERVING}

        def failing(address):
            async def search(queries, version, timeout_s):
                called.append(address)
                if wait:
                    await asyncio.sleep(timeout_s + 0.05)
                raise error
            return search

        endpoint.search = failing(endpoint.address)
    return called


async def test_a_failed_try_that_spent_the_callers_time_says_so_with_that_time():
    """It said "no index endpoint answered within 3.0s" (the configured deadline) to a caller with 0.1 s left,
    of an endpoint that did answer, with a failure."""
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1"), timeout_s=3.0, hedge_ms=0))
    called = failing_endpoints(router, errors.Unavailable("the slot is draining"), wait=True)
    with pytest.raises(errors.Unavailable) as failed:
        await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset())], 1, timeout_s=0.1)
    assert len(called) == 1
    assert str(failed.value) == f"index endpoint {called[0]} failed and the call's 0.1 s were spent: " \
        f"{({'a:1', 'b:1'} - set(called)).pop()} was not tried"
    await router.close()


async def test_a_batched_miss_whose_caller_gave_up_is_not_searched(tiny_model, tiny_index):
    # Under overload a batch's callers could be gone by its index search: their queries were answered to no one.
    path = MissPath(tiny_index, None, ThreadPoolExecutor(1))
    request = KeyedRequest(tiny.CUSTOMERS[0], 3, frozenset(), (), False)
    late, due = (miss(tiny_model, request, budget_s, Progress()) for budget_s in (-0.01, 5.0))
    answers = await path.process_version([late, due])
    assert isinstance(answers[0], errors.DeadlineExceeded) and answers[1].ids
    assert len(tiny_index.queries) == 1


async def test_a_try_that_ran_out_of_time_is_not_tried_again_elsewhere_nor_held_against_its_endpoint():
    """A timed-out index call was retried on the other replica with the little time left (uvloop's millisecond clock
    rarely reads it as none), a doomed call that also passed both replicas over for a second: 983 such retries under
    an overload that made 82 hedges."""
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1"), hedge_ms=0))
    called = failing_endpoints(router, TimedOut("index search failed: DEADLINE_EXCEEDED: Deadline Exceeded"))
    for _ in range(2):
        with pytest.raises(TimedOut):
            await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset())], 1, timeout_s=0.1)
    assert sorted(called) == ["a:1", "b:1"]  # one try each, in turn
    assert not router._suspect_until
    await router.close()


async def test_failures_for_want_of_a_holder_log_one_line_per_version_a_while_counting_the_rest(monkeypatch, caplog):
    router = IndexRouter(RoutingConfig(addresses=("a:1",)))
    router.endpoints[0].versions = {1: State.SERVING}
    query = [IndexQuery(np.zeros(2, np.float32), 1, frozenset())]

    async def fail(version: int, times: int) -> None:
        for _ in range(times):
            with pytest.raises(errors.Unavailable, match=f"no index endpoint holds version {version}"):
                await router.search(query, version)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("no index endpoint holds")]

    await fail(7, 504)
    assert len(lines()) == 1
    await fail(8, 3)  # another version has its own line
    assert len(lines()) == 2 and "version 8" in lines()[1]
    monkeypatch.setattr("query_service.index.routing.NO_HOLDER_LOG_S", 0.0)  # the quiet time is over
    await fail(7, 1)
    assert len(lines()) == 3 and "503 more failures for want of a holder of version 7 since" in lines()[2]
    await router.close()


async def test_hedges_stay_a_small_share_of_calls_when_every_replica_turns_slow_at_once(monkeypatch):
    monkeypatch.setattr("query_service.index.routing.HEDGE_WINDOW_S", 0.05)
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1"), hedge_ms=1.0))
    calls: list[str] = []
    delay = [0.0]
    for endpoint in router.endpoints:
        endpoint.versions = {1: State.SERVING}

        def fake_search(address):
            async def search(queries, version, timeout_s):
                calls.append(address)
                await asyncio.sleep(delay[0])
                return [IndexHits(["x"], [1.0])]
            return search

        endpoint.search = fake_search(endpoint.address)  # routing is under test, not the network
    query = IndexQuery(np.zeros(2, np.float32), 1, frozenset())
    for _ in range(1000):  # a quiet time: nothing hedged
        await router.search([query], 1)
    assert len(calls) == 1000
    await asyncio.sleep(0.5)  # ten windows: what the quiet time earned is spent or gone
    delay[0] = 0.05  # overload: every replica slow, every call out-waits the hedge delay
    await asyncio.gather(*(router.search([query], 1) for _ in range(200)))
    hedges = len(calls) - 1200
    assert hedges <= 2 * (HEDGE_BURST + HEDGE_BUDGET * 200), hedges  # a copy of each would double the load
    await router.close()


# ------------------------------------------------------------------ RecommendSimilar


async def test_answers_searched_while_the_index_applied_a_delta_are_not_cached(tiny_model, tiny_index):
    """They may hold part of the next generation's changes: cached under their generation, a replica still at it
    served them as that generation's (a helper's chaos run found such answers with new candidates and deleted ones)."""
    cache = ResultCache(CacheConfig(f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier alone
    recommender = replica(tiny_model, tiny_index, cache)
    customer = tiny.CUSTOMERS[0]
    tiny_index.changing = True
    for _ in range(2):
        assert not (await recommender.recommend(customer, 3)).cache_hit
        assert not (await recommender.similar("i005", 3)).cache_hit
        await asyncio.sleep(0)  # where a cache write would run
    tiny_index.changing = False  # the delta applied: answers are cached again
    for method, arg in ((recommender.recommend, customer), (recommender.similar, "i005")):
        assert not (await method(arg, 3)).cache_hit
        await asyncio.sleep(0)
        assert (await method(arg, 3)).cache_hit
    await recommender.close()


async def test_similar_returns_neighbours_never_the_candidate_and_is_cached(tiny_model, tiny_index):
    cache = ResultCache(CacheConfig(f"redis://127.0.0.1:{free_port()}/0"))
    recommender = replica(tiny_model, tiny_index, cache)
    vectors = tiny.embeddings(1)[1]
    scores = vectors @ vectors[5]
    expected = [c for c in tiny.CANDIDATES[np.argsort(-scores, kind="stable")].tolist() if c != "i005"][:4]
    first = await recommender.similar("i005", 4)
    assert (first.ids, first.source, first.version, first.cache_hit) == (expected, SOURCE_MODEL, 1, False)
    await asyncio.sleep(0)  # the cache write runs in the background
    assert (await recommender.similar("i005", 4)).cache_hit
    excluding = await recommender.similar("i005", 4, exclusions=[expected[0]])
    assert not excluding.cache_hit and expected[0] not in excluding.ids
    only_a = Filter((TokenRestrict("genre", frozenset({"a"})),))
    await recommender.similar("i005", 4, filter=only_a)
    assert tiny_index.similar_queries[-1].filter == only_a
    assert not (await recommender.recommend("i005", 4)).cache_hit  # a customer of that name is another key
    with pytest.raises(errors.NotFound, match="'nope'"):
        await recommender.similar("nope", 4)
    for args, message in ((("", 4), "candidate_id is empty"), (("i005", 0), "k=0 is out of range"),
                          (("i005", 4, [""]), r"exclude_candidate_ids\[0\] is empty")):
        with pytest.raises(errors.InvalidArgument, match=message):
            await recommender.similar(*args)
    await recommender.close()


# ------------------------------------------------------------------ BatchRecommend


async def test_a_batch_answers_each_request_as_recommend_would_with_one_search(tiny_model, tiny_index):
    recommender = replica(tiny_model, tiny_index)
    queries = [RecommendQuery("c001", 3), RecommendQuery("c002", 5, exclusions=["i000"]),
               RecommendQuery("stranger", 2), RecommendQuery("c003", 1)]
    count = {"batcher": "Recommender._process_misses"}  # the series dashboards and alerts read
    before = prometheus_client.REGISTRY.get_sample_value("recsys_batch_size_count", count) or 0.0
    version, batch = await recommender.recommend_batch(queries)
    assert version == 1 and len(tiny_index.searches) == 1 and len(tiny_index.searches[0]) == 3
    assert prometheus_client.REGISTRY.get_sample_value("recsys_batch_size_count", count) == before + 1
    singles = [await recommender.recommend(q.customer_id, q.k, q.exclusions) for q in queries]
    assert [(r.ids, r.scores, r.source, r.version) for r in batch] == [
        (r.ids, r.scores, r.source, r.version) for r in singles]
    await recommender.close()


async def test_an_invalid_batch_item_fails_the_call_naming_it_before_any_work(tiny_model, tiny_index):
    recommender = replica(tiny_model, tiny_index)
    good = RecommendQuery("c001", 3)
    for queries, message in (([], "requests is empty"),
                             ([good] * 257, "257 requests in one batch; at most 256"),
                             ([good, RecommendQuery("c002", 0)], r"^requests\[1\]\.k=0 is out of range"),
                             ([good, good, RecommendQuery("", 3)], r"^requests\[2\]\.customer_id is empty"),
                             ([RecommendQuery("c1", 3, recent=["ok", ""])],
                              r"^requests\[0\]\.recent_candidate_ids\[1\] is empty")):
        with pytest.raises(errors.InvalidArgument, match=message):
            await recommender.recommend_batch(queries)
    assert tiny_index.searches == []
    await recommender.close()


async def test_a_batch_item_whose_seen_items_pass_the_exclusion_limit_fails_the_call_before_any_work(
        tiny_model, tiny_index):
    recommender = replica(tiny_model, tiny_index)
    # c001 has seen i001: with exclude_seen, one exclusion more than a request may send.
    full = RecommendQuery("c001", 3, exclusions=[f"x{i}" for i in range(validation.MAX_EXCLUSIONS)],
                          exclude_seen=True)
    with pytest.raises(errors.InvalidArgument, match=r"^requests\[1\]\.exclude_seen adds .* 10001 in all"):
        await recommender.recommend_batch([RecommendQuery("c002", 3), full])
    assert tiny_index.searches == []
    await recommender.close()


async def test_a_batch_item_whose_live_history_passes_the_exclusion_limit_fails_the_call_before_any_work(
        tiny_model, tiny_index, redis_server):
    recommender = live_replica(tiny_model, tiny_index, redis_server.url)
    await recommender.record_interactions("c001", ["i049"])
    # With c001's stored i001: at the limit. The live i049 is one over it, known only once the history is read.
    full = RecommendQuery("c001", 3, exclusions=[f"x{i}" for i in range(validation.MAX_EXCLUSIONS - 1)],
                          exclude_seen=True)
    with pytest.raises(errors.InvalidArgument, match=r"^requests\[1\]\.exclude_seen adds .* 10001 in all"):
        await recommender.recommend_batch([RecommendQuery("c002", 3), full])
    assert tiny_index.searches == []
    await recommender.close()


def test_a_delta_taken_in_is_never_read_half_applied(tmp_path, monkeypatch):
    """A replica takes a delta in on a worker thread while its event loop answers unknown customers from the popular
    list: read in the middle, the deleted set (changed one id at a time) and the generation (moved at the end) named
    a list no generation had, which was cached under that generation (2,621 of 285,736 racing reads)."""
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    model = QueryModel.load(registry.version_dir(1), registry.manifest(1))
    vector = np.zeros((1, tiny.DIM), np.float32)
    model.apply_catalogue([Delta.make(deleted=["i000", "i001"], dim=tiny.DIM)], 1)
    at_1 = model.popular(5, frozenset())
    assert at_1[0] == ["i002", "i003", "i004", "i005", "i006"]
    seen_mid_way = []
    holds = model._holds

    def then_a_reader(ids):  # the applier looks each delta's ids up: the event loop reads between two of them
        seen_mid_way.append((model.catalogue_generation, model.popular(5, frozenset())))
        return holds(ids)

    monkeypatch.setattr(model, "_holds", then_a_reader)
    # Generation 2 brings i000 back and deletes i002 and i003.
    model.apply_catalogue([Delta.make(["i000"], vector, dim=tiny.DIM, deleted=["i002", "i003"])], 2)
    assert seen_mid_way and all(seen == (1, at_1) for seen in seen_mid_way), seen_mid_way
    assert (model.catalogue_generation, model.popular(4, frozenset())[0]) == (2, ["i000", "i004", "i005", "i006"])
