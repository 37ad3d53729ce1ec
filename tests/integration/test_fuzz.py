"""Property-based fuzzing of every data-plane RPC against the real servers:
whatever a caller sends, the answer is a documented status (never UNKNOWN or
INTERNAL), an OK answer keeps the request's promises (at most k results, none
excluded), the servers stay up and their memory stays bounded."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.common import rss_mb
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.processes import is_serving

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}

ids = st.one_of(st.text(max_size=300), st.sampled_from(["c000001", "c000002", "i0001", ""]))
id_lists = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["i0001", "i0002", "c000001"])), max_size=20)
ks = st.one_of(st.integers(-3, 1100), st.sampled_from([-(2 ** 31), 2 ** 31 - 1]))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


def outcome(call, request):
    """(code, response or None) of one call; a status outside the documented ones fails the test."""
    try:
        return grpc.StatusCode.OK, call(request, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in DOCUMENTED, f"{e.code().name}: {e.details()} for {request!r}"[:2000]
        return e.code(), None


@pytest.fixture(scope="module")
def stubs(query_service, index_service):
    memory = {s.proc.pid: rss_mb(s.proc.pid)["rss_mb"] for s in (query_service, index_service)}
    with grpc.insecure_channel(query_service.address) as q, grpc.insecure_channel(index_service.address) as i:
        yield pb_grpc.QueryServiceStub(q), pb_grpc.IndexServiceStub(i), q, i
    for service in (query_service, index_service):
        assert is_serving(service.address), f"{service.script} is down after the fuzzing"
        grown = rss_mb(service.proc.pid)["rss_mb"] - memory[service.proc.pid]
        assert grown < 300, f"{service.script} grew {grown:.0f} MB under fuzzing"


@FUZZ
@given(customer=ids, k=ks, exclude=id_lists, recent=id_lists, exclude_seen=st.booleans())
def test_recommend(stubs, customer, k, exclude, recent, exclude_seen):
    query, *_ = stubs
    request = pb.RecommendRequest(customer_id=customer, k=k, exclude_candidate_ids=exclude,
                                  recent_candidate_ids=recent, exclude_seen=exclude_seen)
    code, response = outcome(query.Recommend, request)
    if code is grpc.StatusCode.OK:
        got = [c.candidate_id for c in response.candidates]
        assert 0 < len(got) <= k and not set(got) & set(exclude) and len(set(got)) == len(got)


@FUZZ
@given(customer=ids)
def test_embed(stubs, customer):
    query, *_ = stubs
    outcome(query.Embed, pb.EmbedRequest(customer_id=customer))


def search_requests(max_dim: int = 20):
    return st.builds(pb.SearchRequest, vector=st.lists(floats, max_size=max_dim), k=ks,
                     model_version=st.integers(-2, 4), exclude_candidate_ids=id_lists)


@FUZZ
@given(request=search_requests())
def test_search(stubs, request):
    _, index, *_ = stubs
    code, response = outcome(index.Search, request)
    if code is grpc.StatusCode.OK:
        got = [c.candidate_id for c in response.candidates]
        assert len(got) <= request.k and not set(got) & set(request.exclude_candidate_ids)


@FUZZ
@given(queries=st.lists(search_requests(), max_size=6))
def test_batch_search(stubs, queries):
    _, index, *_ = stubs
    code, response = outcome(index.BatchSearch, pb.BatchSearchRequest(queries=queries))
    if code is grpc.StatusCode.OK:
        assert len(response.results) == len(queries)


@FUZZ
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes(stubs, payload):
    _, _, query_channel, index_channel = stubs
    for channel, method in ((query_channel, "/recsys.v1.QueryService/Recommend"),
                            (index_channel, "/recsys.v1.IndexService/BatchSearch")):
        outcome(channel.unary_unary(method), payload)  # raw bytes in, raw bytes out
