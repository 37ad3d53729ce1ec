"""Crowding over a sharded version: the router's crowded answer must be the greedy crowding of every candidate
by score, as one index over all of them gives. Three brute-force shards in process, each behind an
``IndexEndpoint`` whose stub calls the index's own servicer: the requests the endpoint builds and the answers
the index gives (tokens included) are real, only the network is not."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc
import numpy as np
import pytest

from index_service.attributes import AttributeColumns
from index_service.core import IndexCore
from index_service.rows import Rows
from index_service.searcher import CandidateIndex, _scann_pybind
from index_service.servicer import IndexServicer
from model_registry import IndexSpec, Manifest
from model_registry.attributes import Attributes
from model_registry.manifest import shard_of
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexQuery, SimilarQuery
from serving.filters import NO_FILTER, Filter, check_filter
from serving.lifecycle.admin import LoadReport
from serving.lifecycle.versions import State, VersionManager

SHARDS, DIM, N = 3, 8, 900
GENRES = [f"g{j:02d}" for j in range(19)]


class Catalogue(NamedTuple):
    ids: np.ndarray
    vectors: np.ndarray
    genres: list[list[str]]


def _movielens_like() -> Catalogue:
    """One to three genres a candidate, the first few genres common and the rest rare, as MovieLens's are, so one
    result per genre has to reach deep into the common genres' neighbours."""
    rng = np.random.default_rng(7)
    share = 1.0 / np.arange(1, len(GENRES) + 1) ** 1.5
    held = [sorted(set(rng.choice(GENRES, size=rng.integers(1, 4), p=share / share.sum()).tolist()))
            for _ in range(N)]
    return Catalogue(np.array([f"m{j:04d}" for j in range(N)]), rng.standard_normal((N, DIM)).astype(np.float32),
                     held)


MOVIES = _movielens_like()
IDS, VECTORS = MOVIES.ids, MOVIES.vectors


class CallContext:
    """What a servicer reads of an in-process call's gRPC context: no deadline; a refusal raised as the network
    delivers one."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata=()) -> None:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing_metadata), details)


class InProcessStub:
    """An endpoint's IndexService stub answered by an in-process servicer; counts the calls."""

    def __init__(self, servicer: IndexServicer):
        self.servicer = servicer
        self.calls = 0

    async def Search(self, request, timeout=None, metadata=None):
        self.calls += 1
        return await self.servicer.Search(request, CallContext())

    async def BatchSearch(self, request, timeout=None, metadata=None):
        self.calls += 1
        return await self.servicer.BatchSearch(request, CallContext())

    async def SearchSimilar(self, request, timeout=None, metadata=None):
        self.calls += 1
        return await self.servicer.SearchSimilar(request, CallContext())


def _shard_index(catalogue: Catalogue, shard: int) -> CandidateIndex:
    rows = np.flatnonzero(shard_of(catalogue.ids, SHARDS) == shard)
    db = catalogue.vectors[rows]
    attributes = Attributes.from_lists(len(rows), {"genres": [catalogue.genres[r] for r in rows]})
    return CandidateIndex(Manifest("m", 1, DIM, len(rows), "id", "test", "now", IndexSpec("brute_force"), {}),
                          Rows(catalogue.ids[rows], db), _scann_pybind().builder(db, 10, "dot_product")
                          .score_brute_force().build(), LoadReport(0, 0), AttributeColumns(attributes, len(rows)),
                          ([], []), shard=(shard, SHARDS))


def _router(catalogue: Catalogue) -> IndexRouter:
    """A router over the three shards of version 1 of ``catalogue``, each endpoint's stub an ``InProcessStub``."""
    router = IndexRouter(RoutingConfig(addresses=tuple(f"shard{s}:1" for s in range(SHARDS)), hedge_ms=0))
    for shard, endpoint in enumerate(router.endpoints):
        manager: VersionManager[CandidateIndex] = VersionManager("m")
        manager.add(1, _shard_index(catalogue, shard), make_live=True)
        endpoint.versions, endpoint.shard, endpoint.shards = {1: State.SERVING}, shard, SHARDS
        endpoint._stub = InProcessStub(IndexServicer(IndexCore(manager, ThreadPoolExecutor(1)), None))
    return router


@pytest.fixture
async def router():
    router = _router(MOVIES)
    yield router
    await router.close()


