"""recsys-publish's undo against in-memory admin stubs: a slot the run loaded was searched by the query replicas'
cache warm-up, so it refuses a load for its --busy-window-s; the undo waits for it to go idle."""

from __future__ import annotations

import grpc
import pytest

import recsys_client.undo as undo
from model_registry import Registry
from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version
from tests.unit.test_publish import QueryStub
from tests.unit.test_publish_guards import IndexStub, RpcFailure, setup


class WarmedSlot(IndexStub):
    """An index slot that the query replicas' cache warm-up searched once loaded: it refuses the next ``busy``
    loads as index_service.slot does within its --busy-window-s, then takes them."""

    def __init__(self, versions, slot: str, busy: int):
        super().__init__(versions, slot)
        self.busy, self.loads = busy, 0

    def LoadVersion(self, request, metadata=None, timeout=None):
        self.loads += 1
        if self.loads > 1 and self.busy:
            self.busy -= 1
            held = next(iter(self.versions))
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"slot {self.slot!r} answered a search for version {held} 0.2 s ago: it serves traffic. "
                             "A version loads only into an idle slot (none for 3 s); recsys-publish picks one")
        return super().LoadVersion(request, metadata, timeout)



def rollout_refused_at_the_promote(tmp_path, busy: int) -> tuple[WarmedSlot, Registry, QueryStub]:
    """Rolls version 3 out into slot green (holding the rollback target 1), green refusing ``busy`` loads after
    it, and the query replica refusing the promote: the run undoes its steps. Returns green, the registry and the
    query replica after it."""
    registry, query, blue, _ = setup(tmp_path)  # query serves 2 (1 its rollback target); blue holds 2
    green = WarmedSlot({1: SERVING}, "green", busy=busy)

    def refuse(request, metadata=None, timeout=None):
        raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "the replica went away")

    query.Promote = refuse
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)], [Replica("query", "q1", query)])
    with pytest.raises(PublishError, match="Promote failed: UNAVAILABLE"):
        publish_version(fleet, registry, 3)
    return green, registry, query


def test_a_rollout_undone_after_the_warm_up_gives_the_slot_its_version_back_once_it_is_idle(tmp_path, monkeypatch):
    """The undo's reload of the slot came within its busy window after the towers' warm-up searches (3 of 3 runs
    stopped by SIGTERM between the tower loads and the switch), was refused, and left the rollback target in no slot:
    the next --rollback failed with "no index endpoint holds version 1"."""
    monkeypatch.setattr(undo, "UNDO_IDLE_POLL_S", 0.01)
    green, registry, query = rollout_refused_at_the_promote(tmp_path, busy=3)
    assert green.versions == {1: SERVING}, green.versions
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.pointers() == (2, 1)


def test_an_undo_gives_up_on_a_slot_that_stays_busy_and_says_so(tmp_path, monkeypatch, caplog):
    """A slot still searched (a query replica routing there that the run was not given) is not waited for past
    UNDO_IDLE_WAIT_S: the run ends, naming the refusal."""
    monkeypatch.setattr(undo, "UNDO_IDLE_POLL_S", 0.01)
    monkeypatch.setattr(undo, "UNDO_IDLE_WAIT_S", 0.1)
    green, _, _ = rollout_refused_at_the_promote(tmp_path, busy=10 ** 6)
    assert green.versions == {3: SERVING} and 2 < green.loads < 10 ** 6
    assert "could not undo on index replica green: index replica green: LoadVersion failed: FAILED_PRECONDITION" \
        in caplog.text
