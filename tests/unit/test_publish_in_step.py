"""recsys-publish with query replicas that disagree on the live version (a run killed between two promotes, or a
replica restarted before CURRENT moved), against in-memory admin stubs: a rollout brings them in step, a rollback
refuses naming the command that does."""

from __future__ import annotations

import logging

import grpc
import pytest

from model_registry import Registry
from protos.recsys.v1.versions_pb2 import VERSION_STATE_READY as READY
from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version, rollback
from tests.unit.test_publish import QueryStub
from tests.unit.test_publish_guards import IndexStub, RpcFailure
from tests.unit.test_registry_retention import publish_dummy


def split(tmp_path) -> tuple[Registry, QueryStub, QueryStub, IndexStub, IndexStub]:
    """Versions 1..7; a rollout of 6 over 5 (CURRENT 5, PREVIOUS 4) killed after q2's promote, before q1's: q1 serves
    5 (6 loaded), q2 serves 6. Slot blue holds 5, green 6."""
    registry = Registry(tmp_path, "m")
    for _ in range(7):
        publish_dummy(registry)
    registry.set_current(4)
    registry.set_current(5)
    q1, q2 = QueryStub({4: ROLLBACK_TARGET, 5: SERVING, 6: READY}), QueryStub({5: ROLLBACK_TARGET, 6: SERVING})
    return registry, q1, q2, IndexStub({5: SERVING}, "blue"), IndexStub({6: SERVING}, "green")


def fleet(*queries, slots) -> Fleet:
    return Fleet([Replica("index", s.slot, s) for s in slots],
                 [Replica("query", f"q{i}", q) for i, q in enumerate(queries, 1)])


def test_a_rollout_forward_brings_replicas_that_disagree_in_step(tmp_path, caplog):
    registry, q1, q2, blue, green = split(tmp_path)
    with caplog.at_level(logging.WARNING, "recsys-publish"):
        publish_version(fleet(q1, q2, slots=(blue, green)), registry, 6, keep_versions=None)
    assert q1.versions == {5: ROLLBACK_TARGET, 6: SERVING} and q2.versions == {5: ROLLBACK_TARGET, 6: SERVING}
    assert blue.versions == {5: SERVING} and green.versions == {6: SERVING}
    assert registry.pointers() == (6, 5)
    assert any("PREVIOUS will be version 5 (CURRENT's, as they were tied)" in m for m in caplog.messages), \
        caplog.messages


def test_a_rollout_of_current_brings_them_back_and_a_rollback_then_names_the_rollout_that_goes_back(tmp_path,
                                                                                                    caplog):
    registry, q1, q2, blue, green = split(tmp_path)
    replicas = fleet(q1, q2, slots=(blue, green))
    with pytest.raises(PublishError) as refused:
        rollback(replicas, registry)
    assert str(refused.value) == (
        "query replicas disagree on the live version: {'q1': 5, 'q2': 6}; a rollback needs one version to go back "
        "from: first run `recsys-publish --version 5` (the version CURRENT names) with the index slots "
        "(--index-admin) and these query replicas: it loads that version where missing and promotes it on every "
        "query replica, bringing them in step")
    with caplog.at_level(logging.WARNING, "recsys-publish"):
        publish_version(replicas, registry, 5, keep_versions=None)
    assert q1.versions == {4: ROLLBACK_TARGET, 5: SERVING} and q2.versions == {5: SERVING, 6: ROLLBACK_TARGET}
    assert registry.pointers() == (5, 4)
    assert any("PREVIOUS will be version 4 (version 5, CURRENT's, as they were tied, is the one rolled out)" in m
               for m in caplog.messages), caplog.messages
    # In step on 5, but each replica would roll back to its own target: the refusal names the way back.
    with pytest.raises(PublishError, match=r"disagree on the rollback target version: \{'q1': 4, 'q2': 6\}; all "
                                           r"serve version 5, .* `recsys-publish --version 4` \(the version PREVIOUS"):
        rollback(replicas, registry)
    publish_version(replicas, registry, 4, keep_versions=None)
    assert q1.versions == {4: SERVING, 5: ROLLBACK_TARGET} and q2.versions == {4: SERVING, 5: ROLLBACK_TARGET}
    assert rollback(replicas, registry) == 5  # and the fleet rolls back as one again


def test_a_majority_becomes_previous_and_a_new_version_gets_a_slot_no_replica_serves(tmp_path, caplog):
    registry, q1, q2, blue, green = split(tmp_path)
    q3, red = QueryStub({4: ROLLBACK_TARGET, 5: SERVING}), IndexStub({4: SERVING}, "red")
    with caplog.at_level(logging.WARNING, "recsys-publish"):
        publish_version(fleet(q1, q2, q3, slots=(blue, green, red)), registry, 7, keep_versions=None)
    assert red.versions == {7: SERVING} and blue.versions == {5: SERVING} and green.versions == {6: SERVING}
    assert q1.versions == {5: ROLLBACK_TARGET, 7: SERVING} and q2.versions == {6: ROLLBACK_TARGET, 7: SERVING}
    assert registry.pointers() == (7, 5)
    assert any("PREVIOUS will be version 5 (most of them served it)" in m for m in caplog.messages), caplog.messages


def test_a_refused_promote_puts_each_replica_back_on_its_own_live_version(tmp_path):
    registry, q1, q2, blue, green = split(tmp_path)

    class Refusing(QueryStub):
        def Promote(self, request, metadata=None, timeout=None):
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "refused")

    q3 = Refusing({4: ROLLBACK_TARGET, 5: SERVING})
    with pytest.raises(PublishError, match="query replica q3: Promote failed"):
        publish_version(fleet(q1, q2, q3, slots=(blue, green)), registry, 6, keep_versions=None)
    assert q1.versions[5] == SERVING and q2.versions[6] == SERVING  # each as it was, not all on one version
    assert 6 not in q3.versions  # the tower this run loaded is unloaded again
    assert registry.pointers() == (5, 4)