def _exact(vector: np.ndarray, k: int, f: Filter, excluded: str = "", catalogue: Catalogue = MOVIES) -> list[str]:
    """Greedy crowding of every candidate passing ``f``'s restricts, best score first: one index's answer."""
    taken: collections.Counter[str] = collections.Counter()
    out = []
    for row in np.argsort(-(catalogue.vectors @ vector), kind="stable"):
        genres = catalogue.genres[row]
        if catalogue.ids[row] == excluded or any(r.allow and not r.allow & set(genres) for r in f.restricts):
            continue
        if f.max_per_value:
            if any(taken[g] >= f.max_per_value for g in genres):
                continue
            taken.update(genres)
        out.append(str(catalogue.ids[row]))
        if len(out) == k:
            break
    return out


FILTERS = [check_filter([], [], "genres", 1), check_filter([], [], "genres", 3),
           check_filter([("genres", ["g00", "g05"], [])], [], "genres", 2)]
FILTER_NAMES = ["1 per genre", "3 per genre", "restricted, 2 per genre"]


def _assert_greedy(found: list[list[str]], wanted: list[list[str]]) -> None:
    unlike = [(i, len(got), len(want)) for i, (got, want) in enumerate(zip(found, wanted)) if got != want]
    assert not unlike, f"answers unlike the greedy crowding of every candidate (query, results, its results): {unlike}"


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("f", FILTERS, ids=FILTER_NAMES)
async def test_a_crowded_search_of_a_sharded_version_is_the_greedy_crowding_of_every_candidate(router, f, k):
    """A shard that crowded its own answer dropped a candidate for a neighbour that the merge then dropped for
    another shard's better one: the candidate was lost, and some answers came out shorter than they could."""
    queries = np.random.default_rng(11).standard_normal((12, DIM)).astype(np.float32)
    found = await router.search([IndexQuery(q, k, frozenset(), f) for q in queries], 1)
    _assert_greedy([hits.ids for hits in found], [_exact(q, k, f) for q in queries])


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("f", FILTERS, ids=FILTER_NAMES)
async def test_a_crowded_similar_search_of_a_sharded_version_is_the_greedy_crowding_of_every_candidate(router, f, k):
    candidates = IDS[::90].tolist()
    found = [(await router.similar(SimilarQuery(c, k, frozenset(), f), 1)).ids for c in candidates]
    wanted = [_exact(VECTORS[IDS.tolist().index(c)], k, f, excluded=c) for c in candidates]
    _assert_greedy(found, wanted)


async def test_an_uncrowded_search_of_a_sharded_version_asks_each_shard_once(router):
    queries = np.random.default_rng(12).standard_normal((4, DIM)).astype(np.float32)
    found = await router.search([IndexQuery(q, 10, frozenset(), NO_FILTER) for q in queries], 1)
    assert [hits.ids for hits in found] == [_exact(q, 10, NO_FILTER) for q in queries]
    assert [endpoint._stub.calls for endpoint in router.endpoints] == [1] * SHARDS
    similar = await router.similar(SimilarQuery(IDS[0], 10, frozenset()), 1)
    assert similar.ids == _exact(VECTORS[0], 10, NO_FILTER, excluded=IDS[0])
    assert [endpoint._stub.calls for endpoint in router.endpoints] == [2] * SHARDS


def rare_token_catalogue() -> tuple[Catalogue, np.ndarray, int]:
    """4,500 films of three genres in turn, but for the one farthest from the query returned (and its row): the only
    film of genre "rare", last of ~1,500 in its shard."""
    rng = np.random.default_rng(5)
    n = 4500
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    query = rng.standard_normal(DIM).astype(np.float32)
    genres = [[GENRES[j % 3]] for j in range(n)]
    rare = int(np.argmin(vectors @ query))
    genres[rare] = ["rare"]
    return Catalogue(np.array([f"m{j:04d}" for j in range(n)]), vectors, genres), query, rare


async def test_a_rare_tokens_candidate_deeper_than_a_shard_answers_still_comes_back():
    """A shard gives at most 1,000 uncrowded results: a genre's only film, last of 1,500 in its shard, is found by
    the shard's own crowding, asked once those 1,000 could not settle the merge: it looks as deep as one index."""
    catalogue, query, rare = rare_token_catalogue()
    router = _router(catalogue)
    f = check_filter([], [], "genres", 1)
    found = (await router.search([IndexQuery(query, 10, frozenset(), f)], 1))[0]
    assert found.ids == _exact(query, 10, f, catalogue=catalogue) and found.ids[-1] == catalogue.ids[rare]
    await router.close()
