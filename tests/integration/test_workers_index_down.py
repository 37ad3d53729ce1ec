"""``recsys-query-service --workers 2`` whose index is down when a worker is replaced: the replacement loads
its versions but cannot serve (no index holds them), and the pool passes admin calls on to every worker once it
has loaded, rather than refusing them for as long as the supervisor would wait for it to serve (ALIGN_TIMEOUT_S)."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from protos.recsys.v1 import admin_pb2 as apb
from tests.integration.conftest import index_slot, query_replica
from tests.integration.test_workers import WORKERS, admin, registry, worker_pids, workers_live  # noqa: F401
from tests.processes import is_serving, start_all, wait_until


def test_a_worker_replaced_while_no_index_serves_passes_admin_calls_on_once_loaded(registry, tmp_path):
    blue = index_slot(registry.root, "blue", tmp_path / "blue.log")
    query = query_replica(registry.root, [blue], tmp_path / "query.log", "--workers", str(WORKERS))
    start_all(blue, query)
    try:
        wait_until(lambda: is_serving(query.admin_address), 60, "every worker to serve")
        blue.stop()
        victim = worker_pids(query)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "exited with code -9" in query.log_path.read_text(), 30, "the supervisor to see the exit")

        answers: list[grpc.RpcError] = []

        def answered() -> bool:
            with pytest.raises(grpc.RpcError) as err:  # no index holds a version: no promotion can be done
                admin(query).Promote(apb.PromoteRequest(version=1), timeout=30)
            answers.append(err.value)
            return "is restarting" not in err.value.details()

        # Its start and loads take seconds; the old supervisor refused calls until it served, 300 s at most.
        wait_until(answered, 60, "the pool to pass admin calls on with the replacement loaded", interval_s=0.2)
        # The call reached both workers, and the answer names what the operator has to fix.
        assert answers[-1].code() == grpc.StatusCode.FAILED_PRECONDITION, answers[-1].details()
        assert answers[-1].details().startswith("Promote failed on worker 0 of 2: "), answers[-1].details()
        assert "no index endpoint holds version 1" in answers[-1].details(), answers[-1].details()
        assert answers[-1].details().endswith("(also on workers [1])"), answers[-1].details()
        assert answers[0].code() == grpc.StatusCode.UNAVAILABLE  # while it started: retry
        assert workers_live(query) == [1] * WORKERS
        assert not is_serving(query.admin_address)  # the pool's health says it does not serve
    finally:
        query.stop()
        blue.stop()
