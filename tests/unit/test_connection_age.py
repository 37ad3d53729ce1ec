"""A data plane started with a max connection age closes each connection after about that long, and its client's
calls go on over a new one without an error: behind a connection-level balancer (a Kubernetes Service, the
--workers' shared port) a long-lived client thus reaches replicas added after it connected. In-process gRPC server,
no model."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from query_service.server import QueryServiceConfig, build_parser
from serving.rpc.grpc_server import ServiceSpec, start_server
from settings.flags import parse
from tests.unit.test_observability import ADMIN, Echo


async def calls_over(max_connection_age_s: float, connections_wanted: int,
                     timeout_s: float) -> tuple[int, int, int]:
    """(calls answered, calls failed, connections made) of one channel calling every 20 ms until it has made
    ``connections_wanted`` connections or ``timeout_s`` passed (a loaded machine makes fewer calls, not fewer
    connections)."""
    server = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, Echo(), ADMIN)],
                                "127.0.0.1", 0, max_connection_age_s=max_connection_age_s)
    answered = failed = 0
    states: list[grpc.ChannelConnectivity] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AdminServiceStub(channel)

            async def watch() -> None:
                state = channel.get_state()
                while True:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state()
                    states.append(state)

            watcher = asyncio.create_task(watch())
            deadline = asyncio.get_running_loop().time() + timeout_s
            while (asyncio.get_running_loop().time() < deadline
                   and states.count(grpc.ChannelConnectivity.READY) < connections_wanted):
                try:
                    await stub.GetStatus(pb.GetStatusRequest(), timeout=5)
                    answered += 1
                except grpc.aio.AioRpcError:
                    failed += 1
                await asyncio.sleep(0.02)
            watcher.cancel()
    finally:
        await server.stop(0)
    return answered, failed, states.count(grpc.ChannelConnectivity.READY)


async def test_a_connection_is_closed_for_its_age_and_the_client_goes_on_over_a_new_one():
    answered, failed, connections = await calls_over(0.5, connections_wanted=3, timeout_s=30.0)
    assert connections >= 3 and failed == 0 and answered >= 3, (answered, failed, connections)


async def test_without_an_age_one_connection_carries_every_call():
    answered, failed, connections = await calls_over(0.0, connections_wanted=2, timeout_s=1.5)
    assert failed == 0 and answered > 0 and connections == 1, (answered, failed, connections)


def test_the_query_services_flag_takes_an_age_and_refuses_a_negative_or_sub_second_one(capsys):
    base = ["--registry", "r", "--model", "m", "--index-address", "127.0.0.1:1"]
    assert parse(build_parser(), QueryServiceConfig, [*base, "--max-connection-age-s", "60"]).max_connection_age_s == 60
    for refused in ("-1", "0.0001"):  # the second would be 0 ms to gRPC
        with pytest.raises(SystemExit):
            parse(build_parser(), QueryServiceConfig, [*base, "--max-connection-age-s", refused])
        assert "max-connection-age-s" in capsys.readouterr().err
