"""What the query service logs when an index slot stops holding a version and then holds it again: the
failures for want of a holder are one line a while (serving.telemetry.log_throttle.LogThrottle), and the end of the
outage says so, with the count of failures no line reported. The slot is a real gRPC server whose status
stream ends as a draining slot's does."""

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
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexQuery
from serving import errors
from serving.lifecycle.versions import State
from serving.telemetry.log_throttle import LogThrottle

SERVING = pb.IndexStatus(slot="blue", keepalive_s=60.0, versions=[
    versions_pb2.VersionStatus(version=1, state=versions_pb2.VERSION_STATE_SERVING)])


class Slot(pb_grpc.IndexServiceServicer):
    """Status streams that send what is queued; None ends the stream (a drain beginning)."""

    def __init__(self) -> None:
        self.statuses: asyncio.Queue = asyncio.Queue()

    async def WatchStatus(self, request, context):
        while (status := await self.statuses.get()) is not None:
            yield status


@contextlib.asynccontextmanager
async def watched_slot() -> AsyncIterator[tuple[Slot, IndexRouter, str]]:
    """A ``Slot`` on a real gRPC server and a started router watching it: (slot, router, its address)."""
    slot = Slot()
    server = grpc.aio.server()
    pb_grpc.add_IndexServiceServicer_to_server(slot, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    router = IndexRouter(RoutingConfig(addresses=(address,)))
    router.start()
    try:
        yield slot, router, address
    finally:
        await router.close()
        await server.stop(None)


async def until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def test_a_throttled_key_that_ends_gives_back_what_it_held_and_logs_at_once_next_time():
    throttle = LogThrottle()
    assert throttle.end("v") is None  # never logged: nothing to close
    assert throttle.due("v", 60) == 0
    assert [throttle.due("v", 60) for _ in range(3)] == [None] * 3
    assert throttle.end("v") == 3 and throttle.end("v") is None
    assert throttle.due("v", 60) == 0  # a new occurrence: its line at once


async def test_a_version_routable_again_says_so_with_the_failures_no_line_reported(caplog):
    caplog.set_level(logging.INFO, logger="query_service")
    query = [IndexQuery(np.zeros(2, np.float32), 1, frozenset())]

    def lines(start: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]

    async with watched_slot() as (slot, router, address):
        async def outage(failures: int) -> None:
            slot.statuses.put_nowait(None)  # the slot drains: its stream ends
            await until(lambda: not router.routable(1))
            for _ in range(failures):
                with pytest.raises(errors.Unavailable, match="no index endpoint holds version 1"):
                    await router.search(query, 1)
            slot.statuses.put_nowait(SERVING)  # the watcher's next stream: the slot (or its successor) holds it
            await until(lambda: router.routable(1))

        slot.statuses.put_nowait(SERVING)
        await until(lambda: router.routable(1))
        await outage(50)
        assert len(lines("no index endpoint holds version 1")) == 1
        again = lines("index endpoints hold version 1 again")
        assert len(again) == 1 and address in again[0], again
        assert "49 more failures for want of a holder of version 1 since the last such line" in again[0], again
        await outage(1)  # a new outage within NO_HOLDER_LOG_S of the last line: its own line at once
        assert len(lines("no index endpoint holds version 1")) == 2
        assert len(lines("index endpoints hold version 1 again")) == 2
        assert "more failures" not in lines("index endpoints hold version 1 again")[1]


async def test_what_endpoints_hold_is_told_in_state_names():
    """Promote's refusal quotes ``describe``: it read {6: 'state 3, catalogue generation 0'}."""
    router = IndexRouter(RoutingConfig(addresses=("a:1",)))
    router.endpoints[0].versions, router.endpoints[0].generations = {6: State.READY}, {6: 2}
    assert router.describe() == {"a:1": {6: "READY, catalogue generation 2"}}
    await router.close()


async def test_a_version_in_a_state_this_replica_does_not_know_is_not_routed_and_the_watch_goes_on(caplog):
    """A slot of a later release may report a state this code has no name for (or none: UNSPECIFIED). Reading one
    raised, ending the endpoint's watch with its last versions routed for ever."""
    caplog.set_level(logging.WARNING, logger="query_service")
    unknown = pb.IndexStatus(slot="blue", keepalive_s=60.0, versions=[
        versions_pb2.VersionStatus(version=1, state=versions_pb2.VERSION_STATE_SERVING),
        versions_pb2.VersionStatus(version=2, state=versions_pb2.VERSION_STATE_UNSPECIFIED),
        versions_pb2.VersionStatus(version=3, state=42)])
    async with watched_slot() as (slot, router, address):
        endpoint = router.endpoints[0]
        for _ in range(3):  # one line per unknown state a while, not one per status
            slot.statuses.put_nowait(unknown)
        await until(lambda: endpoint.versions)
        assert endpoint.versions == {1: State.SERVING} and router.routable(1) and not router.routable(3)
        slot.statuses.put_nowait(pb.IndexStatus(slot="blue", keepalive_s=60.0, versions=[
            versions_pb2.VersionStatus(version=3, state=versions_pb2.VERSION_STATE_SERVING)]))
        await until(lambda: router.routable(3))  # the watch went on: the next status was read
        assert not router.routable(1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert all(address in line and "does not know" in line for line in warnings), warnings
    assert "version 2 in state UNSPECIFIED" in warnings[0] and "version 3 in state UNKNOWN_42" in warnings[1], warnings
