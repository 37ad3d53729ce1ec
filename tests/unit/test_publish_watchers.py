"""A query replica left out of --query-admin, found by its status stream, against in-memory admin stubs: every query
replica process watches every index endpoint it is given, each index process counts the streams it serves
(``status_watchers``), and recsys-publish refuses, before any change, to replace a slot one of whose replicas has
more watchers than the query replica processes given, however quiet the replica left out is (the slot's own busy
refusal needs a search within its --busy-window-s)."""

from __future__ import annotations

import pytest

from protos.recsys.v1 import admin_pb2 as pb
from recsys_client import status as client_status
from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version
from tests.unit.test_publish import QueryStub
from tests.unit.test_publish_guards import IndexStub, cli, setup


class Watched(IndexStub):
    """An index slot replica serving ``watchers`` status streams: an int for one process, a list for the workers of
    one run with --workers (each counts its own)."""

    def __init__(self, versions: dict[int, int], slot: str, watchers: int | list[int]):
        super().__init__(versions, slot)
        self.watchers = watchers

    def GetStatus(self, request, metadata=None, timeout=None):
        status = super().GetStatus(request)
        if isinstance(self.watchers, list):
            status.workers.extend(_with_watchers(status, n) for n in self.watchers)
            status.status_watchers = self.watchers[0]  # the top-level fields are worker 0's
        else:
            status.status_watchers = self.watchers
        return status


def _with_watchers(status: pb.ServiceStatus, watchers: int) -> pb.ServiceStatus:
    worker = pb.ServiceStatus()
    worker.CopyFrom(status)
    worker.status_watchers = watchers
    return worker


class QueryPool(QueryStub):
    """A query replica run with --workers ``workers``: its status lists each worker's."""

    def __init__(self, versions: dict[int, int], workers: int):
        super().__init__(versions)
        self.pool_size = workers

    def GetStatus(self, request, metadata=None, timeout=None):
        status = super().GetStatus(request)
        status.workers.extend([_with_watchers(status, 0)] * self.pool_size)
        return status


def test_a_slot_watched_by_a_query_replica_not_given_is_refused_before_any_change(tmp_path):
    registry, query, blue, _ = setup(tmp_path)  # query serves 2 (1 its rollback target); blue holds 2
    # Green holds 1, the idle slot: the replica given and one left out of --query-admin watch it; that one serves 1
    # from its cache and sends no search, so green's busy refusal does not see it.
    green = Watched({1: SERVING}, "green", 2)
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q1", query)])
    with pytest.raises(PublishError) as refused:
        publish_version(fleet, registry, 3)
    message = str(refused.value)
    assert message.startswith("index slot green holds version 1, which this rollout would replace with version 3, "
                              "yet its replica green serves 2 status streams while the query replicas given "
                              "(--query-admin: q1) are 1 process(es)"), message
    assert "Give every query replica in --query-admin" in message and "--allow-unlisted-watchers" in message, message
    assert message.endswith("nothing changed"), message
    assert green.versions == {1: SERVING} and blue.versions == {2: SERVING}
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.pointers() == (2, 1)


def test_an_operator_who_knows_the_other_watcher_rolls_out_with_allow_unlisted_watchers(tmp_path, monkeypatch):
    registry, query, blue, _ = setup(tmp_path)
    green = Watched({1: SERVING}, "green", 2)  # the replica given, and a debugging client
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q", query)])
    cli(tmp_path, monkeypatch, fleet, "--version", "3", "--allow-unlisted-watchers")
    assert green.versions == {3: SERVING} and query.versions == {2: ROLLBACK_TARGET, 3: SERVING}
    assert registry.pointers() == (3, 2)


@pytest.mark.parametrize("green_workers, refused", [([1, 1], False), ([2, 1], True)])
def test_pools_count_their_processes_on_both_sides(tmp_path, green_workers, refused):
    """A query replica run with --workers 2 is two watching processes; an index replica run with --workers counts
    each worker's streams, which its status lists: the endpoint's are their sum (worker 0's alone is 1 or 2)."""
    registry, _, blue, _ = setup(tmp_path)
    query = QueryPool({1: ROLLBACK_TARGET, 2: SERVING}, workers=2)
    green = Watched({1: SERVING}, "green", green_workers)
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q", query)])
    if refused:
        with pytest.raises(PublishError, match="its replica green serves 3 status streams while the query replicas "
                                               r"given \(--query-admin: q\) are 2 process\(es\)"):
            publish_version(fleet, registry, 3)
        assert green.versions == {1: SERVING}
    else:
        publish_version(fleet, registry, 3)
        assert green.versions == {3: SERVING}


def test_each_replica_of_a_slot_is_compared_alone_and_fewer_watchers_pass(tmp_path):
    """A query replica watches every replica of a slot it is given: two replicas each watched once by the one query
    replica given are 2 streams in all, and are no replica left out. A replica not watched at all (a query replica
    not given that slot) is normal."""
    registry, query, blue, _ = setup(tmp_path)
    green = [Watched({1: SERVING}, "green", n) for n in (1, 0)]
    fleet = Fleet([Replica("index", "blue", blue), *(Replica("index", f"green-{i}", g) for i, g in enumerate(green))],
                  [Replica("query", "q", query)])
    publish_version(fleet, registry, 3)
    assert [g.versions for g in green] == [{3: SERVING}] * 2


def test_recsys_client_status_shows_each_index_processs_watchers():
    pool = Watched({1: SERVING}, "green", [2, 1]).GetStatus(None)
    empty = Watched({}, "blue", 3).GetStatus(None)
    lines = client_status.table([client_status.ReplicaStatus("index", "h:1", pool),
                                 client_status.ReplicaStatus("index", "h:2", empty)]).splitlines()
    assert lines[0].split()[-1] == "WATCHERS"
    assert [(line.split()[0], line.split()[-1]) for line in lines[1:]] == [("h:1/w0", "2"), ("h:1/w1", "1"),
                                                                           ("h:2", "3")]
    assert lines[3].split()[:5] == ["h:2", "index", "blue", "-", "EMPTY"]
