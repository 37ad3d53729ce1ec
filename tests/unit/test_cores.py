"""The serving cores in-process, without gRPC or subprocesses: index slots
(IndexCore + SlotAdmin), the query replica (Recommender + QueryAdmin), error
mapping and routing. Real TensorFlow towers and real ScaNN searchers, tiny
versions (tests/unit/tiny_versions.py)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from index_service.core import IndexCore, Query
from index_service.searcher import CandidateIndex
from index_service.slot import SlotAdmin
from model_registry import Registry
from model_registry import manifest as files
from model_registry.deltas import Delta
from query_service.admin import QueryAdmin
from query_service.core.queries import SOURCE_MODEL, SOURCE_POPULARITY
from query_service.core.recommender import Recommender
from query_service.core.warmup import Warmup, WarmupConfig
from query_service.index.index_client import IndexEndpoint, error_for
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexHits, IndexQuery, SimilarQuery, TimedOut
from query_service.storage.cache import CacheConfig, ResultCache
from query_service.tower import QueryModel
from serving import errors, validation
from serving.filters import Filter, TokenRestrict
from serving.lifecycle.loader import LOAD_SWITCH_INTERVAL_S, Background, Loader, short_gil_slices
from serving.lifecycle.sources import StartupVersions
from serving.lifecycle.versions import State, VersionManager
from serving.rpc.grpc_server import status_of
from tests.processes import free_port
from tests.unit import tiny_versions as tiny


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """Versions 1 and 2 (different embedding spaces), 3 with a corrupt file, 4 whose self-test fails."""
    registry = Registry(tmp_path_factory.mktemp("registry"), tiny.MODEL)
    for seed in (1, 2, 3):
        tiny.publish(registry, seed)
    embeddings = registry.version_dir(3) / files.CANDIDATE_EMBEDDINGS_FILE
    embeddings.write_bytes(embeddings.read_bytes()[:-4] + b"\0\0\0\0")
    tiny.publish(registry, 4, probe_dim=tiny.DIM + 1)
    return registry


def slot(registry: Registry, name: str, version: int | None, busy_window_s: float = 0.0) -> tuple[IndexCore, SlotAdmin]:
    manager: VersionManager[CandidateIndex] = VersionManager(tiny.MODEL)
    loader = Loader(registry, lambda path, manifest: CandidateIndex.load(path, manifest, 0.9), "index", Background.IDLE)
    core = IndexCore(manager, ThreadPoolExecutor(1))
    admin = SlotAdmin(name, registry, manager, loader, lambda: core.last_search, busy_window_s)
    admin.start(StartupVersions(version))
    return core, admin


class InProcessIndex:
    """The router's role over in-process index slots: searches pinned to a
    version go to the slot holding it. ``gate``, when set, holds searches."""

    def __init__(self, *cores: IndexCore):
        self.cores = cores
        self.calls: list[tuple[int, int]] = []  # (version, queries) per search
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None
        self.timeout_s = 3.0
        self.delay_s = 0.0  # how long each search takes
        self.started: list[float] = []  # when each search started (monotonic)
        self.timeouts: list[float] = []  # the timeout each search was given
        self.similar_calls: list[tuple[int, str]] = []  # (version, candidate) per item-to-item search

    def routable(self, version: int, generation: int = 0) -> bool:
        return any(core.manager.live_version == version and core.manager.get()[1].catalogue_generation >= generation
                   for core in self.cores)

    async def wait_routable(self, version: int, timeout_s: float, generation: int = 0) -> bool:
        return self.routable(version, generation)

    def describe(self) -> dict:
        return {i: core.manager.live_version for i, core in enumerate(self.cores)}

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]:
        assert 0 < timeout_s <= self.timeout_s
        self.calls.append((version, len(queries)))
        self.timeouts.append(timeout_s)
        self.started.append(time.monotonic())
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        core = next(c for c in self.cores if c.manager.live_version == version)
        _, results = await core.search([Query(q.vector.tolist(), q.k, tuple(q.exclusions)) for q in queries],
                                       version)
        return [IndexHits(r.ids, r.scores) for r in results]

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float) -> IndexHits:
        assert 0 < timeout_s <= self.timeout_s
        self.similar_calls.append((version, query.candidate_id))
        core = next(c for c in self.cores if c.manager.live_version == version)
        answer, result = await core.similar(query.candidate_id, query.k, tuple(query.exclusions), query.filter,
                                            version)
        return IndexHits(result.ids, result.scores, answer.generation)


def query_replica(registry: Registry, index: InProcessIndex, live: int, rollback_target: int | None = None,
                  cache: ResultCache | None = None, warmup: WarmupConfig = WarmupConfig()):
    manager: VersionManager[QueryModel] = VersionManager(tiny.MODEL)
    recommender = Recommender(manager, index, cache, ThreadPoolExecutor(1), warmup=warmup)
    admin = QueryAdmin(manager, Loader(registry, QueryModel.load, "tower", Background.GIL), index, recommender.warm)
    admin.start(StartupVersions(live, rollback_target))
    return recommender, admin


# ------------------------------------------------------------------ index slots


async def test_a_slot_with_no_busy_window_loads_even_as_a_search_lands(registry):
    """The loader thread read the clock, then the last search's time, which the event loop could set in between:
    with --busy-window-s 0 a load was refused as "answered a search for version 1 -0.1 s ago"."""
    manager: VersionManager[CandidateIndex] = VersionManager(tiny.MODEL)
    loader = Loader(registry, lambda path, manifest: CandidateIndex.load(path, manifest, 0.9), "index", Background.IDLE)
    admin = SlotAdmin("blue", registry, manager, loader, time.monotonic, 0.0)  # a search lands at every look
    admin.start(StartupVersions(1))
    assert (await admin.load(2)).live_version == 2


async def test_index_core_answers_pinned_searches_of_what_it_holds(registry):
    core, _ = slot(registry, "blue", 1)
    query = tiny.embeddings(1)[0][3]
    answer, (result,) = await core.search([Query(query.tolist(), 5)], 0)  # 0: what the slot holds
    assert (answer.version, answer.generation) == (1, 0) and result.ids == tiny.exact_top_k(1, "c003", 5)
    _, results = await core.search([Query(query.tolist(), 3, ("i000",)), Query(query.tolist(), 1)], 1)
    assert [len(r.ids) for r in results] == [3, 1] and "i000" not in results[0].ids
    for bad, message in ((Query([0.0] * 3, 5), "3 dimensions"), (Query([float("nan")] * 4, 5), "non-finite"),
                         (Query(query.tolist(), 0), "k=0")):
        with pytest.raises(errors.InvalidArgument, match=message):
            await core.search([bad], 1)
    with pytest.raises(errors.FailedPrecondition, match=r"version 2 is not loaded here \(loaded: \[1\]\)"):
        await core.search([Query(query.tolist(), 5)], 2)


async def test_index_core_refuses_batches_over_its_bounds_before_any_work(registry):
    core, _ = slot(registry, "blue", 1)
    query = Query([0.0] * tiny.DIM, 1)
    with pytest.raises(errors.InvalidArgument, match="1025 queries in one batch; at most 1024"):
        await core.search([query] * 1025, 1)
    with pytest.raises(errors.InvalidArgument, match=r"200 queries x k=1000 = 200000 results; at most 100000"):
        await core.search([Query(query.vector, 1000)] * 200, 1)
    assert core.last_search == -float("inf")  # refused before it counted as traffic


async def test_slot_replaces_what_it_holds_and_records_it(registry):
    core, admin = slot(registry, "green", None)
    assert admin.status().versions == [] and registry.slot_version("green") is None
    await admin.load(1)
    await admin.load(2)
    assert {v.version: v.state for v in admin.status().versions} == {2: State.SERVING}
    assert admin.status().versions[0].report.self_test_recall == 1.0
    assert registry.slot_version("green") == 2
    await admin.unload(2)
    assert admin.status().versions == [] and registry.slot_version("green") is None


async def test_slot_refuses_bad_versions_and_keeps_or_restores_what_it_held(registry):
    core, admin = slot(registry, "red", 1)
    with pytest.raises(errors.FailedPrecondition, match="fails its sha256 check"):
        await admin.load(3)  # refused by the checksums, before the slot drops anything
    with pytest.raises(errors.FailedPrecondition, match="probe queries have shape"):
        await admin.load(4)  # refused by the self-test, after the drop: version 1 is loaded back
    assert [(v.version, v.state) for v in admin.status().versions] == [(1, State.SERVING)]
    assert registry.slot_version("red") == 1
    answer, _ = await core.search([Query([0.1] * tiny.DIM, 3)], 1)
    assert answer.version == 1


async def test_a_slot_serving_traffic_refuses_loads(registry):
    core, admin = slot(registry, "busy", 1, busy_window_s=60)
    await core.search([Query([0.1] * tiny.DIM, 3)], 1)
    with pytest.raises(errors.FailedPrecondition, match="serves traffic"):
        await admin.load(2)
    with pytest.raises(errors.FailedPrecondition, match="routing switch"):
        await admin.promote(1)


# ------------------------------------------------------------------ query replica


async def test_a_request_keeps_its_version_across_a_promotion(registry):
    index = InProcessIndex(slot(registry, "b", 1)[0], slot(registry, "g", 2)[0])
    recommender, admin = query_replica(registry, index, live=1)
    await admin.load(2)
    index.gate = asyncio.Event()
    pinned = asyncio.ensure_future(recommender.recommend("c005", 5))
    while not index.calls:  # the miss is in the index, pinned to version 1
        await asyncio.sleep(0.001)
    await admin.promote(2)
    index.gate.set()
    before = await pinned
    after = await recommender.recommend("c005", 5)
    assert (before.version, before.ids) == (1, tiny.exact_top_k(1, "c005", 5))
    assert (after.version, after.ids) == (2, tiny.exact_top_k(2, "c005", 5))
    assert [version for version, _ in index.calls] == [1, 2]


async def test_concurrent_misses_are_grouped_by_version(registry):
    index = InProcessIndex(slot(registry, "b", 1)[0], slot(registry, "g", 2)[0])
    recommender, admin = query_replica(registry, index, live=1)
    await admin.load(2)
    index.gate = asyncio.Event()
    first = asyncio.ensure_future(recommender.recommend("c000", 3))  # a batch in flight, held at the index
    while not index.calls:
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(recommender.recommend(f"c{i:03d}", 3)) for i in range(1, 4)]
    await asyncio.sleep(0.01)
    await admin.promote(2)
    queued += [asyncio.ensure_future(recommender.recommend(f"c{i:03d}", 3)) for i in range(4, 7)]
    await asyncio.sleep(0.01)
    index.gate.set()
    results = await asyncio.gather(first, *queued)
    assert [r.version for r in results] == [1, 1, 1, 1, 2, 2, 2]
    for i, result in enumerate(results):
        assert result.ids == tiny.exact_top_k(result.version, f"c{i:03d}", 3)
    # The misses queued while the first batch was out went together, one search per version.
    assert sorted(index.calls[1:]) == [(1, 3), (2, 3)]


async def test_unknown_customers_need_no_index_and_survive_its_failure(registry):
    index = InProcessIndex(slot(registry, "b", 1)[0])
    recommender, _ = query_replica(registry, index, live=1)
    index.failure = errors.Unavailable("index down")
    known = asyncio.ensure_future(recommender.recommend("c001", 3))
    unknown = asyncio.ensure_future(recommender.recommend("stranger", 3, exclusions=["i000"]))
    results = await asyncio.gather(known, unknown, return_exceptions=True)
    assert isinstance(results[0], errors.Unavailable)
    assert (results[1].source, results[1].ids) == (SOURCE_POPULARITY, ["i001", "i002", "i003"])
    index.failure = None
    assert (await recommender.recommend("c001", 3)).source == SOURCE_MODEL
    assert all(version == 1 for version, _ in index.calls)


async def test_a_hung_index_fails_misses_within_their_deadline_not_the_callers_patience(registry):
    index = InProcessIndex(slot(registry, "b", 1)[0])
    index.timeout_s = 0.2  # the service's index deadline
    recommender, _ = query_replica(registry, index, live=1)
    index.gate = asyncio.Event()  # the index takes calls and never answers
    loop = asyncio.get_running_loop()
    start = loop.time()
    # More misses than batches in flight (4): the later ones wait for a batch, and still fail in time.
    outcomes = await asyncio.gather(*(recommender.recommend(f"c{i:03d}", 3) for i in range(8)),
                                    return_exceptions=True)
    assert all(isinstance(o, errors.Unavailable) and "within 0.2s" in str(o) for o in outcomes), outcomes
    assert loop.time() - start < 1.0  # 0.2 s each, not forever
    with pytest.raises(errors.DeadlineExceeded, match="deadline"):
        await recommender.recommend("c010", 3, timeout_s=0.05)  # the caller's shorter deadline wins
    assert index.timeouts[-1] <= 0.05  # and the index call was given no more than that
    index.gate.set()
    assert (await recommender.recommend("c001", 3)).source == SOURCE_MODEL
    await recommender.close()


async def test_exclude_seen_past_the_exclusion_limit_is_a_clear_invalid_argument(registry):
    index = InProcessIndex(slot(registry, "b", 1)[0])
    recommender, _ = query_replica(registry, index, live=1)
    exclusions = [f"x{i}" for i in range(validation.MAX_EXCLUSIONS)]
    result = await recommender.recommend("c001", 3, exclusions=exclusions, recent=["i001"])  # 10,000: allowed
    assert len(result.ids) == 3
    with pytest.raises(errors.InvalidArgument, match="exclude_seen adds .* 10001 in all, over the limit of 10000"):
        await recommender.recommend("c001", 3, exclusions=exclusions, recent=["i001"], exclude_seen=True)
    assert len(index.calls) == 1  # the refused request never reached the index
    await recommender.close()


async def test_promotion_needs_a_slot_holding_the_version_and_rollback_switches_back(registry):
    blue = slot(registry, "b", 1)[0]
    index = InProcessIndex(blue)
    recommender, admin = query_replica(registry, index, live=1)
    await admin.load(2)
    with pytest.raises(errors.FailedPrecondition, match="no index endpoint holds version 2"):
        await admin.promote(2)
    index.cores = (blue, slot(registry, "g", 2)[0])
    await admin.promote(2)
    assert {v.version: v.state for v in admin.status().versions} == {1: State.ROLLBACK_TARGET, 2: State.SERVING}
    await admin.rollback()
    assert (await recommender.recommend("c002", 3)).version == 1
    with pytest.raises(errors.FailedPrecondition, match="is live"):
        await admin.unload(1)


async def test_promotion_and_rollback_need_an_index_at_the_catalogue_generation_of_the_tower(registry, monkeypatch):
    monkeypatch.setattr("query_service.admin.ROUTE_WAIT_S", 0.1)
    router = IndexRouter(RoutingConfig(addresses=("blue:1", "green:1")))
    blue, green = router.endpoints
    for endpoint in router.endpoints:  # what the status streams would say is set below: no network here
        endpoint.watch = lambda on_change: asyncio.Event().wait()
    blue.versions, green.versions = {1: State.SERVING}, {2: State.READY}  # both at catalogue generation 0
    router.start()
    recommender, admin = query_replica(registry, router, live=1, rollback_target=2)
    # A delta applied to the query tier (ApplyCatalogue) but not to green: version 2's tower is at generation 1.
    admin.manager.get(2)[1].apply_catalogue([Delta.make(deleted=["i001"], dim=tiny.DIM)], 1)
    needed = r"version 2 at catalogue generation >= 1 \(its tower here is at 1\).*green:1.*catalogue generation 0"
    for switch in (admin.rollback, lambda: admin.promote(2)):
        with pytest.raises(errors.FailedPrecondition, match=needed + r".*recsys-catalogue"):
            await switch()
        assert admin.manager.live_version == 1
    green.generations = {2: 1}  # the slot took the delta too
    await admin.rollback()
    assert admin.manager.live_version == 2
    await recommender.close()
    await router.close()


async def test_a_starting_replica_serves_once_an_index_is_at_its_towers_catalogue_generation(registry):
    """A replica that starts after a delta its slot has not applied loads its tower at that generation: SERVING
    then would fail every miss ("no index endpoint holds version 1 ... at catalogue generation >= 1")."""
    from query_service.server import _serve_once_routable

    router = IndexRouter(RoutingConfig(addresses=("blue:1",)))
    [blue] = router.endpoints
    blue.watch = lambda on_change: asyncio.Event().wait()  # no network: the status is set below
    blue.versions = {1: State.SERVING}  # at catalogue generation 0
    router.start()
    recommender, admin = query_replica(registry, router, live=1)
    admin.manager.get(1)[1].apply_catalogue([Delta.make(deleted=["i001"], dim=tiny.DIM)], 1)
    served: list[bool] = []

    class Service:
        async def set_serving(self, serving: bool) -> None:
            served.append(serving)

    task = asyncio.create_task(_serve_once_routable(Service(), admin.manager, router))
    await asyncio.sleep(0.05)
    assert served == []
    blue.generations = {1: 1}  # the slot took the delta
    router._on_change()
    await asyncio.wait_for(task, 5)
    assert served == [True]
    await recommender.close()
    await router.close()


async def test_loading_a_version_warms_the_cache_with_the_recent_requests(registry):
    blue = slot(registry, "b", 1)[0]
    index = InProcessIndex(blue)
    # The in-process tier only: Redis is unreachable, which the cache treats as misses.
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))
    recommender, admin = query_replica(registry, index, live=1, cache=cache)
    customers = ["c001", "c002", "c003"]
    for customer in customers:
        await recommender.recommend(customer, 3)
    await recommender.similar("i004", 2)
    await admin.load(2)  # no index endpoint holds version 2 yet: nothing to warm
    index.cores = (blue, slot(registry, "g", 2)[0])
    await admin.unload(2)
    searches = len(index.calls)
    await admin.load(2)
    assert index.calls[searches:] == [(2, 3)]  # the three requests, in one batch
    assert index.similar_calls == [(1, "i004"), (2, "i004")]  # RecommendSimilar is replayed too
    await admin.promote(2)
    await asyncio.sleep(0)  # the cache writes run in the background
    results = [await recommender.recommend(customer, 3) for customer in customers]
    assert [(r.version, r.cache_hit) for r in results] == [(2, True)] * 3
    assert [r.ids for r in results] == [tiny.exact_top_k(2, customer, 3) for customer in customers]
    similar = await recommender.similar("i004", 2)
    assert (similar.version, similar.cache_hit, len(similar.ids)) == (2, True, 2) and "i004" not in similar.ids
    assert len(index.calls) == searches + 1 and len(index.similar_calls) == 2
    await admin.rollback()
    await admin.unload(2)
    index.failure = RuntimeError("index exploded")
    await admin.load(2)  # a failed warm-up costs only misses: the load stands
    assert {v.version: v.state for v in admin.status().versions} == {1: State.SERVING, 2: State.READY}
    await recommender.close()


async def test_a_warm_up_answers_a_request_as_it_was_asked_exclusions_and_recent_items_included(registry):
    """The recency list holds a Recommend request as plain values (``KeyedRequest.held``): warmed from them,
    its result must land under the key the request itself computes on the new version."""
    blue = slot(registry, "b", 1)[0]
    index = InProcessIndex(blue)
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender, admin = query_replica(registry, index, live=1, cache=cache)
    asked = {"exclusions": ["i001", "i003"], "recent": ["i002"]}
    await recommender.recommend("c001", 3, **asked)
    index.cores = (blue, slot(registry, "g", 2)[0])
    await admin.load(2)
    await admin.promote(2)
    await asyncio.sleep(0)  # the cache writes run in the background
    result = await recommender.recommend("c001", 3, **asked)
    assert (result.version, result.cache_hit) == (2, True) and not {"i001", "i003"} & set(result.ids)
    await recommender.close()


async def test_replicas_of_two_registries_sharing_a_cache_never_read_each_others_results(registry, tmp_path):
    """Staging and production on one Redis (or a registry made anew): each registry's version 1 is another model,
    and a result of one read as the other's would break the one invariant (a tower and an index of one version)."""
    other = Registry(tmp_path / "other", tiny.MODEL)
    tiny.publish(other, 2)  # its version 1 holds the embedding space the first registry's version 2 has
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier, shared
    first, _ = query_replica(registry, InProcessIndex(slot(registry, "b", 1)[0]), live=1, cache=cache)
    second, _ = query_replica(other, InProcessIndex(slot(other, "b", 1)[0]), live=1, cache=cache)
    for recommend in (first.recommend, second.recommend):
        await recommend("c001", 3)
        await asyncio.sleep(0)  # the cache writes run in the background
    answers = [await first.recommend("c001", 3), await second.recommend("c001", 3)]
    assert [a.cache_hit for a in answers] == [True, True] and answers[0].ids != answers[1].ids
    assert answers[0].ids == tiny.exact_top_k(1, "c001", 3) and answers[1].ids == tiny.exact_top_k(2, "c001", 3)
    similar = [await replica.similar("i001", 3) for replica in (first, second)]
    assert [s.cache_hit for s in similar] == [False, False]
    await first.close()
    await second.close()


