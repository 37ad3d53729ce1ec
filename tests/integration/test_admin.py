"""Admin plane over real processes: auth, load/verify/refuse, promote, rollback,
unload, version pinning, and a restarted replica rejoining by itself."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from model_registry.manifest import checksum_tree
from protos.recsys.v1 import admin_pb2 as apb
from protos.recsys.v1 import admin_pb2_grpc as apb_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.local import ServiceProcess, console_script
from recsys_client.publish import Fleet, PublishError, publish_version
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration
TOKEN = "s3cret"
AUTH = [("authorization", f"Bearer {TOKEN}")]


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
    assert registry.current_version() == 1
    copy_version(registry, 1, 2)
    copy_version(registry, 1, 3)
    embeddings = registry.version_dir(3) / files.CANDIDATE_EMBEDDINGS_FILE
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 0xFF
    embeddings.write_bytes(bytes(data))
    registry.set_current(1)
    return registry


@pytest.fixture(scope="module")
def services(admin_registry, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("admin-logs")
    common = ["--registry", str(admin_registry.root), "--model", MODEL, "--admin-token", TOKEN]
    index = ServiceProcess("recsys-index-service", common, logs / "index.log").start()
    query = ServiceProcess("recsys-query-service",
                           [*common, "--index-address", index.address, "--redis-url", redis_server.url],
                           logs / "query.log").start()
    yield index, query
    query.stop()
    index.stop()


def admin(service):
    return apb_grpc.AdminServiceStub(grpc.insecure_channel(service.admin_address))


def states(status):
    return {v.version: apb.VersionState.Name(v.state).removeprefix("VERSION_STATE_") for v in status.versions}


def test_admin_requires_the_token(services):
    index, _ = services
    for metadata in (None, [("authorization", "Bearer wrong")]):
        with pytest.raises(grpc.RpcError) as err:
            admin(index).GetStatus(apb.GetStatusRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in err.value.details()


def test_admin_plane_is_not_on_the_data_port(services):
    index, _ = services
    with grpc.insecure_channel(index.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            apb_grpc.AdminServiceStub(channel).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_corrupt_and_missing_versions_are_refused_and_change_nothing(services):
    for service in services:
        stub = admin(service)
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadVersion(apb.LoadVersionRequest(version=3), metadata=AUTH, timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "candidate_embeddings.npy fails its sha256 check" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadVersion(apb.LoadVersionRequest(version=99), metadata=AUTH, timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "published: [1, 2, 3]" in err.value.details()
        status = stub.GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
        assert status.live_version == 1 and states(status) == {1: "SERVING"}


def test_load_promote_pin_rollback_unload(services, admin_registry):
    index, query = services
    dim = admin_registry.manifest(1).embedding_dim
    for service in (index, query):
        status = admin(service).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)
        assert status.live_version == 1 and states(status) == {1: "SERVING", 2: "READY"}
    loaded = {v.version: v for v in admin(index).GetStatus(apb.GetStatusRequest(), metadata=AUTH).versions}
    assert loaded[2].self_test_recall_at_10 >= 0.99 and loaded[2].memory_bytes > 0

    with grpc.insecure_channel(index.address) as channel:
        search = pb_grpc.IndexServiceStub(channel).Search
        vector = np.ones(dim, np.float32).tolist()
        assert search(pb.SearchRequest(vector=vector, k=3, model_version=2), timeout=10).model_version == 2
        assert search(pb.SearchRequest(vector=vector, k=3), timeout=10).model_version == 1

        for service in (index, query):
            status = admin(service).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=10)
            assert states(status) == {1: "DRAINING", 2: "SERVING"}
        assert search(pb.SearchRequest(vector=vector, k=3), timeout=10).model_version == 2
    with grpc.insecure_channel(query.address) as channel:
        response = pb_grpc.QueryServiceStub(channel).Recommend(
            pb.RecommendRequest(customer_id="c000003", k=5), timeout=10)
        assert response.model_version == 2

    for service in (index, query):
        stub = admin(service)
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is live" in err.value.details()
        status = stub.Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=10)
        assert states(status) == {1: "SERVING", 2: "DRAINING"}
        status = stub.UnloadVersion(apb.UnloadVersionRequest(version=2), metadata=AUTH, timeout=10)
        assert states(status) == {1: "SERVING"}
        with pytest.raises(grpc.RpcError) as err:
            stub.Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_restarted_replica_loads_current_and_keeps_previous(admin_registry, tmp_path):
    admin_registry.set_current(2)
    index = ServiceProcess("recsys-index-service", ["--registry", str(admin_registry.root), "--model", MODEL],
                           tmp_path / "index.log")
    try:
        index.start()
        status = admin(index).GetStatus(apb.GetStatusRequest(), timeout=10)
        assert status.live_version == 2 and states(status) == {1: "DRAINING", 2: "SERVING"}
    finally:
        index.stop()
        admin_registry.set_current(1)


def test_publish_cli_rolls_out_rolls_back_and_aborts_cleanly(services, admin_registry):
    index, query = services
    publish = [console_script("recsys-publish"), "--registry", str(admin_registry.root), "--model", MODEL,
               "--index-admin", index.admin_address, "--query-admin", query.admin_address,
               "--admin-token", TOKEN, "--drain-s", "0"]

    def run(*extra):
        return subprocess.run([*publish, *extra], capture_output=True, text=True, timeout=120)

    done = run("--version", "2")
    assert done.returncode == 0, done.stderr
    assert admin_registry.current_version() == 2
    for service in services:
        assert states(admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH)) == {
            1: "DRAINING", 2: "SERVING"}

    refused = run("--version", "3")
    assert refused.returncode == 1 and "fails its sha256 check" in refused.stderr
    assert admin_registry.current_version() == 2
    for service in services:
        assert states(admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH)) == {
            1: "DRAINING", 2: "SERVING"}

    back = run("--rollback")
    assert back.returncode == 0, back.stderr
    assert admin_registry.current_version() == 1
    for service in services:
        assert admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH).live_version == 1



def test_rollout_refused_by_a_later_replica_is_undone_on_the_earlier_ones(services, admin_registry):
    index, query = services
    # Version 4: intact for the index, but its popularity file (read only by the
    # query service) is garbage, with checksums that match the garbage.
    copy_version(admin_registry, 1, 4)
    version_dir = admin_registry.version_dir(4)
    (version_dir / files.POPULAR_FILE).write_bytes(b"not an npz file")
    manifest = json.loads((version_dir / files.MANIFEST_FILE).read_text())
    manifest["files"] = checksum_tree(version_dir)
    (version_dir / files.MANIFEST_FILE).write_text(json.dumps(manifest))

    before = [states(admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH)) for service in services]
    fleet = Fleet.connect([index.admin_address], [query.admin_address], TOKEN)
    try:
        with pytest.raises(PublishError, match=f"query replica {query.admin_address}: LoadVersion failed: "
                                               "FAILED_PRECONDITION.*popular.npz"):
            publish_version(fleet, admin_registry, 4)
    finally:
        fleet.close()
    after = [states(admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH)) for service in services]
    assert after == before  # the index had loaded version 4; the rollout unloaded it again
    assert admin_registry.current_version() == 1
