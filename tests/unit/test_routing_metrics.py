"""A query replica's /metrics says how many index endpoints can answer each
version it routes (``recsys_index_holders``), so a replica that is SERVING while
no endpoint holds its live version shows as such, not only through its error
rate. The slot is a real gRPC server whose status stream ends as a draining
slot's does (tests/unit/test_routing_logs.py)."""

from __future__ import annotations

import numpy as np
import prometheus_client
import pytest

from query_service.index.searches import IndexQuery
from serving import errors
from tests.unit.test_routing_logs import SERVING, until, watched_slot


def holders(version: int) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value("recsys_index_holders",
                                                       {"version": str(version), "shard": "0"})


async def test_the_holders_of_each_version_are_exported_and_none_is_zero_once_searched():
    async with watched_slot() as (slot, router, _):
        slot.statuses.put_nowait(SERVING)
        await until(lambda: router.routable(1))
        assert holders(1) == 1
        slot.statuses.put_nowait(None)  # the slot drains: its stream ends
        await until(lambda: not router.routable(1))
        assert holders(1) is None  # held nowhere, and this replica has not asked for it
        with pytest.raises(errors.Unavailable):
            await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset())], 1)
        assert holders(1) == 0  # the replica searches it and no endpoint can answer: an outage
        slot.statuses.put_nowait(SERVING)
        await until(lambda: router.routable(1))
        assert holders(1) == 1
    assert holders(1) is None  # a closed router exports nothing
