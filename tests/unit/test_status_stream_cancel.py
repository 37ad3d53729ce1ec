"""An index endpoint's status-stream follower stops when cancelled, even when a status arrives in the same turn of
the event loop as the cancellation. ``asyncio.wait_for`` (Python 3.11) returned that status and swallowed the
cancellation, so the follower read on: a query replica whose start failed (``--version`` of an unpublished version)
waited for ever on its stream in 4 of 9 runs of a helper's walk-through instead of exiting."""

from __future__ import annotations

import asyncio

import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from query_service.index.index_client import IndexEndpoint


class _Stream:
    """A status stream whose reads the test answers: each ``read`` is a future left pending."""

    def __init__(self) -> None:
        self.pending: asyncio.Future | None = None

    def read(self) -> asyncio.Future:
        self.pending = asyncio.get_running_loop().create_future()
        return self.pending

    def cancel(self) -> None:
        pass


class _Stub:
    def __init__(self, stream: _Stream) -> None:
        self.stream = stream

    def WatchStatus(self, request: pb.WatchStatusRequest) -> _Stream:  # noqa: N802 (gRPC's method name)
        return self.stream


async def test_a_status_arriving_as_the_follower_is_cancelled_does_not_keep_it_reading():
    endpoint = IndexEndpoint("127.0.0.1:1")
    stream = _Stream()
    endpoint._stub = _Stub(stream)
    follower = asyncio.get_running_loop().create_task(endpoint.watch(lambda: None))
    try:
        while stream.pending is None:
            await asyncio.sleep(0)
        stream.pending.set_result(pb.IndexStatus(slot="blue", keepalive_s=1.0))
        follower.cancel()  # in the same turn: the read's answer and the cancellation race
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await follower
    finally:
        follower.cancel()
        await endpoint.close()
