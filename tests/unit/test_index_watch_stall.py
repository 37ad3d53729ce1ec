"""A query replica follows each index endpoint's status stream and routes around one silent for three keepalives.
Its own event loop stalled past that (a large request parsed on it) must not read as the endpoint's silence: the
keepalives came meanwhile and wait to be read (the attack review's four 14 MB BatchRecommends dropped a healthy
index and answered UNAVAILABLE). A real gRPC status stream from a server on its own threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from query_service.index.index_client import IndexEndpoint

# Both bound what the replica's event loop does within a tenth of a second: nothing else runs beside them.
pytestmark = pytest.mark.alone
KEEPALIVE_S = 0.1


class Keepalives(pb_grpc.IndexServiceServicer):
    """A status stream holding version 1, a keepalive every ``KEEPALIVE_S`` until ``hung`` is set (then none), until
    the call ends."""

    def __init__(self):
        self.hung = threading.Event()

    def WatchStatus(self, request, context):
        status = pb.IndexStatus(model_name="m", slot="blue", keepalive_s=KEEPALIVE_S, versions=[
            versions_pb2.VersionStatus(version=1, state=versions_pb2.VERSION_STATE_SERVING)])
        while context.is_active():
            if not self.hung.is_set():
                yield status
            time.sleep(KEEPALIVE_S)


async def following(servicer: Keepalives) -> tuple[grpc.Server, IndexEndpoint, asyncio.Future, list[bool]]:
    """A server of ``servicer`` on its own threads, and an endpoint following its stream (holding version 1)."""
    server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_IndexServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    endpoint = IndexEndpoint(f"127.0.0.1:{port}", model="m")
    changes: list[bool] = []
    watch = asyncio.ensure_future(endpoint.watch(lambda: changes.append(endpoint.holds(1))))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if endpoint.holds(1):
            break
    assert endpoint.holds(1)
    return server, endpoint, watch, changes


async def test_a_stall_of_the_replicas_own_event_loop_is_not_the_endpoints_silence():
    server, endpoint, watch, changes = await following(Keepalives())
    try:
        for _ in range(3):
            time.sleep(10 * KEEPALIVE_S)  # the event loop blocked past three keepalives (1.0 s against 0.3 s)
            await asyncio.sleep(2 * KEEPALIVE_S)
        assert endpoint.holds(1) and all(changes), changes
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        server.stop(None)


async def test_an_endpoint_silent_for_three_keepalives_is_routed_around():
    servicer = Keepalives()
    server, endpoint, watch, changes = await following(servicer)
    try:
        servicer.hung.set()
        start = time.monotonic()
        while endpoint.holds(1):
            await asyncio.sleep(0.01)
        assert time.monotonic() - start < 3 * KEEPALIVE_S + 2.0 and changes[-1] is False
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        server.stop(None)


class SlowRead:
    """A status stream's call whose next message comes ``after_s`` after the read begins (None: never)."""

    def __init__(self, after_s: float | None):
        self.after_s = after_s
        self.cancelled = False

    async def read(self):
        try:
            await asyncio.sleep(self.after_s if self.after_s is not None else 3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "status"


def test_a_message_within_the_grace_after_the_silence_is_read_and_none_is_a_timeout():
    """The grace is the message that arrived while this replica's loop was stalled past ``silence_s``: its timer
    fires late, the message is there to be read. Past the grace the endpoint is silent, and the read is cancelled."""
    from query_service.index.index_client import STALL_GRACE_S, _read_within

    async def run():
        late = SlowRead(0.05 + STALL_GRACE_S / 2)
        assert await _read_within(late, 0.05) == "status"
        silent = SlowRead(None)
        with pytest.raises(asyncio.TimeoutError):
            await _read_within(silent, 0.05)
        await asyncio.sleep(0)  # the cancellation is delivered
        assert silent.cancelled

    asyncio.run(run())
