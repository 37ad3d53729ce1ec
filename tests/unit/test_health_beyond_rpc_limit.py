"""``--max-concurrent-rpcs`` holds real calls only: health checks (a Kubernetes
probe's Check, a balancing client's long-lived Watch) and reflection are
answered when the server is at its limit and hold no place, while real calls
and real status streams (the query tier's WatchStatus) keep it. In-process
gRPC servers, no model."""

from __future__ import annotations

import asyncio
import time
import contextlib
from typing import AsyncIterator, Callable

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import retrieval_pb2, retrieval_pb2_grpc
from serving.rpc.grpc_server import RunningServer, ServiceSpec, map_errors, start_server
from serving.telemetry import core_calls, observability
from serving.telemetry.observability import REQUEST_ID_KEY

ADMIN = "recsys.v1.AdminService"
INDEX = "recsys.v1.IndexService"
SERVING = health_pb2.HealthCheckResponse.SERVING


def unended_in_core() -> float:
    """Calls this process's gRPC servers started that neither succeeded nor failed, as exported to /metrics."""
    totals = {family.name: sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
              for family in prometheus_client.REGISTRY.collect() if family.name.startswith("recsys_grpc_server_calls")}
    return core_calls.unended(lambda name: totals[f"recsys_grpc_server_calls_{name}"])


def refused_count(method: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "recsys_rpc_latency_seconds_count", {"service": ADMIN, "method": method, "code": "RESOURCE_EXHAUSTED"}) or 0.0


async def settled(read: Callable[[], float], expected: float) -> float:
    """``read()`` once it gives ``expected``, or after a second: the server counts a call once it has sent its
    status, so the caller can hear the status first."""
    for _ in range(50):
        if read() == expected:
            break
        await asyncio.sleep(0.02)
    return read()


class Slow(pb_grpc.AdminServiceServicer):
    """GetStatus answers once ``release`` is set (``entered`` says a call is waiting)."""

    def __init__(self):
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @map_errors
    async def GetStatus(self, request, context):
        self.entered.set()
        await self.release.wait()
        return pb.ServiceStatus(model_name="slow")


class Watched(retrieval_pb2_grpc.IndexServiceServicer):
    """WatchStatus sends one status and keeps the stream open, as an index endpoint does."""

    async def WatchStatus(self, request, context):
        yield retrieval_pb2.IndexStatus(model_name="m")
        await asyncio.Event().wait()


async def start_limited(max_concurrent_rpcs: int, admin: pb_grpc.AdminServiceServicer) -> RunningServer:
    """A serving server of ``admin`` and ``Watched`` that runs ``max_concurrent_rpcs`` calls at once."""
    server = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, admin, ADMIN),
                                 ServiceSpec(retrieval_pb2_grpc.add_IndexServiceServicer_to_server, Watched(), INDEX)],
                                "127.0.0.1", 0, max_concurrent_rpcs=max_concurrent_rpcs)
    await server.set_serving(True)
    return server


