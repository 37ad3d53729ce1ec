"""What the query service logs when an index slot ends its status stream, as a draining slot does: a line
saying so and that searches go around it, and the endpoint then "holds nothing" (not ``{}``). The slot is a
real gRPC server (tests/unit/test_routing_logs.py's)."""

from __future__ import annotations

import logging

from tests.unit.test_routing_logs import SERVING, until, watched_slot


async def test_a_slot_that_ends_its_status_stream_is_logged_as_draining_and_then_holding_nothing(caplog):
    caplog.set_level(logging.INFO, logger="query_service")
    async with watched_slot() as (slot, router, address):
        slot.statuses.put_nowait(SERVING)
        await until(lambda: router.routable(1))
        slot.statuses.put_nowait(None)  # the slot drains: its stream ends
        await until(lambda: not router.routable(1))
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"index endpoint {address}")]
        assert lines[0] == f"index endpoint {address} (slot blue) holds {{1: 'SERVING (catalogue generation 0)'}}"
        assert lines[1:] == [
            f"index endpoint {address} (slot blue) ended its status stream (draining or stopping): "
            "routing searches around it",
            f"index endpoint {address} (slot blue) holds nothing"], lines
