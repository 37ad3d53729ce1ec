"""A crowded search of a sharded version asks its shards as deep as the latest one of its shape (version, filter,
k) needed: one per genre reaches deep into MovieLens-like films, and asked from k x shards up, step by step, each
such search took several rounds of calls to every shard. The shards are the in-process ones of
test_sharded_crowding."""

from __future__ import annotations

import numpy as np

from query_service.index.searches import IndexQuery
from tests.unit.test_sharded_crowding import DIM, FILTERS, MOVIES, _exact, _router


def _calls(router) -> list[int]:
    return [endpoint._stub.calls for endpoint in router.endpoints]


async def test_a_crowded_search_asks_each_shard_once_as_deep_as_the_last_of_its_shape_needed():
    router = _router(MOVIES)
    f, k = FILTERS[0], 10
    query = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
    first = (await router.search([IndexQuery(query, k, frozenset(), f)], 1))[0]
    assert first.ids == _exact(query, k, f) and max(_calls(router)) > 1  # deeper step by step: the case at hand
    before = _calls(router)
    again = (await router.search([IndexQuery(query, k, frozenset(), f)], 1))[0]
    assert (again.ids, again.scores) == (first.ids, first.scores)
    assert [now - then for now, then in zip(_calls(router), before)] == [1, 1, 1]
    await router.close()
