"""``recsys-client status``'s RECALL@10 column: a measured recall of 0.0 is shown, only an absent one is "-"."""

from __future__ import annotations

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import versions_pb2
from recsys_client import status


def _recall_cells(service: str, *versions: versions_pb2.VersionStatus) -> list[str]:
    reply = pb.ServiceStatus(model_name="m", service=service, live_version=versions[0].version, versions=versions)
    return [row[6] for row in status.rows([status.ReplicaStatus(service, "h:1", reply)])]


def test_a_recall_of_zero_is_shown_and_only_an_unmeasured_one_is_a_dash():
    # proto3 sends a measured 0.0 as it sends no recall at all: what tells them apart is who answers and whether
    # the version has loaded (an index measures its recall at load; a query service never does).
    broken = versions_pb2.VersionStatus(version=2, state=versions_pb2.VERSION_STATE_SERVING, num_candidates=200,
                                        self_test_recall_at_10=0.0, load_seconds=1.5, catalogue_generation=3,
                                        self_test_generation=3)
    loading = versions_pb2.VersionStatus(version=3, state=versions_pb2.VERSION_STATE_LOADING)
    assert _recall_cells("index", broken, loading) == ["0.000@g3", "-"]
    served = versions_pb2.VersionStatus(version=2, state=versions_pb2.VERSION_STATE_SERVING, load_seconds=0.2)
    assert _recall_cells("query", served) == ["-"]
