"""What a query replica's metrics say about its calls to index endpoints: each try timed by endpoint, method and
code (``recsys_index_call_seconds``), and the searches sent to a second endpoint counted by why
(``recsys_index_reroutes_total``). Before them, a replica hedging every search away from a stalled index replica
looked, in every query-side metric, like one serving normal traffic. The slots are real gRPC servers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import grpc
import numpy as np
import prometheus_client

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexQuery
from serving.lifecycle.versions import State

QUERY = IndexQuery(np.zeros(2, np.float32), 1, frozenset())


class Slot(pb_grpc.IndexServiceServicer):
    """Answers version 8's searches (``mode`` "ok"), fails them UNAVAILABLE ("failing"), or answers a second late
    ("stalled")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def Search(self, request, context):
        if self.mode == "failing":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the slot is draining")
        if self.mode == "stalled":
            await asyncio.sleep(1.0)
        return pb.SearchResponse(model_version=8, candidates=[pb.ScoredCandidate(candidate_id="x", score=1.0)])

    async def BatchSearch(self, request, context):
        return pb.BatchSearchResponse(model_version=8, results=[await self.Search(q, context) for q in request.queries])


@contextlib.asynccontextmanager
async def routed(*modes: str, hedge_ms: float) -> AsyncIterator[tuple[IndexRouter, list[str]]]:
    """A router over one real slot server per mode, each endpoint holding version 8: (router, addresses)."""
    servers, addresses = [], []
    for mode in modes:
        server = grpc.aio.server()
        pb_grpc.add_IndexServiceServicer_to_server(Slot(mode), server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
    router = IndexRouter(RoutingConfig(addresses=tuple(addresses), hedge_ms=hedge_ms))
    for endpoint in router.endpoints:
        endpoint.versions = {8: State.SERVING}  # as their status streams would say
    try:
        yield router, addresses
    finally:
        await router.close()
        for server in servers:
            await server.stop(None)


def calls(endpoint: str, method: str, code: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "recsys_index_call_seconds_count", {"endpoint": endpoint, "method": method, "code": code}) or 0.0


def reroutes(reason: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value("recsys_index_reroutes_total", {"reason": reason})


async def test_each_try_is_timed_by_endpoint_method_and_code_and_each_retry_counted(monkeypatch):
    monkeypatch.setattr("query_service.index.routing.SUSPECT_S", 0.0)  # plain turns: the failing one is first twice
    async with routed("ok", "failing", hedge_ms=0) as (router, (ok, failing)):
        retried = reroutes("retried")
        for _ in range(4):
            assert (await router.search([QUERY], 8))[0].ids == ["x"]
        assert len(await router.search([QUERY, QUERY], 8)) == 2
    assert reroutes("retried") - retried == calls(failing, "Search", "UNAVAILABLE") == 2
    assert calls(ok, "Search", "OK") == 4
    assert calls(ok, "BatchSearch", "OK") + calls(failing, "BatchSearch", "UNAVAILABLE") >= 1


async def test_a_hedged_search_is_counted_and_its_stalled_try_timed_as_cancelled():
    async with routed("stalled", "ok", hedge_ms=20) as (router, (stalled, ok)):
        hedged = reroutes("hedged")
        answers = await asyncio.gather(*(router.search([QUERY], 8) for _ in range(4)))
        assert all(a[0].ids == ["x"] for a in answers)
        for _ in range(50):  # the cancelled try is timed once its task has run its cancellation
            if calls(stalled, "Search", "CANCELLED") == reroutes("hedged") - hedged:
                break
            await asyncio.sleep(0.01)
    assert reroutes("hedged") - hedged == calls(stalled, "Search", "CANCELLED") >= 1
    assert calls(ok, "Search", "OK") == 4
