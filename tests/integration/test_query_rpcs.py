"""The query service's catalogue RPCs end to end: filters on Recommend,
RecommendSimilar, BatchRecommend, RecordInteractions' checks, and a catalogue
delta moving the generation that answers and cache keys carry. Real index and
query processes, a real Redis, the model trained for the integration tests,
republished with candidate attributes (no training)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from model_registry.attributes import Attributes
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.integration.conftest import MODEL, blue_and_query, make_live
from tests.processes import console_script

pytestmark = pytest.mark.integration

EVEN = pb.Filter(restricts=[pb.TokenRestrict(namespace="parity", allow=["even"])])


@pytest.fixture(scope="module")
def version_dir(trained_registry, tmp_path_factory):
    """A copy of the trained registry whose live version is the trained one plus
    attributes: token ``parity`` (even / odd row) and numeric ``row``."""
    root = tmp_path_factory.mktemp("attributed") / "registry"
    shutil.copytree(trained_registry, root)
    registry = Registry(root, MODEL)
    source = registry.version_dir(registry.current_version())
    manifest = files.read_manifest(source)

    def write(staging):
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            files.MANIFEST_FILE, files.SIGNATURE_FILE))
        rows = manifest.num_candidates
        Attributes.from_lists(rows, {"parity": [["even" if i % 2 == 0 else "odd"] for i in range(rows)]},
                              {"row": np.arange(rows, dtype=np.float32)}).save(staging / files.ATTRIBUTES_FILE)
        return lambda version, checksums: dataclasses.replace(manifest, version=version, files=checksums)

    version = registry.publish(write).version
    make_live(root, version)
    return registry.version_dir(version)


@pytest.fixture(scope="module")
def stack(version_dir, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("rpc-logs")
    root = version_dir.parent.parent
    with blue_and_query(root, logs, redis_server.url) as pair:
        yield pair


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack[1].address) as channel:
        yield pb_grpc.QueryServiceStub(channel)


def ids_of(response):
    return [c.candidate_id for c in response.candidates]


def candidates(version_dir):
    return np.load(version_dir / files.CANDIDATE_IDS_FILE).astype(str), \
        np.load(version_dir / files.CANDIDATE_EMBEDDINGS_FILE)


def exact(version_dir, vector, k, passes=lambda row: True, excluded=()):
    ids, embeddings = candidates(version_dir)
    order = np.argsort(-(embeddings @ np.asarray(vector, np.float32)), kind="stable")
    return [ids[i] for i in order if passes(i) and ids[i] not in excluded][:k]


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value.code(), err.value.details()


def test_filters_pass_through_recommend(stub, version_dir):
    ids, _ = candidates(version_dir)
    even = {ids[i] for i in range(0, len(ids), 2)}
    vector = stub.Embed(pb.EmbedRequest(customer_id="c000003"), timeout=10).embedding
    response = stub.Recommend(pb.RecommendRequest(customer_id="c000003", k=10, filter=EVEN), timeout=10)
    assert response.source == pb.RESULT_SOURCE_MODEL
    assert ids_of(response) == exact(version_dir, vector, 10, lambda row: row % 2 == 0)
    unfiltered = stub.Recommend(pb.RecommendRequest(customer_id="c000003", k=10), timeout=10)
    assert not unfiltered.cache_hit and set(ids_of(unfiltered)) - even  # the filter is part of the key
    low_rows = pb.Filter(ranges=[pb.NumericRange(namespace="row", max=20)])
    ranged = stub.Recommend(pb.RecommendRequest(customer_id="c000003", k=5, filter=low_rows), timeout=10)
    assert ids_of(ranged) == exact(version_dir, vector, 5, lambda row: row <= 20)
    # A customer the tower does not know: the index ranks by popularity, under the filter.
    stranger = stub.Recommend(pb.RecommendRequest(customer_id="never-seen", k=5, filter=EVEN), timeout=10)
    assert stranger.source == pb.RESULT_SOURCE_POPULARITY_FALLBACK and len(stranger.candidates) == 5
    assert set(ids_of(stranger)) <= even


@pytest.mark.parametrize("bad, message", [
    (pb.Filter(restricts=[pb.TokenRestrict(namespace="parity")]), "filter.restricts[0] (namespace 'parity') has "
                                                                  "neither allow nor deny"),
    (pb.Filter(ranges=[pb.NumericRange(namespace="row", min=5, max=1)]), "filter.ranges[0] (namespace 'row') has "
                                                                         "min 5.0 > max 1.0"),
    (pb.Filter(crowding_namespace="parity"), "crowding_namespace and filter.max_per_value go together"),
    # A namespace the version's attributes do not have: refused before any search.
    (pb.Filter(restricts=[pb.TokenRestrict(namespace="genre", allow=["x"])]), "filter namespace 'genre' is not"),
])
def test_a_bad_filter_is_invalid_argument(stub, bad, message):
    for call, request in ((stub.Recommend, pb.RecommendRequest(customer_id="c000001", k=5, filter=bad)),
                          (stub.Recommend, pb.RecommendRequest(customer_id="never-seen", k=5, filter=bad)),
                          (stub.RecommendSimilar, pb.RecommendSimilarRequest(candidate_id="i000001", k=5,
                                                                             filter=bad))):
        code, details = rpc_error(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


def test_recommend_similar_returns_neighbours_never_the_candidate(stub, version_dir):
    ids, embeddings = candidates(version_dir)
    anchor = ids[7]
    first = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=anchor, k=10), timeout=10)
    assert anchor not in ids_of(first) and len(first.candidates) == 10
    assert ids_of(first) == exact(version_dir, embeddings[7], 10, excluded={anchor})
    assert (first.model_version, first.model_name, first.cache_hit) == (
        files.read_manifest(version_dir).version, MODEL, False)
    again = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=anchor, k=10), timeout=10)
    assert again.cache_hit and ids_of(again) == ids_of(first)
    filtered = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=anchor, k=5, filter=EVEN,
                                                                exclude_candidate_ids=ids_of(first)[:2]), timeout=10)
    assert ids_of(filtered) == exact(version_dir, embeddings[7], 5, lambda row: row % 2 == 0,
                                     {anchor, *ids_of(first)[:2]})


def test_recommend_similar_of_an_unknown_candidate_is_not_found(stub):
    code, details = rpc_error(stub.RecommendSimilar, pb.RecommendSimilarRequest(candidate_id="no-such-item", k=5))
    assert code == grpc.StatusCode.NOT_FOUND and "'no-such-item' is not in version" in details


@pytest.mark.parametrize("request_kwargs, message", [
    ({"candidate_id": "", "k": 5}, "candidate_id is empty"),
    ({"candidate_id": "i1", "k": 0}, "k=0 is out of range"),
    ({"candidate_id": "x" * 300, "k": 5}, "candidate_id is 300 bytes"),
    ({"candidate_id": "i1", "k": 5, "exclude_candidate_ids": [""]}, "exclude_candidate_ids[0] is empty"),
])
def test_bad_recommend_similar_input_is_invalid_argument(stub, request_kwargs, message):
    code, details = rpc_error(stub.RecommendSimilar, pb.RecommendSimilarRequest(**request_kwargs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


def test_batch_recommend_equals_recommend_item_by_item(stub):
    requests = [pb.RecommendRequest(customer_id="c000011", k=10),
                pb.RecommendRequest(customer_id="c000012", k=5, exclude_candidate_ids=["i000001"]),
                pb.RecommendRequest(customer_id="someone-new", k=3),
                pb.RecommendRequest(customer_id="c000013", k=4, filter=EVEN)]
    batch = stub.BatchRecommend(pb.BatchRecommendRequest(requests=requests), timeout=10)
    assert len(batch.responses) == len(requests)
    for request, answer in zip(requests, batch.responses):
        single = stub.Recommend(request, timeout=10)
        assert single.cache_hit  # the batch cached each of its answers, under Recommend's keys
        assert (ids_of(answer), answer.source, answer.model_version, answer.catalogue_generation) == (
            ids_of(single), single.source, single.model_version, single.catalogue_generation)
        assert answer.model_version == batch.model_version


@pytest.mark.parametrize("requests, message", [
    ([], "requests is empty"),
    ([pb.RecommendRequest(customer_id="c1", k=5)] * 257, "257 requests in one batch; at most 256"),
    # The count first: an item's filter, parsed as the call is read, must not hide it.
    ([pb.RecommendRequest(customer_id="c1", k=5, filter=pb.Filter(ranges=[pb.NumericRange(namespace="")]))] * 257,
     "257 requests in one batch; at most 256"),
    ([pb.RecommendRequest(customer_id="c1", k=5), pb.RecommendRequest(customer_id="c2", k=0)],
     "requests[1].k=0 is out of range"),
    ([pb.RecommendRequest(customer_id="c1", k=5), pb.RecommendRequest(customer_id="", k=5)],
     "requests[1].customer_id is empty"),
    ([pb.RecommendRequest(customer_id="c1", k=5, filter=pb.Filter(ranges=[pb.NumericRange(namespace="")]))],
     "requests[0].filter.ranges[0].namespace is empty"),
])
def test_bad_batch_recommend_input_names_the_item(stub, requests, message):
    code, details = rpc_error(stub.BatchRecommend, pb.BatchRecommendRequest(requests=requests))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


@pytest.mark.parametrize("request_kwargs, message", [
    ({"customer_id": "", "candidate_ids": ["i1"]}, "customer_id is empty"),
    ({"customer_id": "c1"}, "candidate_ids is empty: send 1 to 100"),
    ({"customer_id": "c1", "candidate_ids": ["i1"] * 101}, "candidate_ids has 101 ids; at most 100"),
    ({"customer_id": "c1", "candidate_ids": ["i1", ""]}, "candidate_ids[1] is empty"),
])
def test_bad_record_interactions_input_is_invalid_argument(stub, request_kwargs, message):
    code, details = rpc_error(stub.RecordInteractions, pb.RecordInteractionsRequest(**request_kwargs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


def client(query, *args):
    result = subprocess.run([console_script("recsys-client"), args[0], "--address", query.address, *args[1:]],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_recsys_client_similar_batch_and_record(stub, stack, version_dir):
    query = stack[1]
    even = '{"restricts": [{"namespace": "parity", "allow": ["even"]}]}'
    code, out, _ = client(query, "batch", "--customer-ids", "c000031,c000032", "--k", "3", "--filter", even)
    assert code == 0
    answers = json.loads(out)["responses"]
    for customer, answer in zip(("c000031", "c000032"), answers):
        single = stub.Recommend(pb.RecommendRequest(customer_id=customer, k=3, filter=EVEN), timeout=10)
        assert [c["candidate_id"] for c in answer["candidates"]] == ids_of(single)
    ids, _ = candidates(version_dir)
    code, out, _ = client(query, "similar", "--candidate-id", ids[4], "--k", "4")
    assert code == 0 and len(json.loads(out)["candidates"]) == 4
    code, out, _ = client(query, "record", "--customer-id", "c000031", "--candidate-ids", f"{ids[1]},{ids[2]}")
    assert code == 0 and json.loads(out)["history_length"] == 2
    code, _, err = client(query, "similar", "--candidate-id", "nope", "--k", "4")
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = client(query, "recommend", "--customer-id", "c1", "--filter", '{"ranges": [{"min": 1}]}')
    assert code == 2 and "filter.ranges[0].namespace is empty" in err


def test_recsys_loadtest_mixes_every_rpc(stack, version_dir, tmp_path):
    ids, _ = candidates(version_dir)
    assert sorted(ids) == [f"i{r:06d}" for r in range(len(ids))]  # what --candidate-format names
    out = tmp_path / "report.json"
    result = subprocess.run([console_script("recsys-loadtest"), "--address", stack[1].address, "--qps", "60",
                             "--duration-s", "1.5", "--rpc-mix", "recommend=0.4,similar=0.2,batch=0.2,record=0.2",
                             "--batch-size", "4", "--num-candidates", str(len(ids)), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["rpcs"]) == {"recommend", "similar", "batch", "record"}
    assert all(stats["ok"] > 0 and stats["errors"] == 0 for stats in report["rpcs"].values()), report["rpcs"]
    assert sum(stats["requests"] for stats in report["rpcs"].values()) == report["requests"]["scheduled"] == 90


def test_a_catalogue_delta_moves_the_generation_of_answers_and_cache_keys(stub, stack, version_dir):
    """Last in the module: it changes the catalogue the other tests read."""
    index, query = stack
    before = stub.Recommend(pb.RecommendRequest(customer_id="c000021", k=10), timeout=10)
    assert before.catalogue_generation == 0
    assert stub.Recommend(pb.RecommendRequest(customer_id="c000021", k=10), timeout=10).cache_hit
    gone = ids_of(before)[0]
    result = subprocess.run([console_script("recsys-catalogue"), "--registry", str(version_dir.parent.parent),
                             "--model", MODEL, "--delete", gone, "--index-admin", index.admin_address,
                             "--query-admin", query.admin_address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["generation"] == 1
    after = stub.Recommend(pb.RecommendRequest(customer_id="c000021", k=10), timeout=10)
    assert (after.catalogue_generation, after.cache_hit) == (1, False)  # the generation-0 result is not served
    assert gone not in ids_of(after) and ids_of(after)[:9] == ids_of(before)[1:]
    assert stub.Recommend(pb.RecommendRequest(customer_id="c000021", k=10), timeout=10).cache_hit
    similar = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=ids_of(after)[0], k=10), timeout=10)
    assert similar.catalogue_generation == 1 and gone not in ids_of(similar)
    code, _ = rpc_error(stub.RecommendSimilar, pb.RecommendSimilarRequest(candidate_id=gone, k=5))
    assert code == grpc.StatusCode.NOT_FOUND