async def test_a_request_the_warmed_version_refuses_is_left_out_not_its_batch(registry):
    """Version 2 lacks the filter namespace version 1 had: an index slot refuses a search naming it (the
    whole call), as version 2's replica refuses such a request. Warming it would cost its batch."""

    class AttributeIndex(InProcessIndex):
        async def search(self, queries, version, timeout_s):
            for q in queries:
                q.filter.check_namespaces({"genre"} if version == 1 else set(), set())
            return await super().search(queries, version, timeout_s)

    blue = slot(registry, "b", 1)[0]
    index = AttributeIndex(blue)
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender, admin = query_replica(registry, index, live=1, cache=cache)
    recommender.manager.get(1)[1].token_namespaces = frozenset({"genre"})
    await recommender.recommend("c001", 3)
    await recommender.recommend("c002", 3, filter=Filter((TokenRestrict("genre", frozenset({"a"})),)))
    await recommender.recommend("c003", 3)
    index.cores = (blue, slot(registry, "g", 2)[0])
    searches = len(index.calls)
    await admin.load(2)
    assert index.calls[searches:] == [(2, 2)]
    await admin.promote(2)
    await asyncio.sleep(0)  # the cache writes run in the background
    assert [(await recommender.recommend(c, 3)).cache_hit for c in ("c001", "c003")] == [True, True]
    await recommender.close()


