"""What the index service's gRPC API answers at its edges: an answer over the
message limit (``--max-message-bytes``), which query of a BatchSearch a
refusal is about, and query vectors whose scores leave float32's range. Real
gRPC over loopback, in process, over a real brute-force ScaNN searcher whose
candidate ids take the most bytes an id may."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from index_service.core import MAX_SCORE_BOUND, Answer, IndexCore, Query
from index_service.rows import Rows
from index_service.searcher import CandidateIndex, SearchResult, _scann_pybind
from index_service.servicer import IndexServicer, _response
from model_registry import IndexSpec, Manifest
from model_registry.attributes import Attributes
from model_registry.deltas import MAX_UPSERT_SCALE, Delta
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import validation
from serving.errors import InvalidArgument
from serving.lifecycle.admin import LoadReport
from serving.lifecycle.versions import VersionManager
from serving.rpc.grpc_server import ServiceSpec, bind_address, start_server

DIM = 4
# 1,000 candidates whose ids take the most bytes an id may: a k = 1000 answer is ~266 KB, 63 of them over 16 MiB.
LONG_IDS = np.array([f"{i:04d}".ljust(validation.MAX_ID_BYTES, "x") for i in range(1000)])


def long_id_index() -> CandidateIndex:
    db = np.random.default_rng(0).normal(size=(len(LONG_IDS), DIM)).astype(np.float32)
    manifest = Manifest("m", 1, DIM, len(LONG_IDS), "id", "test", "now", IndexSpec("brute_force"), {})
    return CandidateIndex(manifest, Rows(LONG_IDS, db),
                          _scann_pybind().builder(db, 10, "dot_product").score_brute_force().build(), LoadReport(0, 0))


@pytest.fixture
async def serve():
    """``serve(max_message_bytes)``: an IndexService stub of a server holding ``long_id_index`` as version 1."""
    servers, channels = [], []

    async def start(max_message_bytes: int = validation.DEFAULT_MAX_MESSAGE_BYTES) -> pb_grpc.IndexServiceStub:
        manager: VersionManager[CandidateIndex] = VersionManager("m")
        manager.add(1, long_id_index(), make_live=True)
        servicer = IndexServicer(IndexCore(manager, ThreadPoolExecutor(1)), None, max_message_bytes)
        server = await start_server([ServiceSpec(pb_grpc.add_IndexServiceServicer_to_server, servicer,
                                                 "recsys.v1.IndexService")], "127.0.0.1", 0, max_message_bytes)
        servers.append(server)
        # The client takes larger messages than the server sends: what comes back is the server's doing.
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                            options=[("grpc.max_receive_message_length", 1 << 30)])
        channels.append(channel)
        return pb_grpc.IndexServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.server.stop(0)


async def refused(call) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the call was answered")


def query(k: int, vector=(0.5,) * DIM) -> pb.SearchRequest:
    return pb.SearchRequest(vector=list(vector), k=k)


@pytest.mark.parametrize("count, k", [(63, 1000), (1024, 97)])
async def test_a_batch_search_answer_over_the_message_limit_is_refused_naming_the_limit(serve, count, k):
    stub = await serve()
    # Within the batch bounds (1,024 queries, 100,000 results), over 16 MiB with ids of 256 bytes.
    assert count <= validation.DEFAULT_MAX_BATCH_QUERIES and count * k <= validation.DEFAULT_MAX_BATCH_RESULTS
    error = await refused(stub.BatchSearch(pb.BatchSearchRequest(queries=[query(k)] * count), timeout=60,
                                           metadata=[("x-request-id", "big-answer")]))
    # Not RESOURCE_EXHAUSTED: that is load shedding, which a retry or another replica may serve; this never.
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"{validation.DEFAULT_MAX_MESSAGE_BYTES:,} bytes" in error.details(), error.details()
    assert "--max-message-bytes" in error.details() and "split the batch or lower k" in error.details()
    assert ("x-request-id", "big-answer") in list(error.trailing_metadata())
    # Half of it is answered in full.
    answer = await stub.BatchSearch(pb.BatchSearchRequest(queries=[query(k)] * (count // 2)), timeout=60)
    assert [len(r.candidates) for r in answer.results] == [k] * (count // 2)
    assert answer.ByteSize() <= validation.DEFAULT_MAX_MESSAGE_BYTES


async def test_a_single_answer_over_a_lowered_message_limit_is_refused_naming_it(serve):
    stub = await serve(1 << 16)  # the least --max-message-bytes: under a k = 1000 answer of these ids
    for call in (stub.Search(query(1000), timeout=30),
                 stub.SearchSimilar(pb.SearchSimilarRequest(candidate_id=str(LONG_IDS[0]), k=1000), timeout=30)):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert "65,536 bytes" in error.details() and "lower k" in error.details(), error.details()
    assert len((await stub.Search(query(200), timeout=30)).candidates) == 200


@pytest.mark.parametrize("ids", [["a"] * 10, ["€uro", "\U0001f600" * 64, "x"], [str(i) * 30 for i in range(100)]])
def test_the_size_bound_that_spares_serializing_an_answer_is_never_under_its_size(ids):
    width = np.array(ids).dtype.itemsize // 4  # what Rows.id_chars says of these ids
    answer = Answer(1, 2**62, width)
    results = [SearchResult(ids, [-1.5e38] * len(ids))] * 3
    response = pb.BatchSearchResponse(model_version=2**62, catalogue_generation=2**62)
    for result in results:
        _response(result, answer, "m" * 64, response.results.add())
    servicer = IndexServicer(IndexCore(VersionManager("m"), ThreadPoolExecutor(1)), None, response.ByteSize() - 1)
    with pytest.raises(InvalidArgument, match=f"the answer is {response.ByteSize():,} bytes"):
        servicer._sendable(response, answer, results, "lower k")


BAD_QUERIES = [
    (query(0), "queries[1].k=0 is out of range"),
    (query(5, [0.5] * 3), f"queries[1].query vector has 3 dimensions; model version 1 embeds into {DIM}"),
    (query(5, [0.5, float("nan"), 0.5, 0.5]), "queries[1].query vector has a non-finite value (nan) at position 1"),
    (pb.SearchRequest(vector=[0.5] * DIM, k=5, exclude_candidate_ids=["a", ""]),
     "queries[1].exclude_candidate_ids[1] is empty"),
    (pb.SearchRequest(vector=[0.5] * DIM, k=5, by_popularity=True), "queries[1].by_popularity is set with a vector"),
    (pb.SearchRequest(vector=[0.5] * DIM, k=5, filter=pb.Filter(restricts=[pb.TokenRestrict(namespace="genre")])),
     "queries[1].filter.restricts[0] (namespace 'genre') has neither allow nor deny"),
    (pb.SearchRequest(vector=[0.5] * DIM, k=5, filter=pb.Filter(
        restricts=[pb.TokenRestrict(namespace="genre", allow=["x"])])),
     "queries[1].filter namespace 'genre' is not a token namespace"),
    (pb.SearchRequest(k=5, by_popularity=True, filter=pb.Filter(
        restricts=[pb.TokenRestrict(namespace="genre", allow=["x"])])),
     "queries[1].filter namespace 'genre' is not a token namespace"),
]


@pytest.mark.parametrize("bad, message", BAD_QUERIES)
async def test_a_batch_search_refusal_names_the_query_at_fault(serve, bad, message):
    stub = await serve()
    error = await refused(stub.BatchSearch(pb.BatchSearchRequest(queries=[query(5), bad, query(5)]), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(message), \
        (error.code(), error.details())
    # A lone Search has no list to name: the same refusal, unprefixed.
    error = await refused(stub.Search(bad, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(
        message.removeprefix("queries[1].")), (error.code(), error.details())


@pytest.mark.parametrize("value", [3e38, -3e38, 1e38])
async def test_a_query_vector_whose_scores_could_overflow_float32_is_refused(serve, value):
    stub = await serve()
    # Finite float32 values; their dot products with these candidates (norms about 1 to 4) pass float32's range.
    error = await refused(stub.Search(query(5, [value] * DIM), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "float32" in error.details() and "scale it down" in error.details(), error.details()
    error = await refused(stub.BatchSearch(pb.BatchSearchRequest(queries=[query(5), query(5, [value] * DIM)]),
                                           timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("queries[1].query vector"), \
        error.details()
    # Scaled down, the same direction is answered with finite scores (dot products rank the same at any scale).
    scores = [c.score for c in (await stub.Search(query(5, [np.sign(value) * 1e30] * DIM), timeout=30)).candidates]
    assert len(scores) == 5 and np.isfinite(scores).all() and scores == sorted(scores, reverse=True), scores


async def test_the_scale_of_the_candidates_is_the_trained_ones_and_a_catalogue_outlier_refuses_no_query():
    index = long_id_index()
    scale = index.rows.trained_max_norm
    assert 1.0 < scale < 10.0  # norms of 4 standard normal values
    # An upsert of an absurd (finite) vector, as recsys-catalogue takes, leaves it, and queries are still answered:
    # a bound over every vector held would refuse them all, for a fault that is not theirs.
    outlier = np.array([[3e38, 0.0, 0.0, 0.0]], np.float32)
    index.apply_catalogue([Delta.make(np.array(["huge"]), outlier, Attributes.from_lists(1, {}, {}), np.array([]),
                                      dim=DIM)], 1)
    assert index.rows.trained_max_norm == scale
    manager: VersionManager[CandidateIndex] = VersionManager("m")
    manager.add(1, index, make_live=True)
    _, (result,) = await IndexCore(manager, ThreadPoolExecutor(1)).search([Query([1.0] * DIM, 5)], 1)
    assert len(result.ids) == 5 and result.ids[0] == "huge"


async def test_a_query_the_bound_takes_scores_finite_against_the_longest_upsert_the_publisher_takes():
    index = long_id_index()
    scale = index.rows.trained_max_norm
    direction = np.full(DIM, 1 / np.sqrt(DIM))
    longest = (direction * scale * MAX_UPSERT_SCALE * 0.999).astype(np.float32)[None]
    index.apply_catalogue([Delta.make(np.array(["long"]), longest, Attributes.from_lists(1, {}, {}), np.array([]),
                                      dim=DIM)], 1)
    manager: VersionManager[CandidateIndex] = VersionManager("m")
    manager.add(1, index, make_live=True)
    query = (direction * MAX_SCORE_BOUND / scale * 0.99).tolist()  # the longest query taken, give or take 1%
    _, (result,) = await IndexCore(manager, ThreadPoolExecutor(1)).search([Query(query, 5)], 1)
    assert result.ids[0] == "long" and np.isfinite(result.scores).all(), result.scores


async def test_a_server_binds_an_ipv6_host_given_bare_or_in_brackets():
    """"::1" alone was read as host "::1:4061" on port 443, so --admin-host ::1 could not start."""
    assert bind_address("::1", 4061) == bind_address("[::1]", 4061) == "[::1]:4061"
    assert bind_address("0.0.0.0", 1) == "0.0.0.0:1" and bind_address("unix:/tmp/s", 0) == "unix:/tmp/s"
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    manager: VersionManager[CandidateIndex] = VersionManager("m")
    manager.add(1, long_id_index(), make_live=True)
    servicer = IndexServicer(IndexCore(manager, ThreadPoolExecutor(1)), None)
    server = await start_server([ServiceSpec(pb_grpc.add_IndexServiceServicer_to_server, servicer,
                                             "recsys.v1.IndexService")], "::1", 0)
    try:
        async with grpc.aio.insecure_channel(f"[::1]:{server.port}") as channel:
            answer = await pb_grpc.IndexServiceStub(channel).Search(query(3), timeout=30)
        assert len(answer.candidates) == 3
    finally:
        await server.server.stop(0)


class LateContext:
    """A call's context whose deadline passed before its handler ran."""

    def time_remaining(self) -> float:
        return 0

    async def abort(self, code, details, metadata=()):
        raise AssertionError(f"a status ({code}: {details}) sent after gRPC's own DEADLINE_EXCEEDED")


@pytest.mark.parametrize("method, request_", [
    ("Search", pb.SearchRequest(vector=[1.0] * DIM, k=1, model_version=1)),
    ("BatchSearch", pb.BatchSearchRequest(queries=[pb.SearchRequest(vector=[1.0] * DIM, k=1, model_version=1)])),
    ("SearchSimilar", pb.SearchSimilarRequest(candidate_id=LONG_IDS[0], k=1, model_version=1)),
])
async def test_a_call_whose_deadline_passed_before_its_handler_ran_is_not_searched(method, request_):
    # Queued behind an overload, it took a search's place from a call still in time, and its answer was thrown away;
    # and a status sent after gRPC's own made gRPC log an ERROR traceback.
    manager: VersionManager[CandidateIndex] = VersionManager("m")
    manager.add(1, long_id_index(), make_live=True)
    core = IndexCore(manager, ThreadPoolExecutor(1))
    searched = []
    for name in ("search", "similar"):
        real = getattr(core, name)
        setattr(core, name, lambda *a, real=real, **kw: searched.append(1) or real(*a, **kw))
    with pytest.raises(asyncio.CancelledError):
        await getattr(IndexServicer(core, None), method)(request_, LateContext())
    assert searched == []
