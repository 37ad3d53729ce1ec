"""What a server's limits refuse is seen in its metrics: calls beyond
``--max-concurrent-rpcs`` (status streams holding places) are answered
RESOURCE_EXHAUSTED with a message naming the flag and counted in
``recsys_rpc_latency_seconds``, on in-process gRPC servers (no model)."""

from __future__ import annotations

import asyncio

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from serving.grpc_server import ServiceSpec, start_server
from serving.observability import REQUEST_ID_KEY
from tests.unit.test_observability import ADMIN, Echo

HEALTH = "grpc.health.v1.Health"


def refused_count(method: str, service: str = HEALTH) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "recsys_rpc_latency_seconds_count",
        {"service": service, "method": method, "code": "RESOURCE_EXHAUSTED"}) or 0.0


async def start_limited(max_concurrent_rpcs: int):
    return await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, Echo(), ADMIN)],
                              "127.0.0.1", 0, max_concurrent_rpcs=max_concurrent_rpcs)


async def test_calls_beyond_the_concurrency_limit_are_refused_and_counted():
    server = await start_limited(2)
    await server.set_serving(True)
    before = refused_count("Check")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # Two status streams hold both places, as a query tier's watchers do.
            watchers = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
            for watcher in watchers:
                await watcher.read()
            for _ in range(20):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused_count("Check") - before == 20
            assert "--max-concurrent-rpcs" in refused.value.details()
            assert dict(refused.value.trailing_metadata()).get(REQUEST_ID_KEY)
            third = health.Watch(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError) as stream_refused:
                await third.read()
            assert stream_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watchers[0].cancel()
            await asyncio.sleep(0.2)  # the server sees the cancellation
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watchers[1].cancel()
    finally:
        await server.stop(0)
