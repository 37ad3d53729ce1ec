"""A sharded version served end to end, with replica failover: the trained
integration model republished in two shards (same vectors, no training),
one index process per shard of slot blue plus a second replica of shard 1,
and a query replica with no result cache, so every request searches every
shard. Answers must be the exact top-k over all candidates; a replica hung
(SIGSTOP) or killed (SIGKILL) under load must cost no request; RecommendSimilar
searches every shard with the candidate's vector from its own; a rollout
loads each shard of a new version into the idle slot's shard processes."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.loadtest import LoadConfig, format_table, run_load
from tests.integration.conftest import MODEL, VersionOracle, index_slot, live_versions, make_live, query_replica
from tests.processes import console_script
from trainer.export import index as index_builder

pytestmark = pytest.mark.integration

SHARDS = 2


def publish_sharded(root, source) -> int:
    """Publishes the version in ``source`` again, its candidates in SHARDS shards; returns its number."""
    registry = Registry(root, MODEL)
    manifest = files.read_manifest(source)
    ids = np.load(source / files.CANDIDATE_IDS_FILE)
    embeddings = np.load(source / files.CANDIDATE_EMBEDDINGS_FILE)
    shards, spec = index_builder.build_shards(embeddings, np.load(source / files.PROBE_QUERIES_FILE), ids, SHARDS)

    def write(staging):
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            files.MANIFEST_FILE, files.SIGNATURE_FILE, files.CANDIDATE_IDS_FILE, files.CANDIDATE_EMBEDDINGS_FILE,
            files.SCANN_DIR))
        specs = index_builder.save_candidates(staging, ids, embeddings, shards)
        return lambda version, checksums: dataclasses.replace(manifest, version=version, files=checksums, index=spec,
                                                              shards=specs)

    return registry.publish(write).version


@pytest.fixture(scope="module")
def sharded(trained_registry, tmp_path_factory):
    """(registry root, the unsharded source version's directory): a copy of the
    trained registry whose live version is the trained one split into SHARDS."""
    root = tmp_path_factory.mktemp("sharded") / "registry"
    shutil.copytree(trained_registry, root)
    source = Registry(root, MODEL).version_dir(Registry(root, MODEL).current_version())
    make_live(root, publish_sharded(root, source))
    return root, source


@pytest.fixture(scope="module")
def stack(sharded, tmp_path_factory):
    """(slot blue's shard processes, the second replica of blue's shard 1, slot green's
    shard processes (empty), the query replica), started."""
    root, _ = sharded
    logs = tmp_path_factory.mktemp("sharded-logs")
    blue = [index_slot(root, "blue", logs / f"blue{s}.log", "--shard", str(s)) for s in range(SHARDS)]
    spare = index_slot(root, "blue", logs / "blue1-spare.log", "--shard", "1")
    green = [index_slot(root, "green", logs / f"green{s}.log", "--shard", str(s)) for s in range(SHARDS)]
    query = query_replica(root, [*blue, spare, *green], logs / "query.log", "--local-cache-mb", "0")
    try:
        for process in (*blue, spare, *green, query):
            process.start()
        yield blue, spare, green, query
    finally:
        for process in (query, *green, spare, *blue):
            process.stop()


def load(query, seconds: float, samples: int = 0) -> LoadConfig:
    return LoadConfig(address=query.address, qps=150, duration_s=seconds, concurrency=500, timeout_s=5,
                      num_customers=300, seed=5, sample_responses=samples)


async def test_a_sharded_version_answers_as_one_index_over_every_candidate(sharded, stack):
    _, source = sharded
    report = await run_load(load(stack[-1], 3, samples=40))
    print("\n" + format_table(report))
    assert report["errors_by_code"] == {} and report["requests"]["ok"] == report["requests"]["scheduled"]
    oracle = VersionOracle(source)
    model_answers = [s for s in report["samples"] if s["source"] == "RESULT_SOURCE_MODEL"]
    assert len(model_answers) >= 30
    for sample in model_answers:  # brute-force shards, merged: exactly the unsharded version's answer
        assert sample["candidate_ids"] == oracle.top_k(sample["customer_id"]), sample
    # The check can fail: each answer merges candidates of several shards.
    assert all(len(set(files.shard_of(s["candidate_ids"], SHARDS).tolist())) > 1 for s in model_answers)


@pytest.mark.alone  # bounds the slowest call by 1 s
async def test_a_hung_then_killed_replica_costs_no_request(stack):
    _, spare, _, query = stack

    async def faults():
        await asyncio.sleep(1.5)
        spare.proc.send_signal(signal.SIGSTOP)  # hung: its calls are hedged to shard 1's other replica
        await asyncio.sleep(2.0)
        spare.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.0)
        spare.kill()  # dead: its calls fail over

    fault = asyncio.ensure_future(faults())
    report = await run_load(load(query, 7))
    await fault
    print("\n" + format_table(report))
    assert report["errors_by_code"] == {} and report["requests"]["dropped"] == 0
    assert report["requests"]["ok"] == report["requests"]["scheduled"]
    # Without hedging, a call sent to the hung replica waits out the 3 s index deadline.
    assert report["latency_ms"]["max_ms"] < 1000, report["latency_ms"]


def test_recommend_similar_searches_every_shard_with_the_candidates_own_vector(sharded, stack):
    _, source = sharded
    ids = np.load(source / files.CANDIDATE_IDS_FILE).astype(str)
    embeddings = np.load(source / files.CANDIDATE_EMBEDDINGS_FILE)
    with grpc.insecure_channel(stack[-1].address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for row in (0, 7, 42):
            answer = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=ids[row], k=10), timeout=10)
            order = [i for i in np.argsort(-(embeddings @ embeddings[row]), kind="stable") if i != row][:10]
            assert [c.candidate_id for c in answer.candidates] == ids[order].tolist()
            # The check can fail: the neighbours come from more than the candidate's own shard.
            assert len(set(files.shard_of([c.candidate_id for c in answer.candidates], SHARDS).tolist())) > 1
        with pytest.raises(grpc.RpcError) as missing:
            stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id="no-such-candidate", k=5), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_rollout_loads_each_shard_of_the_new_version_into_the_idle_slots_processes(sharded, stack):
    root, source = sharded
    blue, _, green, query = stack
    version = publish_sharded(root, source)
    rollout = subprocess.run(
        [console_script("recsys-publish"), "--registry", str(root), "--model", MODEL, "--version", str(version),
         "--index-admin", ",".join(p.admin_address for p in (*blue, *green)), "--query-admin", query.admin_address],
        capture_output=True, text=True, timeout=120)
    assert rollout.returncode == 0, rollout.stderr[-3000:]
    assert live_versions(*(p.admin_address for p in green), query.admin_address) == [version] * (SHARDS + 1)
    assert Registry(root, MODEL).current_version() == version
    with grpc.insecure_channel(query.address) as channel:
        answer = pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id="c000001", k=10),
                                                            timeout=10)
    assert answer.model_version == version and len(answer.candidates) == 10
