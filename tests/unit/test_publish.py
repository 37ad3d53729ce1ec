"""recsys-publish's rollout logic against in-memory admin stubs (no servers)."""

from __future__ import annotations

from model_registry import Registry
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import versions_pb2
from recsys_client.publish import ROLLBACK_TARGET, SERVING, Fleet, Replica, publish_version
from tests.unit.test_registry_retention import publish_dummy


class StatusOnly:
    """An admin stub that reports fixed versions (version -> VersionState) and refuses every other call."""

    def __init__(self, versions: dict[int, int], slot: str = ""):
        self.versions = versions
        self.slot = slot

    def GetStatus(self, request, metadata=None, timeout=None):
        live = next((v for v, s in self.versions.items() if s == SERVING), 0)
        return pb.ServiceStatus(live_version=live, slot=self.slot, versions=[
            versions_pb2.VersionStatus(version=v, state=s) for v, s in self.versions.items()])

    def __getattr__(self, method):
        raise AssertionError(f"unexpected admin call {method}")


def test_a_rollout_run_again_after_it_stopped_past_the_promotion_moves_current(tmp_path):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    registry.set_current(1)
    # A first run promoted version 2 on every query replica, then stopped before it moved CURRENT (killed):
    # run again, it must finish the job, or a restarted replica rejoins on version 1 while the others serve 2.
    fleet = Fleet([Replica("index", "blue", StatusOnly({1: SERVING}, "blue")),
                   Replica("index", "green", StatusOnly({2: SERVING}, "green"))],
                  [Replica("query", "q", StatusOnly({1: ROLLBACK_TARGET, 2: SERVING}))])
    publish_version(fleet, registry, 2)
    assert (registry.current_version(), registry.previous_version()) == (2, 1)
