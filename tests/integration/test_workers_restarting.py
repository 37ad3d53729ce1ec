"""``recsys-query-service --workers 2`` while a worker is replaced: an admin
call says so, reaches no worker, and goes through once the replacement serves
(the pool of tests/integration/test_workers.py)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import grpc
import pytest

from protos.recsys.v1 import admin_pb2 as apb
from serving.rpc.pool_directory import POOL_SECRET_FILE
from tests.integration.conftest import query_replica
from tests.integration.test_admin import AUTH
from tests.integration.test_workers import (WORKER_HUNG_S, WORKERS, admin, pool, registry,  # noqa: F401
                                            worker_pids, workers_live)
from tests.processes import alive, is_serving, wait_until


def test_an_admin_call_while_a_worker_restarts_says_to_retry_and_then_goes_through(pool):
    _, _, query, _ = pool
    victim = worker_pids(query)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "exited with code -9" in query.log_path.read_text(), 30, "the supervisor to see the exit")
    with pytest.raises(grpc.RpcError) as err:
        admin(query).Promote(apb.PromoteRequest(version=1), metadata=AUTH, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details().startswith("Promote was sent to no worker: worker ")  # 0 or 1: the kernel's pid order
    assert err.value.details().endswith(" is restarting (it loads the pool's versions and replays the registry when "
                                        "it starts): retry in a few seconds")
    assert sorted(workers_live(query)) in ([0, 1], [1, 1])  # the sibling was not promoted, the replacement not up
    wait_until(lambda: is_serving(query.admin_address), 120, "the replacement to serve")

    def promoted() -> bool:
        try:
            admin(query).Promote(apb.PromoteRequest(version=1), metadata=AUTH, timeout=30)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "is restarting" in e.details(), e.details()
            return False
        return True

    wait_until(promoted, 30, "the pool to take admin calls again", interval_s=0.2)
    assert workers_live(query) == [1] * WORKERS
    assert "loading and promoting" not in query.log_path.read_text()


def test_a_worker_that_answers_nothing_is_killed_and_started_again(pool):
    """A stopped worker keeps its share of the port: the kernel hands it connections, which hang. Once it has
    answered no health check for --worker-hung-s, the supervisor kills it, and starts it again as after a crash."""
    _, _, query, _ = pool
    hung = worker_pids(query)[-1]
    os.kill(hung, signal.SIGSTOP)
    try:
        wait_until(lambda: hung not in worker_pids(query), WORKER_HUNG_S + 30,
                   "the supervisor to kill the stopped worker")
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGCONT)
    assert re.search(rf"worker \d \(pid {hung}\) has answered no health check for \d+ s: killing it",
                     query.log_path.read_text())
    wait_until(lambda: len(worker_pids(query)) == WORKERS and is_serving(query.admin_address), 120,
               "the replacement to serve")
    assert workers_live(query) is not None


def test_the_next_supervisor_removes_the_private_directory_a_killed_one_left(pool, registry, tmp_path):
    blue = pool[0]
    killed = query_replica(registry.root, [blue], tmp_path / "killed.log", "--workers", str(WORKERS)).start()
    try:
        wait_until(lambda: is_serving(killed.admin_address), 60, "every worker to serve")
        workers = worker_pids(killed)
        directory = Path(re.search(r"admin unix:(\S+)/worker-\d\.admin", killed.log_path.read_text())[1])
    finally:
        killed.kill()  # SIGKILL: the supervisor removes nothing itself
    wait_until(lambda: not any(alive(p) for p in workers), 30, "the workers to exit after the supervisor's SIGKILL")
    assert (directory / POOL_SECRET_FILE).exists()
    after = query_replica(registry.root, [blue], tmp_path / "after.log", "--workers", str(WORKERS)).start()
    try:
        assert not directory.exists()
        assert "the private directory of a supervisor that was killed" in after.log_path.read_text()
    finally:
        after.stop()
