"""A query replica's admin status lists its index endpoints as its router sees them, each with what keeps the
live version's searches from it and what fixes that (``IndexRouter.report``, ``ServiceStatus.index_endpoints``),
and ``recsys-client status`` shows a line under the replica for each such endpoint only. Before, an endpoint of
another model, one that never answered, an empty slot or one behind the tower's catalogue generation showed in
the replica's log only. The routers' slots are real gRPC servers or statuses set by hand (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import AsyncIterator

import grpc

from model_registry import Registry
from protos.recsys.v1 import admin_pb2
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from query_service.admin import QueryAdmin
from query_service.index.routing import IndexRouter, RoutingConfig
from recsys_client import status
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.versions import State, VersionManager
from serving.rpc.admin_rpc import AdminServicer
from tests.processes import free_port

SERVING = versions_pb2.VERSION_STATE_SERVING


class Slot(pb_grpc.IndexServiceServicer):
    """A slot whose status stream names ``model`` and holds version 8 SERVING."""

    def __init__(self, name: str, model: str) -> None:
        self.name, self.model = name, model

    async def WatchStatus(self, request, context):
        while True:
            yield pb.IndexStatus(model_name=self.model, slot=self.name, keepalive_s=60.0, versions=[
                versions_pb2.VersionStatus(version=8, state=SERVING)])
            await asyncio.sleep(60.0)


@contextlib.asynccontextmanager
async def serving(*slots: Slot) -> AsyncIterator[list[str]]:
    """Each slot on a real gRPC server of its own: their addresses."""
    servers, addresses = [], []
    for slot in slots:
        server = grpc.aio.server()
        pb_grpc.add_IndexServiceServicer_to_server(slot, server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
    try:
        yield addresses
    finally:
        for server in servers:
            await server.stop(None)


async def test_the_report_names_an_endpoint_of_another_model_and_one_never_answering_with_their_fix():
    async with serving(Slot("blue", "demo"), Slot("green", "other")) as (blue, green):
        gone = f"127.0.0.1:{free_port()}"
        router = IndexRouter(RoutingConfig(addresses=(blue, green, gone)), "demo")
        router.start()
        try:
            async with asyncio.timeout(5.0):
                while not all(e.slot for e in router.endpoints[:2]):  # both streams answered
                    await asyncio.sleep(0.01)
            mine, other, never = router.report(8, 0)
        finally:
            await router.close()
    assert (mine.address, mine.slot, mine.problem) == (blue, "blue", "")
    assert [(v.version, v.state, v.catalogue_generation) for v in mine.versions] == [(8, State.SERVING, 0)]
    assert (other.address, other.slot, other.versions) == (green, "green", [])
    assert other.problem.startswith("serves model 'other', not this replica's 'demo'"), other.problem
    assert "fix --index-address" in other.problem, other.problem
    assert (never.address, never.slot, never.versions) == (gone, "", [])
    assert never.problem.startswith("unreachable: its status stream has not answered"), never.problem
    assert "--index-address" in never.problem and "--index-tls-" in never.problem, never.problem


async def test_the_report_names_an_endpoint_behind_the_live_towers_catalogue_generation_only():
    router = IndexRouter(RoutingConfig(addresses=("blue:1", "green:1", "red:1", "old:1")))
    blue, green, red, old = router.endpoints
    for endpoint, versions, generations in ((blue, {2: State.SERVING}, {2: 3}), (green, {2: State.SERVING}, {2: 1}),
                                            (red, {2: State.READY}, {2: 5}), (old, {1: State.READY}, {1: 0})):
        endpoint.slot, endpoint.versions, endpoint.generations = endpoint.address[:-2], versions, generations
        endpoint.streaming = True
    red.shard, red.shards = 1, 2
    reports = router.report(2, 3)
    await router.close()
    assert (reports[0].problem, reports[2].problem) == ("", "")  # at or past the tower's generation
    assert reports[3].problem == ""  # the rollback target's slot: nothing the live version needs
    assert reports[1].problem.startswith("holds live version 2 at catalogue generation 1, behind this replica's "
                                         "tower at 3"), reports[1].problem
    assert "recsys-catalogue --catch-up --version 2" in reports[1].problem, reports[1].problem
    assert (reports[2].shard, reports[2].shards, reports[2].versions[0].state) == (1, 2, State.READY)


async def test_get_status_of_a_query_replica_lists_its_endpoints_with_the_live_towers_generation(tmp_path):
    router = IndexRouter(RoutingConfig(addresses=("blue:1", "green:1")))
    blue, green = router.endpoints
    for endpoint, generation in ((blue, 2), (green, 1)):
        endpoint.slot, endpoint.versions = endpoint.address[:-2], {4: State.SERVING}
        endpoint.generations = {4: generation}
        endpoint.streaming = True
    manager: VersionManager = VersionManager("m")
    tower = types.SimpleNamespace(num_candidates=0, manifest=types.SimpleNamespace(embedding_dim=4), report=None,
                                  catalogue_generation=2)
    manager.add(4, tower, make_live=True)
    loader = Loader(Registry(tmp_path, "m"), lambda path, manifest: None, "test", Background.GIL)
    try:
        reply = await AdminServicer(QueryAdmin(manager, loader, router)).GetStatus(admin_pb2.GetStatusRequest(), None)
    finally:
        loader.close()
        await router.close()
    assert [(e.address, e.slot) for e in reply.index_endpoints] == [("blue:1", "blue"), ("green:1", "green")]
    assert [(v.version, v.state, v.catalogue_generation) for v in reply.index_endpoints[1].versions] == [
        (4, SERVING, 1)]
    assert reply.index_endpoints[0].problem == ""
    assert "behind this replica's tower at 2" in reply.index_endpoints[1].problem


def _query(address: str, *endpoints: dict) -> status.ReplicaStatus:
    return status.ReplicaStatus("query", address, admin_pb2.ServiceStatus(
        model_name="m", service="query", live_version=2, index_endpoints=list(endpoints),
        versions=[versions_pb2.VersionStatus(version=2, state=SERVING, catalogue_generation=1)]))


HEALTHY = {"address": "blue:1", "slot": "blue", "versions": [{"version": 2, "state": SERVING}]}


def test_status_adds_a_line_under_a_query_replica_per_endpoint_with_a_problem_and_none_when_all_is_well():
    index = status.ReplicaStatus("index", "blue-admin:1", admin_pb2.ServiceStatus(
        model_name="m", service="index", live_version=2, slot="blue",
        versions=[versions_pb2.VersionStatus(version=2, state=SERVING, num_candidates=10)]))
    well = status.table([index, _query("q1:1", HEALTHY)])
    assert len(well.splitlines()) == 3  # the header and one row each: nothing added when all is well
    assert well == status.table([index, _query("q1:1")])  # the table's own format is unchanged
    unwell = status.table([_query("q1:1", HEALTHY, {"address": "green:1", "slot": "green", "shard": 1, "shards": 2,
                                                     "problem": "holds nothing for this replica: fix it"}),
                           index, _query("q2:1", {"address": "gone:1", "problem": "unreachable: start it"})])
    header, q1, green, blue, q2, gone = unwell.splitlines()
    assert q1.split()[:5] == ["q1:1", "query", "-", "2*", "SERVING"] and blue.startswith("blue-admin:1")
    assert green == ("  ! q1:1 -> index endpoint green:1 (slot green, shard 1 of 2): holds nothing for this "
                     "replica: fix it")
    assert gone == "  ! q2:1 -> index endpoint gone:1: unreachable: start it"
    assert q2.split()[:5] == ["q2:1", "query", "-", "2*", "SERVING"]


def test_status_names_the_worker_whose_router_sees_the_problem():
    own = _query("q:1").status
    workers = [admin_pb2.ServiceStatus(), admin_pb2.ServiceStatus()]
    for worker in workers:
        worker.CopyFrom(own)
    workers[1].index_endpoints.add(address="blue:1", slot="blue", problem="unreachable: start it")
    own.workers.extend(workers)
    lines = status.table([status.ReplicaStatus("query", "q:1", own)]).splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["q:1/w0", "q:1/w1"]
    assert lines[3:] == ["  ! q:1/w1 -> index endpoint blue:1 (slot blue): unreachable: start it"]


async def test_an_empty_slot_beside_one_serving_the_live_version_is_the_rollouts_next_slot_not_a_problem():
    """Blue-green's own layout (green empty until the second rollout) had recsys-client status warn "its slot holds
    nothing: load a version into it": the live version's searches need nothing of it. With no endpoint holding the
    live version, an empty one is still named."""
    router = IndexRouter(RoutingConfig(addresses=("blue:1", "green:1")))
    blue, green = router.endpoints
    for endpoint, versions in ((blue, {2: State.SERVING}), (green, {})):
        endpoint.slot, endpoint.versions, endpoint.generations = endpoint.address[:-2], versions, {}
        endpoint.streaming = True
    assert [r.problem for r in router.report(2, 0)] == ["", ""]
    blue.versions = {}
    assert all(r.problem.startswith("its slot holds nothing: load a version into it") for r in router.report(2, 0))
    await router.close()
    # A sharded live version with a shard no endpoint serves: the empty slots are named (the first cut passed them
    # over once any endpoint held the live version).
    router = IndexRouter(RoutingConfig(addresses=("blue-0:1", "blue-1:1", "green-0:1")))
    for endpoint, versions, shard in zip(router.endpoints, ({2: State.SERVING}, {}, {}), (0, 1, 0)):
        endpoint.slot, endpoint.versions, endpoint.generations = endpoint.address[:-2], versions, {}
        endpoint.streaming, endpoint.shard, endpoint.shards = True, shard, 2
    problems = [r.problem for r in router.report(2, 0)]
    assert problems[0] == "" and all(p.startswith("its slot holds nothing") for p in problems[1:]), problems
    await router.close()
