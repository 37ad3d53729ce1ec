"""A query replica left out of --query-admin, against in-memory admin stubs: recsys-publish picks as idle the slot
whose version only that replica serves; the slot refuses the load while it answers searches (its --busy-window-s),
and the refusal names the likely cause."""

from __future__ import annotations

import signal

import grpc
import pytest

from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.interrupts import Interrupted
from recsys_client.publish import publish_version
from tests.unit.test_publish_guards import IndexStub, RpcFailure, setup


class BusySlot(IndexStub):
    """An index slot answering searches: it refuses loads as index_service.slot does."""

    def LoadVersion(self, request, metadata=None, timeout=None):
        held = next(iter(self.versions))
        raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                         f"slot {self.slot!r} answered a search for version {held} 0.4 s ago: it serves traffic. A "
                         "version loads only into an idle slot (none for 3 s); recsys-publish picks one")


def test_a_busy_slot_whose_version_no_listed_replica_serves_names_a_replica_missing_from_query_admin(tmp_path):
    registry, query, blue, _ = setup(tmp_path)  # query serves 2 (1 its rollback target); blue holds 2
    green = BusySlot({1: SERVING}, "green")  # version 1: what a replica not given in --query-admin still serves
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q1", query)])
    with pytest.raises(PublishError) as refused:
        publish_version(fleet, registry, 3)
    message = str(refused.value)
    assert message.startswith("index replica green: LoadVersion failed: FAILED_PRECONDITION: slot 'green' answered a "
                              "search for version 1 0.4 s ago"), message
    assert message.endswith("; none of the query replicas given (q1) serves version 1, yet slot green answers "
                            "searches for it: a query replica missing from --query-admin? Give every query replica: a "
                            "rollout replacing version 1 would fail its searches"), message
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.pointers() == (2, 1)


def test_a_stop_while_the_query_replicas_are_asked_why_is_the_stop(tmp_path):
    """Naming the cause asks the query replicas what they serve; one that does not answer leaves the refusal as it
    is, but a stop (SIGINT, SIGTERM) arriving then must end the run as a stop, not be taken for that silence."""
    registry, query, blue, _ = setup(tmp_path)

    def stopped(request, metadata=None, timeout=None):
        raise Interrupted(signal.SIGTERM)

    class StoppedWhileAsking(BusySlot):
        def LoadVersion(self, request, metadata=None, timeout=None):
            query.GetStatus = stopped  # the status calls after this refusal meet the stop
            super().LoadVersion(request, metadata, timeout)

    green = StoppedWhileAsking({1: SERVING}, "green")
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q1", query)])
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        publish_version(fleet, registry, 3)
