"""Crowding over a sharded version whose index endpoints answer at most --max-k 100 results a search, below the
1,000 a crowded merge asks a shard for at its deepest (``CrowdedMerge.merge``). The shards are the in-process
ones of test_sharded_crowding, refusing as a real index does: the servicer's own refusal reaches the endpoint as
the gRPC error a remote one's would."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from index_service.core import SearchLimits
from query_service.index.routing import IndexRouter
from query_service.index.searches import IndexQuery, SimilarQuery
from serving import validation
from serving.errors import InvalidArgument
from serving.filters import NO_FILTER
from tests.unit.test_sharded_crowding import DIM, FILTER_NAMES, FILTERS, IDS, MOVIES, VECTORS, CallContext, \
    Catalogue, _assert_greedy, _exact, _router, rare_token_catalogue

MAX_K = 100


class RefusingStub:
    """An endpoint's IndexService stub answered by an in-process servicer, refusals included; ``ks`` holds each
    call's deepest query."""

    def __init__(self, servicer):
        self.servicer = servicer
        self.ks: list[int] = []

    def __getattr__(self, method: str):
        async def call(request, timeout=None, metadata=None):
            self.ks.append(max(q.k for q in request.queries) if method == "BatchSearch" else request.k)
            return await getattr(self.servicer, method)(request, CallContext())
        return call


def _capped(catalogue: Catalogue) -> IndexRouter:
    """``_router``'s three shards of ``catalogue``, each started with --max-k 100."""
    router = _router(catalogue)
    for endpoint in router.endpoints:
        servicer = endpoint._stub.servicer
        servicer.core.limits = SearchLimits(max_k=MAX_K)
        endpoint._stub = RefusingStub(servicer)
    return router


@pytest.fixture
async def router():
    router = _capped(MOVIES)
    yield router
    await router.close()


def _deepest(router) -> int:
    return max(k for endpoint in router.endpoints for k in endpoint._stub.ks)


@pytest.mark.parametrize("k", [10, 60])
@pytest.mark.parametrize("f", FILTERS, ids=FILTER_NAMES)
async def test_a_crowded_search_of_shards_with_a_lower_max_k_is_one_indexs_answer(router, f, k):
    """Asked up to 1,000 deep, the shards refused INVALID_ARGUMENT and the search failed."""
    queries = np.random.default_rng(11).standard_normal((12, DIM)).astype(np.float32)
    batch = [IndexQuery(q, k, frozenset(), f) for q in queries]
    wanted = [_exact(q, k, f) for q in queries]
    _assert_greedy([hits.ids for hits in await router.search(batch, 1)], wanted)
    for endpoint in router.endpoints:
        endpoint._stub.ks.clear()
    _assert_greedy([hits.ids for hits in await router.search(batch, 1)], wanted)
    assert _deepest(router) <= MAX_K  # learnt: asked no deeper than the shards answer, so none refused
    candidates = IDS[::150].tolist()
    similar = [(await router.similar(SimilarQuery(c, k, frozenset(), f), 1)).ids for c in candidates]
    _assert_greedy(similar, [_exact(VECTORS[IDS.tolist().index(c)], k, f, excluded=c) for c in candidates])


@pytest.mark.parametrize("f", [NO_FILTER, FILTERS[0]], ids=["uncrowded", "crowded"])
async def test_a_search_deeper_than_the_shards_max_k_is_refused_naming_it(router, f):
    query = IndexQuery(VECTORS[0], MAX_K + 1, frozenset(), f)
    with pytest.raises(InvalidArgument, match=f"k={MAX_K + 1} is out of range: ask for 1 to {MAX_K} candidates"):
        await router.search([query], 1)
    with pytest.raises(InvalidArgument, match=f"ask for 1 to {MAX_K} candidates"):
        await router.similar(SimilarQuery(IDS[0], MAX_K + 1, frozenset(), f), 1)


async def test_a_rare_tokens_candidate_deeper_than_the_merge_reaches_still_comes_back():
    """A genre's only film, last of 1,500 in its shard: 100 results at a time reach 1,000 of them, and the shard's
    own crowding the rest, as with shards that answer 1,000 at once (test_sharded_crowding)."""
    catalogue, query, rare = rare_token_catalogue()
    router = _capped(catalogue)
    f = FILTERS[0]
    found = (await router.search([IndexQuery(query, 10, frozenset(), f)], 1))[0]
    assert found.ids == _exact(query, 10, f, catalogue=catalogue) and found.ids[-1] == catalogue.ids[rare]
    # Excluding nearly as many as a search may leaves room to pass over few of the results held: the shards' own
    # crowding answers below those.
    excluded = frozenset(f"absent{j}" for j in range(validation.MAX_EXCLUSIONS - 50))
    found = (await router.search([IndexQuery(query, 10, excluded, f)], 1))[0]
    assert found.ids[-1] == catalogue.ids[rare] and len(found.ids) == 4
    await router.close()


async def test_an_unsharded_search_over_the_index_max_k_is_the_callers_to_lower_not_a_replicas_failure():
    """Refused as FAILED_PRECONDITION, it was tried on another replica too, and the first one passed over."""
    router = _capped(MOVIES)
    stub = router.endpoints[0]._stub
    for endpoint in router.endpoints:  # three replicas of one unsharded version (shard 0's candidates)
        endpoint.shard, endpoint.shards, endpoint._stub = 0, 0, stub
    with pytest.raises(InvalidArgument, match=f"k={MAX_K + 1} is out of range: ask for 1 to {MAX_K} candidates"):
        await router.search([IndexQuery(VECTORS[0], MAX_K + 1, frozenset(), NO_FILTER)], 1)
    assert stub.ks == [MAX_K + 1] and not router._suspect_until
    await router.close()