async def test_exclude_seen_past_the_limit_on_the_warmed_version_leaves_out_that_request_only(registry, monkeypatch):
    blue = slot(registry, "b", 1)[0]
    index = InProcessIndex(blue)
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender, admin = query_replica(registry, index, live=1, cache=cache, warmup=WarmupConfig(batch_size=1))
    await recommender.recommend("c002", 3)
    exclusions = [f"x{i}" for i in range(validation.MAX_EXCLUSIONS - 1)]
    await recommender.recommend("c001", 3, exclusions=exclusions, exclude_seen=True)  # with c001's seen: 10,000
    seen = QueryModel.seen  # version 2 holds one more item for c001: 10,001

    def seen_by_version(model, customer_id):
        return seen(model, customer_id) | ({"i049"} if model.version == 2 else set())

    monkeypatch.setattr(QueryModel, "seen", seen_by_version)
    index.cores = (blue, slot(registry, "g", 2)[0])
    await admin.load(2)
    await admin.promote(2)
    await asyncio.sleep(0)  # the cache writes run in the background
    assert (await recommender.recommend("c002", 3)).cache_hit
    await recommender.close()


async def test_a_warm_up_batch_failing_with_an_error_not_the_services_own_is_skipped_not_the_rest(registry):
    class FailingOnce(InProcessIndex):
        async def search(self, queries, version, timeout_s):
            if version == 2 and not any(v == 2 for v, _ in self.calls):
                self.calls.append((version, len(queries)))
                raise RuntimeError("a bug or a library's error, not a ServingError")
            return await super().search(queries, version, timeout_s)

    blue = slot(registry, "b", 1)[0]
    index = FailingOnce(blue)
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))  # the in-process tier only
    recommender, admin = query_replica(registry, index, live=1, cache=cache, warmup=WarmupConfig(batch_size=1))
    for customer in ("c001", "c002", "c003"):
        await recommender.recommend(customer, 3)
    index.cores = (blue, slot(registry, "g", 2)[0])
    searches = len(index.calls)
    await admin.load(2)
    assert index.calls[searches:] == [(2, 1)] * 3  # most recent first: c003's batch failed
    await admin.promote(2)
    await asyncio.sleep(0)  # the cache writes run in the background
    assert [(await recommender.recommend(c, 3)).cache_hit for c in ("c001", "c002", "c003")] == [True, True, False]
    await recommender.close()


