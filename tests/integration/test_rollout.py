"""The rollout's contract with real processes: the first rollout from empty
slots, services that refuse to start on a missing or broken pointer (one line,
no guess), training that does not move live traffic, and every process killed
(SIGKILL) mid-run rejoining by itself."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time

import grpc
import pytest

from model_registry import Registry
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.loadtest import LoadConfig, run_load
from recsys_client.fleet import Fleet
from recsys_client.publish import publish_version, rollback
from tests.integration.conftest import MODEL, index_slot, make_live, query_replica, train
from tests.processes import console_script, start_all, wait_until

pytestmark = pytest.mark.integration


def recommend(service, customer_id="c000001", timeout_s=10.0):
    with grpc.insecure_channel(service.address) as channel:
        return pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id=customer_id, k=5),
                                                           timeout=timeout_s)


def start_fails(process, timeout_s=120) -> str:
    """Starts a service that must refuse to start; returns its last log line."""
    with pytest.raises(RuntimeError, match="exited with 1"):
        process.start(timeout_s)
    return process.log_tail().strip().splitlines()[-1]


def test_first_rollout_from_empty_slots(trained_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(trained_registry / MODEL / "1", root / MODEL / "1")  # published only: no CURRENT, no slots
    registry = Registry(root, MODEL)
    blue, green = (index_slot(root, name, tmp_path / f"{name}.log") for name in ("blue", "green"))
    query = query_replica(root, [blue, green], tmp_path / "query.log")
    try:
        start_all(blue, green)
        line = start_fails(query)  # nothing has been rolled out: nothing to serve, and no guessing
        assert "cannot start" in line and "CURRENT does not exist" in line and "recsys-publish" in line
        publish = [console_script("recsys-publish"), "--registry", str(root), "--model", MODEL, "--initial",
                   "--index-admin", f"{blue.admin_address},{green.admin_address}"]
        done = subprocess.run(publish, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert registry.current_version() == 1 and registry.slot_version("blue") == 1
        assert registry.slot_version("green") is None
        query.start()
        assert recommend(query).model_version == 1
        again = subprocess.run(publish, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing to do" in again.stdout
    finally:
        for process in (query, green, blue):
            process.stop()


def test_missing_or_broken_pointers_stop_a_service_with_one_line(trained_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(trained_registry / MODEL, root / MODEL)
    registry = Registry(root, MODEL)
    slot = index_slot(root, "blue", tmp_path / "blue.log")
    (registry.model_dir / "CURRENT").write_text("7\n")
    line = start_fails(query_replica(root, [slot], tmp_path / "q1.log"))
    assert line == (f"recsys-query-service: cannot start: {registry.model_dir / 'CURRENT'} names '7', which is not "
                    f"a published version of {MODEL} (published: [1])")
    (registry.model_dir / "CURRENT").write_text("not a number\n")
    assert "names 'not a number'" in start_fails(query_replica(root, [slot], tmp_path / "q2.log"))
    (registry.model_dir / "slots" / "blue").write_text("9\n")
    line = start_fails(slot)
    assert line.startswith("recsys-index-service: cannot start: slot 'blue':") and "names '9'" in line
    # An explicit --version serves whatever the pointers say.
    slot = index_slot(root, "blue", tmp_path / "blue2.log", "--version", "1")
    query = query_replica(root, [slot], tmp_path / "q3.log", "--version", "1")
    try:
        start_all(slot, query)
        assert recommend(query).model_version == 1
        assert registry.slot_version("blue") == 1  # the slot recorded what it now holds
    finally:
        query.stop()
        slot.stop()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Version 1 live in slot blue, version 2 (another seed) published only."""
    root = tmp_path_factory.mktemp("rollout-registry")
    train(root)
    make_live(root, 1)
    train(root, "--seed", "7")
    return root


def test_training_does_not_move_live_traffic(two_versions, tmp_path):
    registry = Registry(two_versions, MODEL)
    assert registry.versions() == [1, 2] and registry.current_version() == 1
    blue = index_slot(two_versions, "blue", tmp_path / "blue.log")
    query = query_replica(two_versions, [blue], tmp_path / "query.log")
    try:
        start_all(blue, query)  # a replica (re)started after the training run comes back on the live version
        assert recommend(query).model_version == 1
    finally:
        query.stop()
        blue.stop()


def run_load_in_thread(config: LoadConfig) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(asyncio.run(run_load(config))))
    thread.start()
    return thread, out


def test_killed_processes_rejoin_by_themselves(two_versions, tmp_path):
    """Version 2 rolled out and rolled back: blue holds 1 (live), green 2 (the
    rollback target). Killing green costs no request; killing blue fails only
    requests for personal results until it is back; a killed query replica
    comes back on CURRENT with PREVIOUS as its rollback target."""
    blue, green = (index_slot(two_versions, name, tmp_path / f"{name}.log") for name in ("blue", "green"))
    query = query_replica(two_versions, [blue, green], tmp_path / "query.log")
    registry = Registry(two_versions, MODEL)
    try:
        start_all(blue, green, query)
        fleet = Fleet.connect([blue.admin_address, green.admin_address], [query.admin_address])
        try:
            publish_version(fleet, registry, 2)
            assert rollback(fleet, registry) == 1
        finally:
            fleet.close()

        # The idle slot dies under load and comes back: no request notices.
        thread, report = run_load_in_thread(LoadConfig(address=query.address, qps=100, duration_s=4,
                                                       num_customers=300, timeout_s=5, seed=3))
        time.sleep(1)
        green.kill()
        green.start()
        thread.join()
        assert report["requests"]["errors"] == 0 and report["requests"]["ok"] == 400, report["requests"]
        assert registry.slot_version("green") == 2

        # The live slot dies: requests fail fast (UNAVAILABLE), then it rejoins from its record.
        blue.kill()
        with pytest.raises(grpc.RpcError) as err:
            recommend(query, "c000011", timeout_s=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        blue.start()

        def served(customer: str) -> bool:
            try:
                return recommend(query, customer, timeout_s=2).model_version == 1
            except grpc.RpcError:
                return False

        wait_until(lambda: served("c000012"), 20, "the query replica to route to the restarted blue slot", 0.2)

        # The query replica dies and rejoins on CURRENT (1) with PREVIOUS (2) as its rollback target.
        query.kill()
        query.start()
        assert recommend(query, "c000013").model_version == 1
        fleet = Fleet.connect([blue.admin_address, green.admin_address], [query.admin_address])
        try:
            assert rollback(fleet, registry) == 2  # an instant switch to green, still there
        finally:
            fleet.close()
        assert recommend(query, "c000014").model_version == 2
    finally:
        for process in (query, green, blue):
            process.stop()
