"""An index slot going away, in-process: its status streams end when its drain
begins, and the failure of an index call tells the caller nothing of where the
index is (tests/integration/test_index_drain.py runs the processes)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc

from index_service.core import IndexCore
from query_service.index.index_client import error_for
from serving.lifecycle.versions import VersionManager


async def test_status_streams_end_when_the_slot_drains_and_new_ones_end_at_once():
    core = IndexCore(VersionManager("m"), ThreadPoolExecutor(1), keepalive_s=60.0)
    core.bind(asyncio.get_running_loop())
    stream = core.changes()
    await anext(stream)  # the status now
    waiting = asyncio.ensure_future(anext(stream, "ended"))
    await asyncio.sleep(0.05)
    core.drain()
    assert await asyncio.wait_for(waiting, 1.0) == "ended"  # not after the keepalive
    assert await asyncio.wait_for(anext(core.changes(), "ended"), 1.0) == "ended"


def test_a_failed_connection_to_an_index_names_no_address_to_the_caller():
    for details in ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.5:50051: "
                    "Failed to connect to remote host: Connection refused",
                    "failed to connect to all addresses; last error: UNAVAILABLE: ipv6:%5B::1%5D:50051: "
                    "Socket closed",
                    "DNS resolution failed for index-blue:50051: C-ares status is not ARES_SUCCESS"):
        error = error_for(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                               grpc.aio.Metadata(), details), "index-blue:50051")
        message = str(error)
        assert "10.0.0.5" not in message and "::1" not in message and "index-blue" not in message, message
        assert message.startswith("index search failed: UNAVAILABLE: ") and "<index endpoint>" in message, message
