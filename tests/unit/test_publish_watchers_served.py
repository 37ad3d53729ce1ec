"""An index slot counts the status streams it serves and reports them in its admin status (``status_watchers``),
what recsys-publish compares with the query replicas it is given: a real slot (``create_server``, empty) in process,
on loopback ports, its streams opened and ended by real gRPC clients."""

from __future__ import annotations

import asyncio

import grpc

from index_service.server import IndexServiceConfig, create_server
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from serving.config import AdminConfig


async def test_a_slot_counts_status_streams_as_they_open_and_end(tmp_path):
    config = IndexServiceConfig(registry=str(tmp_path), model="m", slot="blue", port=0, admin=AdminConfig(port=0))
    service, _ = await create_server(config)
    admin_channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.admin.port}")
    watchers = [grpc.aio.insecure_channel(f"127.0.0.1:{service.data.port}") for _ in range(2)]
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)

    async def counted() -> int:
        return (await admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)).status_watchers

    async def until(expected: int) -> None:
        for _ in range(100):
            if await counted() == expected:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the slot reports {await counted()} status watchers, not {expected}")

    try:
        assert await counted() == 0
        # As query_service.index.index_client watches an endpoint: one stream per watching process.
        streams = [retrieval_pb2_grpc.IndexServiceStub(c).WatchStatus(retrieval_pb2.WatchStatusRequest())
                   for c in watchers]
        for stream in streams:
            assert (await stream.read()).slot == "blue"
        assert await counted() == 2
        streams[0].cancel()  # a watcher ending its stream (its reconnect, or its routing stopped)
        await until(1)
        await watchers[1].close()  # a watcher gone with its connection (its process stopped)
        await until(0)
    finally:
        for channel in (admin_channel, *watchers):
            await channel.close()
        await service.stop(0)