@contextlib.asynccontextmanager
async def channel_to(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to ``server``, which is stopped after."""
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_health_and_reflection_are_answered_at_the_limit_and_hold_no_place():
    servicer = Slow()
    server = await start_limited(1, servicer)
    before = refused_count("GetStatus")
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    async with channel_to(server) as channel:
        admin, health = pb_grpc.AdminServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        slow = asyncio.ensure_future(admin.GetStatus(pb.GetStatusRequest(), timeout=10))
        await asyncio.wait_for(servicer.entered.wait(), 5)  # the only place is taken
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
        for watch in watches:
            assert (await watch.read()).status == SERVING
        listed = [r async for r in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([list_services]), timeout=5)]
        assert ADMIN in {s.name for s in listed[0].list_services_response.service}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.GetStatus(pb.GetStatusRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-rpcs" in refused.value.details()
        assert await settled(lambda: refused_count("GetStatus") - before, 1) == 1
        servicer.release.set()
        assert (await slow).model_name == "slow"
        # The three health watches are still open and hold no place: the next real call is answered.
        assert (await admin.GetStatus(pb.GetStatusRequest(), timeout=5)).model_name == "slow"
        for watch in watches:
            watch.cancel()


async def test_real_status_streams_hold_places_and_calls_beyond_are_refused_and_counted():
    servicer = Slow()
    servicer.release.set()
    server = await start_limited(2, servicer)
    before = refused_count("GetStatus")
    async with channel_to(server) as channel:
        admin, index = pb_grpc.AdminServiceStub(channel), retrieval_pb2_grpc.IndexServiceStub(channel)
        # Two status streams hold both places, as a query tier's watchers of an index do.
        watchers = [index.WatchStatus(retrieval_pb2.WatchStatusRequest()) for _ in range(2)]
        for watcher in watchers:
            await watcher.read()
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.GetStatus(pb.GetStatusRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await settled(lambda: refused_count("GetStatus") - before, 20) == 20
        assert "--max-concurrent-rpcs" in refused.value.details()
        assert dict(refused.value.trailing_metadata()).get(REQUEST_ID_KEY)
        third = index.WatchStatus(retrieval_pb2.WatchStatusRequest())
        with pytest.raises(grpc.aio.AioRpcError) as stream_refused:
            await third.read()
        assert stream_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                 timeout=5)).status == SERVING
        watchers[0].cancel()
        await asyncio.sleep(0.2)  # the server sees the cancellation
        assert (await admin.GetStatus(pb.GetStatusRequest(), timeout=5)).model_name == "slow"
        watchers[1].cancel()


def unreceived_count(method: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "recsys_rpc_unreceived_requests_total", {"service": ADMIN, "method": method}) or 0.0


async def test_calls_whose_requests_never_arrive_hold_no_place_and_the_oldest_make_way():
    """A slow-loris caller opens unary calls and never sends their requests: with the places taken from the
    headers on, 1,000 such calls over 11 connections refused every real call."""
    servicer = Slow()
    servicer.release.set()
    server = await start_limited(3, servicer)
    before = unreceived_count("GetStatus")
    never = asyncio.Event()

    async def never_sends():
        await never.wait()
        yield b""

    async with channel_to(server) as channel, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as attacker:
        held = [attacker.stream_stream(f"/{ADMIN}/GetStatus", request_serializer=bytes,
                                       response_deserializer=bytes)(never_sends()) for _ in range(10)]
        await asyncio.sleep(0.5)  # their headers are in: each waits on its request
        admin = pb_grpc.AdminServiceStub(channel)
        for _ in range(5):
            assert (await admin.GetStatus(pb.GetStatusRequest(), timeout=5)).model_name == "slow"
        # At most three (the limit) wait at once, each newer call making the oldest waiting one make way: seven
        # of the ten, then one more for the first real call (its headers come before its request).
        assert await settled(lambda: unreceived_count("GetStatus") - before, 8) == 8
        for call in held:
            call.cancel()


async def test_the_public_admin_port_runs_a_bounded_number_of_calls():
    """It had no limit: 20,000 calls held open on it, without a token, grew a replica by 272 MB."""
    from serving.config import AdminConfig
    from serving.rpc.admin_rpc import ADMIN_MAX_CONCURRENT_RPCS, start_admin_server

    servicer = Slow()
    server = await start_admin_server(servicer, AdminConfig())
    async with channel_to(server) as channel:
        admin = pb_grpc.AdminServiceStub(channel)
        held = [asyncio.ensure_future(admin.GetStatus(pb.GetStatusRequest(), timeout=10))
                for _ in range(ADMIN_MAX_CONCURRENT_RPCS)]
        await asyncio.wait_for(servicer.entered.wait(), 5)
        await asyncio.sleep(0.2)  # every one of them is in
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.GetStatus(pb.GetStatusRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        servicer.release.set()
        assert {r.model_name for r in await asyncio.gather(*held)} == {"slow"}


async def test_health_watches_have_a_limit_of_their_own(monkeypatch):
    """They take no real call's place, but unbounded, 20,000 of them grew a replica by 287 MB."""
    monkeypatch.setattr(observability, "MAX_PROBE_STREAMS", 2)
    servicer = Slow()
    servicer.release.set()
    server = await start_limited(2, servicer)
    async with channel_to(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for watch in watches:
            assert (await watch.read()).status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Watch(health_pb2.HealthCheckRequest()).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "health watches" in \
            refused.value.details()
        # Checks and real calls are still answered, and a watch ended makes way for another.
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
        assert (await pb_grpc.AdminServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)).model_name
        watches[0].cancel()
        await asyncio.sleep(0.2)  # the server sees the cancellation
        assert (await health.Watch(health_pb2.HealthCheckRequest()).read()).status == SERVING


class Counting(pb_grpc.AdminServiceServicer):
    """GetStatus holds each call 0.2 s, counting the most in progress at once."""

    def __init__(self):
        self.now = self.most = 0

    async def GetStatus(self, request, context):
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.2)
        self.now -= 1
        return pb.ServiceStatus(model_name="counted")


