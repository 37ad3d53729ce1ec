"""An index slot stopped with SIGTERM while a query replica routes to it, with
real processes: the slot tells its watchers it is going when its drain begins,
so misses fail at once with the documented error (no other slot holds the
version), never with a connection error naming the slot's address, and the
slot stops without waiting out its grace period for their status streams."""

from __future__ import annotations

import dataclasses
import signal
import time

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.integration.conftest import index_slot, query_replica
from tests.processes import start_all

pytestmark = pytest.mark.integration

DRAIN_S = 1.5
GRACE_S = 5.0  # the index's shutdown grace (serve_until_signalled's default)


@dataclasses.dataclass
class Shutdown:
    """What callers of the query replica saw while blue drained and stopped."""

    address: str  # blue's
    answered: list[float]  # seconds after the SIGTERM
    failures: list[tuple[float, grpc.StatusCode, str]]  # (seconds after the SIGTERM, code, details)
    exited_after_s: float
    exit_code: int
    log: str  # blue's


@pytest.fixture(scope="module")
def blue_shutdown(trained_registry, tmp_path_factory) -> Shutdown:
    """Blue holds version 1 and is the only holder; green is an empty slot. Blue gets a SIGTERM while a
    query replica routes to it, and Recommend misses (a new customer each) go on until a second after
    blue has exited, or until it should have. The replica is stopped then, so a blue still stopping sees
    its watcher go away (what once logged an unhandled CancelledError)."""
    logs = tmp_path_factory.mktemp("drain")
    blue = index_slot(trained_registry, "blue", logs / "blue.log", "--shutdown-drain-s", str(DRAIN_S))
    green = index_slot(trained_registry, "green", logs / "green.log")
    query = query_replica(trained_registry, [blue, green], logs / "query.log")
    start_all(blue, green, query)
    customers = (f"c{i:06d}" for i in range(300))
    answered: list[float] = []
    failures: list[tuple[float, grpc.StatusCode, str]] = []
    exited_at = None

    def poll() -> None:
        nonlocal exited_at
        if exited_at is None and blue.proc.poll() is not None:
            exited_at = time.monotonic()

    try:
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            assert len(stub.Recommend(pb.RecommendRequest(customer_id=next(customers), k=10), timeout=10)
                       .candidates) == 10
            signalled = time.monotonic()
            blue.proc.send_signal(signal.SIGTERM)
            deadline = signalled + DRAIN_S + GRACE_S / 2  # blue has exited by then unless it waits for watchers
            while time.monotonic() < min(deadline, (exited_at or deadline) + 1.0):
                poll()
                try:
                    stub.Recommend(pb.RecommendRequest(customer_id=next(customers), k=10), timeout=10)
                    answered.append(time.monotonic() - signalled)
                except grpc.RpcError as e:
                    failures.append((time.monotonic() - signalled, e.code(), e.details()))
                time.sleep(0.05)
        query.stop()
        while exited_at is None:
            assert time.monotonic() - signalled < 30, "blue did not exit"
            poll()
            time.sleep(0.05)
        return Shutdown(blue.address, answered, failures, exited_at - signalled, blue.proc.returncode,
                        blue.log_path.read_text(errors="replace"))
    finally:
        for process in (query, green, blue):
            process.stop()


def test_a_draining_slot_is_routed_around_before_it_closes(blue_shutdown):
    # Misses fail at once with the documented error as soon as the drain begins; none reaches a slot that
    # no longer takes connections.
    assert blue_shutdown.exit_code == 0
    assert blue_shutdown.failures, "no miss failed, though blue was the only holder of version 1"
    assert blue_shutdown.failures[0][0] < DRAIN_S, "misses were still routed to blue when its drain ended"
    for at, code, details in blue_shutdown.failures:
        assert code == grpc.StatusCode.UNAVAILABLE and "no index endpoint holds version 1" in details, \
            f"{at:.1f}s after the SIGTERM: {code.name}: {details}"


def test_index_addresses_do_not_reach_callers_during_a_shutdown(blue_shutdown):
    host = blue_shutdown.address.rsplit(":", 1)[0]
    for _, code, details in blue_shutdown.failures:
        assert host not in details, f"{code.name}: {details}"


def test_a_slot_stops_without_waiting_for_watch_streams_and_logs_no_cancelled_stream(blue_shutdown):
    assert blue_shutdown.exited_after_s < DRAIN_S + GRACE_S / 2, \
        f"blue exited {blue_shutdown.exited_after_s:.1f}s after the SIGTERM"
    assert "_handle_exceptions" not in blue_shutdown.log and "CancelledError" not in blue_shutdown.log, \
        blue_shutdown.log[-2000:]
