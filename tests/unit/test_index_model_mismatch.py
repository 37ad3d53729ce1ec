"""An index endpoint serving another model than the query replica's (a wrong --index-address: a slot of model
``other`` whose version 8 has the same embedding dims as ``demo``'s version 8) holds nothing for the replica:
its versions name other embeddings and candidates, so searching them would answer wrong ids under the replica's
model. Its status stream says so in one WARNING line a while; an answer naming another model is refused too (the
endpoint may have been restarted with another model since its last status). The slot is a real gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import grpc
import numpy as np
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from query_service.index.index_client import IndexEndpoint
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexQuery
from serving import errors


def status(model: str) -> pb.IndexStatus:
    """A slot's status holding version 8 SERVING, naming ``model``, the next one due at once (many statuses)."""
    return pb.IndexStatus(model_name=model, slot="blue", keepalive_s=0.01, versions=[
        versions_pb2.VersionStatus(version=8, state=versions_pb2.VERSION_STATE_SERVING)])


class Slot(pb_grpc.IndexServiceServicer):
    """A slot whose status streams name ``stream_model`` (every keepalive) and whose answers name ``answer_model``."""

    def __init__(self, stream_model: str, answer_model: str) -> None:
        self.stream_model, self.answer_model = stream_model, answer_model

    async def WatchStatus(self, request, context):
        while True:
            yield status(self.stream_model)
            await asyncio.sleep(0.01)

    async def Search(self, request, context):
        return pb.SearchResponse(model_version=request.model_version, model_name=self.answer_model,
                                 candidates=[pb.ScoredCandidate(candidate_id="not-a-demo-id", score=1.0)])

    async def BatchSearch(self, request, context):
        return pb.BatchSearchResponse(model_version=8, results=[await self.Search(q, context) for q in request.queries])


@contextlib.asynccontextmanager
async def watched(slot: Slot) -> AsyncIterator[tuple[IndexEndpoint, str]]:
    """``slot`` on a real gRPC server, watched by an endpoint of a replica of model ``demo``: (endpoint, address)."""
    server = grpc.aio.server()
    pb_grpc.add_IndexServiceServicer_to_server(slot, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    endpoint = IndexEndpoint(address, model="demo")
    await server.start()
    changes: list[None] = []
    watcher = asyncio.get_running_loop().create_task(endpoint.watch(lambda: changes.append(None)))
    try:
        async with asyncio.timeout(5.0):
            while not changes:  # its first status arrived
                await asyncio.sleep(0.01)
        yield endpoint, address
    finally:
        watcher.cancel()
        await endpoint.close()
        await server.stop(None)


QUERY = IndexQuery(np.zeros(2, np.float32), 1, frozenset())


async def test_an_endpoint_serving_another_model_holds_nothing_and_says_why_once_a_while(caplog):
    caplog.set_level(logging.INFO, logger="query_service")
    async with watched(Slot("other", "other")) as (endpoint, address):
        await asyncio.sleep(0.3)  # tens of statuses
        assert not endpoint.holds(8) and endpoint.versions == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert address in warnings[0] and "'other'" in warnings[0] and "'demo'" in warnings[0], warnings
    assert "--index-address" in warnings[0], warnings
    held = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert held == [f"index endpoint {address} (slot blue) holds nothing"], held


async def test_an_endpoint_serving_the_replicas_model_holds_its_versions(caplog):
    caplog.set_level(logging.WARNING, logger="query_service")
    async with watched(Slot("demo", "demo")) as (endpoint, _):
        assert endpoint.holds(8)
        assert (await endpoint.search([QUERY], 8, 2.0))[0].ids == ["not-a-demo-id"]
    assert not caplog.records


@pytest.mark.parametrize("queries", [1, 2], ids=["search", "batch"])
async def test_an_answer_naming_another_model_is_refused(queries):
    async with watched(Slot("demo", "other")) as (endpoint, _):  # restarted with another model since its status
        with pytest.raises(errors.FailedPrecondition, match="answered model 'other'.*'demo'"):
            await endpoint.search([QUERY] * queries, 8, 2.0)


async def test_the_router_gives_its_endpoints_the_replicas_model():
    """The query service builds its router with its --model (query_service.server): every endpoint checks it."""
    router = IndexRouter(RoutingConfig(addresses=("a:1", "b:1")), "demo")
    assert [e.model for e in router.endpoints] == ["demo", "demo"]
    await router.close()
