"""The admin tools' request id: every call of one run (one ``Fleet``) carries one, and a failed call's error names
it, so the replica's log lines for the call (which carry the id it was given) are found by it."""

from __future__ import annotations

import grpc
import pytest

from recsys_client.fleet import PublishError
from recsys_client.publish import publish_version
from serving.telemetry.observability import REQUEST_ID_KEY
from tests.unit.test_publish_guards import RpcFailure, fleet_of, setup


def test_every_call_of_a_run_carries_its_request_id_and_a_refusal_names_it(tmp_path):
    registry, query, blue, green = setup(tmp_path)
    sent: list[str | None] = []
    for stub, methods in ((query, ("GetStatus", "LoadVersion", "UnloadVersion", "Promote")),
                          (blue, ("GetStatus", "LoadVersion", "UnloadVersion")), (green, ("GetStatus",))):
        for method in methods:
            def recording(request, metadata=None, timeout=None, call=getattr(stub, method)):
                sent.append(dict(metadata or ()).get(REQUEST_ID_KEY))
                return call(request, metadata, timeout)
            setattr(stub, method, recording)

    def refuse(request, metadata=None, timeout=None):
        sent.append(dict(metadata or ()).get(REQUEST_ID_KEY))
        raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "version 3 refused: a checksum differs")

    green.LoadVersion = refuse
    fleet = fleet_of(query, blue, green)
    with pytest.raises(PublishError, match=rf"LoadVersion failed: FAILED_PRECONDITION: .*\(request id "
                                           rf"{fleet.request_id}\)$"):
        publish_version(fleet, registry, 3)
    assert len(sent) > 3 and set(sent) == {fleet.request_id}
    assert fleet_of(query, blue, green).request_id != fleet.request_id  # one id per run