@pytest.mark.parametrize("limit", [0, 3])
async def test_one_connection_has_at_most_its_stream_limit_of_calls_in_the_server(limit):
    # Beyond it, gRPC's C core refuses a call before any Python runs; without it an overload queued hundreds of
    # calls in the event loop, each late by the time its handler ran.
    counting = Counting()
    server = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, counting, ADMIN)],
                                "127.0.0.1", 0, max_streams_per_connection=limit)
    async with channel_to(server) as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        await stub.GetStatus(pb.GetStatusRequest(), timeout=5)  # the connection's settings are known both ways
        outcomes = await asyncio.gather(*(stub.GetStatus(pb.GetStatusRequest(), timeout=5) for _ in range(12)),
                                        return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert all(o.code() == grpc.StatusCode.UNAVAILABLE for o in refused), refused
    assert counting.most == (limit or 12)
    assert len(outcomes) - len(refused) >= (limit or 12)


class LoopHolding(pb_grpc.AdminServiceServicer):
    """GetStatus holds the event loop 50 ms, as an overloaded replica's is held: no call is taken meanwhile."""

    async def GetStatus(self, request, context):
        time.sleep(0.05)
        return pb.ServiceStatus(model_name="held")


@pytest.mark.parametrize("limit, burst, least_refused", [(0, 20, 0), (4, 20, 8), (32, 30, 0)])
async def test_calls_past_the_pending_limit_are_refused_outside_python_and_health_checks_queue_apart(
        limit, burst, least_refused):
    # Calls this process has not taken wait in a first-in, first-out queue of gRPC's C core: over many connections
    # an overload kept it until every call reached its handler late (a median of 0 ms left of 200 ms). A burst
    # within the limit is not refused: with refusals at random from half of it, one of 40 calls in flight failed.
    server = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, LoopHolding(), ADMIN)],
                                "127.0.0.1", 0, max_pending_calls=limit)
    async with channel_to(server) as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        await stub.GetStatus(pb.GetStatusRequest(), timeout=5)  # connected
        unended = await settled(unended_in_core, 0.0)  # the connecting call's success counted
        calls = [asyncio.ensure_future(stub.GetStatus(pb.GetStatusRequest(), timeout=30)) for _ in range(burst)]
        await asyncio.sleep(0.02)  # the calls have arrived: a probe's check queues behind them, in its own queue
        checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        # The refusals reach no handler, but the core's counters exported to /metrics show them (started, and
        # neither succeeded nor failed).
        shown = await settled(lambda: unended_in_core() - unended, len(refused))
    assert all(o.code() == grpc.StatusCode.CANCELLED for o in refused), refused
    assert checked.status in (SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert len(refused) >= least_refused if least_refused else not refused, outcomes
    assert shown == len(refused)
