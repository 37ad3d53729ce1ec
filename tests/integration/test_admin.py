"""Admin plane over real processes (two index slots, a query replica): auth,
load/verify/refuse, the busy-slot guard, routing switches (promote, rollback),
unload, version pinning, restarted processes rejoining by themselves, and
recsys-publish rolling out, rolling back and undoing a refused rollout."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from model_registry.deltas import Delta, write_delta
from model_registry.manifest import checksum_tree
from protos.recsys.v1 import admin_pb2 as apb
from protos.recsys.v1 import admin_pb2_grpc as apb_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from recsys_client.fleet import Fleet, PublishError
from recsys_client.publish import publish_version
from tests.integration.conftest import MODEL, index_slot, query_replica
from tests.processes import console_script, is_serving, start_all, wait_until

pytestmark = pytest.mark.integration
TOKEN = "s3cret"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def token_file(directory: Path) -> Path:
    """The admin token in a file, as the services and tools take it (never in argv)."""
    path = directory / "admin.token"
    path.write_text(TOKEN + "\n")
    return path
BUSY_WINDOW_S = 1.0


def copy_version(registry: Registry, source: int, target: int) -> None:
    """A byte-identical copy of a version under a new number (a valid version)."""
    shutil.copytree(registry.version_dir(source), registry.version_dir(target))
    path = registry.version_dir(target) / files.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["version"] = target
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def admin_registry(trained_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("admin-registry")
    shutil.copytree(trained_registry / MODEL, root / MODEL)
    registry = Registry(root, MODEL)
    assert registry.current_version() == 1 and registry.slot_version("blue") == 1
    copy_version(registry, 1, 2)
    copy_version(registry, 1, 3)
    for name in (files.CANDIDATE_EMBEDDINGS_FILE, files.POPULAR_FILE):  # one file of each service
        path = registry.version_dir(3) / name
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return registry


@pytest.fixture(scope="module")
def services(admin_registry, redis_server, tmp_path_factory):
    """(blue slot holding 1, empty green slot, query replica routing over both)."""
    logs = tmp_path_factory.mktemp("admin-logs")
    common = ["--admin-token-file", str(token_file(logs))]
    blue = index_slot(admin_registry.root, "blue", logs / "blue.log", *common, "--busy-window-s", str(BUSY_WINDOW_S))
    green = index_slot(admin_registry.root, "green", logs / "green.log", *common,
                       "--busy-window-s", str(BUSY_WINDOW_S))
    query = query_replica(admin_registry.root, [blue, green], logs / "query.log", *common,
                          "--redis-url", redis_server.url)
    start_all(blue, green, query)
    yield blue, green, query
    for service in (query, green, blue):
        service.stop()


def admin(service):
    return apb_grpc.AdminServiceStub(grpc.insecure_channel(service.admin_address))


def status(service):
    return admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)


def states(reply):
    return {v.version: versions_pb2.VersionState.Name(v.state).removeprefix("VERSION_STATE_") for v in reply.versions}


def search(service, version, dim):
    with grpc.insecure_channel(service.address) as channel:
        return pb_grpc.IndexServiceStub(channel).Search(
            pb.SearchRequest(vector=np.ones(dim, np.float32).tolist(), k=3, model_version=version), timeout=10)


def recommend(service, customer_id="c000003"):
    with grpc.insecure_channel(service.address) as channel:
        return pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id=customer_id, k=5),
                                                           timeout=10)


def test_admin_requires_the_token(services):
    blue, _, _ = services
    for metadata in (None, [("authorization", "Bearer wrong")]):
        with pytest.raises(grpc.RpcError) as err:
            admin(blue).GetStatus(apb.GetStatusRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in err.value.details()


def test_admin_plane_is_not_on_the_data_port(services):
    blue, _, _ = services
    with grpc.insecure_channel(blue.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            apb_grpc.AdminServiceStub(channel).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_empty_slot_is_up_but_does_not_serve_searches(services):
    blue, green, _ = services
    assert states(status(green)) == {} and status(green).slot == "green"
    assert is_serving(green.address) and not is_serving(green.address, "recsys.v1.IndexService")
    assert is_serving(blue.address, "recsys.v1.IndexService")


def test_corrupt_and_missing_versions_are_refused_and_change_nothing(services):
    blue, green, query = services
    before = [states(status(s)) for s in services]
    assert before == [{1: "SERVING"}, {}, {1: "SERVING"}]
    # Each service checksums the files it reads: the slot the candidates, the query replica its tower's files.
    for service, corrupt in ((green, files.CANDIDATE_EMBEDDINGS_FILE), (query, files.POPULAR_FILE)):
        with pytest.raises(grpc.RpcError) as err:
            admin(service).LoadVersion(apb.LoadVersionRequest(version=3), metadata=AUTH, timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{corrupt} fails its sha256 check" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            admin(service).LoadVersion(apb.LoadVersionRequest(version=99), metadata=AUTH, timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "published: [1, 2, 3]" in err.value.details()
    assert [states(status(s)) for s in services] == before


def test_slot_loads_routing_switches_pin_rollback_and_unload(services, admin_registry):
    blue, green, query = services
    dim = admin_registry.manifest(1).embedding_dim
    reply = admin(green).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)
    assert reply.slot == "green" and states(reply) == {2: "SERVING"}
    assert reply.versions[0].self_test_recall_at_10 >= 0.99
    assert Registry(admin_registry.root, MODEL).slot_version("green") == 2
    # Each slot answers searches pinned to the version it holds, and refuses others.
    assert search(green, 2, dim).model_version == 2 and search(blue, 0, dim).model_version == 1
    with pytest.raises(grpc.RpcError) as err:
        search(blue, 2, dim)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 2 is not loaded" in err.value.details()
    # Slots do not promote: that is the query replicas' routing.
    with pytest.raises(grpc.RpcError) as err:
        admin(green).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "routing switch" in err.value.details()

    assert states(admin(query).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)) == {
        1: "SERVING", 2: "READY"}
    assert recommend(query).model_version == 1
    reply = admin(query).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=10)
    assert states(reply) == {1: "ROLLBACK_TARGET", 2: "SERVING"} and reply.live_version == 2
    assert recommend(query, "c000004").model_version == 2  # its searches now go to green

    with pytest.raises(grpc.RpcError) as err:
        admin(query).UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is live" in err.value.details()
    assert states(admin(query).Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=10)) == {
        1: "SERVING", 2: "ROLLBACK_TARGET"}
    assert recommend(query, "c000005").model_version == 1
    assert states(admin(query).UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH,
                                             timeout=10)) == {1: "SERVING"}
    with pytest.raises(grpc.RpcError) as err:
        admin(query).Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Green answered searches just now: it serves traffic, so it refuses to unload or load.
    search(green, 2, dim)
    with pytest.raises(grpc.RpcError) as err:
        admin(green).UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "serves traffic" in err.value.details()
    time.sleep(BUSY_WINDOW_S + 0.2)
    reply = admin(green).UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH, timeout=10)
    assert states(reply) == {} and Registry(admin_registry.root, MODEL).slot_version("green") is None


def test_a_promotion_needs_an_index_slot_holding_the_version(services):
    _, _, query = services
    admin(query).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)  # no slot holds 2
    with pytest.raises(grpc.RpcError) as err:
        admin(query).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no index endpoint holds version 2" in err.value.details()
    assert states(admin(query).UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH,
                                             timeout=10)) == {1: "SERVING"}


def test_a_promotion_needs_the_index_slot_at_the_catalogue_generation_of_the_replicas_tower(services,
                                                                                           admin_registry):
    _, green, query = services
    copy_version(admin_registry, 1, 5)
    assert states(admin(green).LoadVersion(apb.LoadVersionRequest(version=5), metadata=AUTH, timeout=60)) == {
        5: "SERVING"}
    admin(query).LoadVersion(apb.LoadVersionRequest(version=5), metadata=AUTH, timeout=60)
    top = recommend(query).candidates[0].candidate_id
    dim = admin_registry.manifest(5).embedding_dim
    write_delta(admin_registry.model_dir, 5, Delta.make(deleted=[top], dim=dim))
    # The delta reaches the query replica only: its tower of 5 is at generation 1, green's index at 0.
    admin(query).ApplyCatalogue(apb.ApplyCatalogueRequest(version=5, generation=1), metadata=AUTH, timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        admin(query).Promote(apb.PromoteRequest(version=5), metadata=AUTH, timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 5 at catalogue generation >= 1" in err.value.details()
    assert "recsys-catalogue" in err.value.details() and status(query).live_version == 1
    admin(green).ApplyCatalogue(apb.ApplyCatalogueRequest(version=5, generation=1), metadata=AUTH, timeout=30)
    assert admin(query).Promote(apb.PromoteRequest(version=5), metadata=AUTH, timeout=30).live_version == 5
    answer = recommend(query)
    assert (answer.model_version, answer.catalogue_generation) == (5, 1)
    assert top not in [c.candidate_id for c in answer.candidates]
    assert admin(query).Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=30).live_version == 1
    assert states(admin(query).UnloadVersion(apb.UnloadVersionRequest(version=5), metadata=AUTH,
                                             timeout=10)) == {1: "SERVING"}
    time.sleep(BUSY_WINDOW_S + 0.2)  # green served that recommendation: it refuses to unload until idle
    assert states(admin(green).UnloadVersion(apb.UnloadVersionRequest(version=5), metadata=AUTH, timeout=10)) == {}


def test_publish_cli_rolls_out_rolls_back_and_aborts_cleanly(services, admin_registry, tmp_path):
    blue, green, query = services
    publish = [console_script("recsys-publish"), "--registry", str(admin_registry.root), "--model", MODEL,
               "--index-admin", f"{blue.admin_address},{green.admin_address}",
               "--query-admin", query.admin_address, "--admin-token-file", str(token_file(tmp_path)),
               "--drain-s", "0"]

    def run(*extra):
        return subprocess.run([*publish, *extra], capture_output=True, text=True, timeout=120)

    done = run("--version", "2")
    assert done.returncode == 0, done.stderr
    assert (admin_registry.current_version(), admin_registry.previous_version()) == (2, 1)
    assert [states(status(s)) for s in services] == [{1: "SERVING"}, {2: "SERVING"},
                                                     {1: "ROLLBACK_TARGET", 2: "SERVING"}]
    assert recommend(query, "c000006").model_version == 2

    back = run("--rollback")
    assert back.returncode == 0, back.stderr
    assert (admin_registry.current_version(), admin_registry.previous_version()) == (1, 2)
    assert [states(status(s)) for s in services] == [{1: "SERVING"}, {2: "SERVING"},
                                                     {1: "SERVING", 2: "ROLLBACK_TARGET"}]

    time.sleep(BUSY_WINDOW_S + 0.2)  # green answered searches for version 2 until the rollback
    refused = run("--version", "3")
    assert refused.returncode == 1 and "fails its sha256 check" in refused.stderr
    assert (admin_registry.current_version(), admin_registry.previous_version()) == (1, 2)
    assert [states(status(s)) for s in services] == [{1: "SERVING"}, {2: "SERVING"},
                                                     {1: "SERVING", 2: "ROLLBACK_TARGET"}]


def test_rollout_refused_by_a_later_replica_is_undone_on_the_earlier_ones(services, admin_registry):
    blue, green, query = services
    # Version 4: intact for the index, but its customer store (read only by the
    # query service) is garbage, with checksums that match the garbage.
    copy_version(admin_registry, 1, 4)
    version_dir = admin_registry.version_dir(4)
    (version_dir / files.CUSTOMER_STORE_FILE).write_bytes(b"not an npz file")
    manifest = json.loads((version_dir / files.MANIFEST_FILE).read_text())
    manifest["files"] = checksum_tree(version_dir)
    (version_dir / files.MANIFEST_FILE).write_text(json.dumps(manifest))

    time.sleep(BUSY_WINDOW_S + 0.2)
    before = [states(status(s)) for s in services]
    fleet = Fleet.connect([blue.admin_address, green.admin_address], [query.admin_address], TOKEN)
    try:
        with pytest.raises(PublishError, match=f"query replica {query.admin_address}: LoadVersion failed: "
                                               "FAILED_PRECONDITION.*customer_store.npz"):
            publish_version(fleet, admin_registry, 4)
    finally:
        fleet.close()
    # The idle slot had loaded version 4 in place of 2; the rollout loaded 2 back there.
    assert [states(status(s)) for s in services] == before
    assert admin_registry.current_version() == 1 and admin_registry.slot_version("green") == 2


def test_restarted_processes_rejoin_by_themselves(services, admin_registry):
    blue, green, query = services
    live, target = admin_registry.current_version(), admin_registry.previous_version()
    held = {s: states(status(s)) for s in (blue, green)}
    for slot in (blue, green):
        slot.stop()
        slot.start()
        assert states(status(slot)) == held[slot]  # reloaded from its slot record
    query.stop()
    query.start()
    reply = status(query)
    assert reply.live_version == live and states(reply) == {live: "SERVING", target: "ROLLBACK_TARGET"}
    wait_until(lambda: recommend(query, "c000007").model_version == live, 20, "the query replica to route again")
