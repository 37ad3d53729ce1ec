"""A request over ``--max-message-bytes`` is refused by gRPC before any handler
runs, so no latency is recorded for it; it is counted in
``recsys_rpc_unreceived_requests_total`` by service and method, and frees its
place under ``--max-concurrent-rpcs``. In-process gRPC server, no model."""

from __future__ import annotations

import grpc
import prometheus_client
import pytest

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from serving.rpc.grpc_server import ServiceSpec, start_server
from tests.unit.test_health_beyond_rpc_limit import settled
from tests.unit.test_observability import ADMIN, Echo, latency_count

LIMIT = 1024


def unreceived(method: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "recsys_rpc_unreceived_requests_total", {"service": ADMIN, "method": method}) or 0.0


async def test_a_request_over_the_message_limit_is_counted_and_frees_its_place():
    server = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, Echo(), ADMIN)],
                                "127.0.0.1", 0, max_message_bytes=LIMIT, max_concurrent_rpcs=1)
    before = unreceived("GetStatus"), latency_count("GetStatus", "OK")
    # GetStatusRequest has no fields: these bytes parse as one unknown string field, over the limit.
    oversized = pb.ServiceStatus(model_name="x" * (2 * LIMIT)).SerializeToString()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            raw = channel.unary_unary(f"/{ADMIN}/GetStatus")
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await raw(oversized, timeout=5)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The refused calls hold no place: with a limit of one, the next call is answered.
            assert (await pb_grpc.AdminServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)).model_name
            assert await settled(lambda: unreceived("GetStatus") - before[0], 3) == 3
    finally:
        await server.stop(0)
    assert latency_count("GetStatus", "OK") - before[1] == 1  # the answered call only: the refused have no latency


def test_the_counter_says_what_it_counts():
    family = next(f for f in prometheus_client.REGISTRY.collect() if f.name == "recsys_rpc_unreceived_requests")
    assert "--max-message-bytes" in family.documentation and "RESOURCE_EXHAUSTED" in family.documentation