async def test_a_warm_up_rests_between_batches_as_its_duty_cycle_asks(registry):
    blue = slot(registry, "b", 1)[0]
    index = InProcessIndex(blue)
    cache = ResultCache(CacheConfig(url=f"redis://127.0.0.1:{free_port()}/0"))
    recommender, admin = query_replica(registry, index, live=1, cache=cache,
                                       warmup=WarmupConfig(batch_size=1, duty_cycle=0.25))
    for customer in ("c001", "c002", "c003"):
        await recommender.recommend(customer, 3)
    index.cores = (blue, slot(registry, "g", 2)[0])
    index.delay_s = 0.02
    searches = len(index.calls)
    await admin.load(2)
    assert index.calls[searches:] == [(2, 1)] * 3
    # Each batch works >= 20 ms, so at a quarter duty cycle it rests >= 60 ms before the next.
    gaps = np.diff(index.started[searches:])
    assert (gaps >= 0.08).all(), gaps
    await recommender.close()


@pytest.mark.parametrize("budget_s, batches, warmed, longest_s", [
    (0.1, 1, 1, 0.6),  # one batch, the budget passed during it: no rest after it (was 0.8 s)
    (0.1, 2, 1, 0.6),  # the budget passed during the first batch: no rest, no second batch (was 0.8 s)
    (0.5, 3, 1, 0.45),  # the rest after the first would end past the budget: not taken (was a rest to 0.5 s)
    (10.0, 2, 2, 1.45),  # a rest between the two batches (0.6 s), none after the last (was 1.6 s)
])
async def test_a_warm_up_does_not_rest_past_its_budget_nor_after_its_last_batch(budget_s, batches, warmed,
                                                                                 longest_s):
    """It rested three times each batch's time after every batch, the last included and past the budget: a
    0.1 s budget with batches of 0.2 s held the version's load 0.81 s."""
    warmup = Warmup(WarmupConfig(budget_s=budget_s, batch_size=1, duty_cycle=0.25))
    for request in range(batches):
        warmup.remember(request)

    async def slow_batch(requests: list) -> int:
        await asyncio.sleep(0.2)
        return len(requests)

    started = time.monotonic()
    assert await warmup.run(2, slow_batch) == warmed
    assert time.monotonic() - started < longest_s


async def test_a_warm_up_rest_made_late_past_the_budget_by_live_traffic_starts_no_batch():
    """A rest planned to end before the budget woke after it (the loop busy with live calls) and a batch started
    past the budget."""
    warmup = Warmup(WarmupConfig(budget_s=1.0, batch_size=1, duty_cycle=0.25))
    for request in range(3):
        warmup.remember(request)
    started: list[float] = []

    async def slow_batch(requests: list) -> int:
        started.append(time.monotonic())
        await asyncio.sleep(0.2)
        return len(requests)

    async def busy_loop() -> None:  # holds the event loop from 0.75 s to 1.05 s, as a burst of calls would
        await asyncio.sleep(0.75)
        time.sleep(0.3)

    begun = time.monotonic()
    busy = asyncio.ensure_future(busy_loop())
    assert await warmup.run(2, slow_batch) == 1, [round(t - begun, 3) for t in started]
    await busy


# ------------------------------------------------------------------ errors and routing


def test_short_gil_slices_overlapping_on_two_threads_hold_until_the_last_leaves():
    """An index replays a loading version's deltas while it catches the live one up: two blocks on two
    threads that overlap without nesting. The short interval holds until both leave, then the
    interpreter's own comes back."""
    default = sys.getswitchinterval()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def first() -> None:
        with short_gil_slices():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with short_gil_slices():
            second_in.set()
            first_out.wait(5)
            seen["after the first left"] = sys.getswitchinterval()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen["after the first left"] == pytest.approx(LOAD_SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == pytest.approx(default)


def test_status_of_maps_domain_errors_and_hides_the_rest():
    cases = {errors.InvalidArgument("bad k"): grpc.StatusCode.INVALID_ARGUMENT,
             errors.NotFound("no v9"): grpc.StatusCode.NOT_FOUND,
             errors.FailedPrecondition("not loaded"): grpc.StatusCode.FAILED_PRECONDITION,
             errors.Unavailable("down"): grpc.StatusCode.UNAVAILABLE}
    for error, code in cases.items():
        assert status_of(error, "Recommend") == (code, str(error))
    assert status_of(errors.InvalidArgument("x" * 5000), "m")[1] == "x" * 1000  # messages are bounded
    code, message = status_of(KeyError("secret detail"), "Recommend")
    assert code == grpc.StatusCode.INTERNAL and message == "internal error in Recommend: KeyError"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_index_call_failures_become_domain_errors_that_name_no_address():
    # The caller's request was validated before the search: what the index refuses is the services'
    # disagreement (FAILED_PRECONDITION), and an overloaded or cancelled index is worth a retry.
    for code, kind in ((grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
                       (grpc.StatusCode.DEADLINE_EXCEEDED, TimedOut),  # UNAVAILABLE, but not for another try
                       (grpc.StatusCode.CANCELLED, errors.Unavailable),
                       (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.Unavailable),
                       (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
                       (grpc.StatusCode.INVALID_ARGUMENT, errors.FailedPrecondition),
                       (grpc.StatusCode.NOT_FOUND, errors.FailedPrecondition),
                       (grpc.StatusCode.INTERNAL, errors.ServingError)):
        error = error_for(rpc_error(code, "why"), "10.0.0.1:50051")
        assert type(error) is kind and str(error) == f"index search failed: {code.name}: why"
    assert TimedOut.code == "UNAVAILABLE"


async def test_router_sends_a_version_to_its_holders_and_fails_over_once():
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1", "c:1")))
    a, b, c = router.endpoints
    a.versions, b.versions, c.versions = {1: State.SERVING}, {1: State.READY}, {2: State.SERVING}
    answered: list[str] = []

    def fake_search(endpoint: IndexEndpoint, fail: bool):
        async def search(queries, version, timeout_s):
            assert 0 < timeout_s <= router.timeout_s
            answered.append(endpoint.address)
            if fail:
                raise errors.Unavailable(f"{endpoint.address} down")
            return [IndexHits(["x"], [1.0])]
        return search

    # The network call is the one piece replaced here: routing is what is under test.
    a.search, b.search, c.search = fake_search(a, True), fake_search(b, False), fake_search(c, False)
    query = [IndexQuery(np.zeros(2, np.float32), 1, frozenset())]
    for _ in range(4):
        assert await router.search(query, 1) == [IndexHits(["x"], [1.0])]
    assert set(answered) == {"a:1", "b:1"} and answered.count("b:1") == 4  # a fails, b answers every time
    assert await router.search(query, 2) == [IndexHits(["x"], [1.0])] and answered[-1] == "c:1"
    with pytest.raises(errors.Unavailable, match="no index endpoint holds version 7"):
        await router.search(query, 7)
    b.versions = {}
    with pytest.raises(errors.Unavailable, match="a:1 down"):
        await router.search(query, 1)  # a's own failure, with no other holder left
    await router.close()
