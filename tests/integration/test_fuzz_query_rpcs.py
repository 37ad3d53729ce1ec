"""Property-based fuzzing of the query service's catalogue RPCs (filters on
Recommend, RecommendSimilar, BatchRecommend, RecordInteractions) against the
real servers, as test_fuzz.py does for the others: only documented statuses,
OK answers keep the request's promises, the servers stay up and bounded."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.recsys.v1 import retrieval_pb2 as pb
from tests.integration.test_fuzz import FUZZ, floats, id_lists, ids, ks, stubs  # noqa: F401 (stubs: a fixture)

pytestmark = pytest.mark.integration

FEWER = settings(FUZZ, max_examples=40)
namespaces = st.one_of(st.text(max_size=300), st.sampled_from(["", "genre", "year"]))
bounds = st.one_of(st.none(), floats)


def numeric_range(namespace: str, low: float | None, high: float | None) -> pb.NumericRange:
    return pb.NumericRange(namespace=namespace, **({"min": low} if low is not None else {}),
                           **({"max": high} if high is not None else {}))


filters = st.builds(pb.Filter,
                    restricts=st.lists(st.builds(pb.TokenRestrict, namespace=namespaces, allow=id_lists,
                                                 deny=id_lists), max_size=3),
                    ranges=st.lists(st.builds(numeric_range, namespaces, bounds, bounds), max_size=3),
                    crowding_namespace=namespaces, max_per_value=st.integers(-2, 5))
recommend_requests = st.builds(pb.RecommendRequest, customer_id=ids, k=ks, exclude_candidate_ids=id_lists,
                               exclude_seen=st.booleans(), filter=st.one_of(st.none(), filters))


def outcome(call, request, documented=frozenset({grpc.StatusCode.INVALID_ARGUMENT})):
    """(code, response or None) of one call; a status outside ``documented`` fails the test."""
    try:
        return grpc.StatusCode.OK, call(request, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in documented, f"{e.code().name}: {e.details()} for {request!r}"[:2000]
        return e.code(), None


def keeps_its_promises(response, k, excluded=()) -> bool:
    got = [c.candidate_id for c in response.candidates]
    return len(got) <= k and not set(got) & set(excluded) and len(set(got)) == len(got)


@FEWER
@given(request=recommend_requests)
def test_recommend_with_a_filter(stubs, request):
    query, *_ = stubs
    code, response = outcome(query.Recommend, request)
    if code is grpc.StatusCode.OK:
        assert keeps_its_promises(response, request.k, request.exclude_candidate_ids)


@FEWER
@given(candidate=st.one_of(ids, st.sampled_from(["i000001", "i000002"])), k=ks, exclude=id_lists,
       f=st.one_of(st.none(), filters))
def test_recommend_similar(stubs, candidate, k, exclude, f):
    query, *_ = stubs
    request = pb.RecommendSimilarRequest(candidate_id=candidate, k=k, exclude_candidate_ids=exclude, filter=f)
    code, response = outcome(query.RecommendSimilar, request,
                             {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
    if code is grpc.StatusCode.OK:
        assert keeps_its_promises(response, k, [*exclude, candidate])


@FEWER
@given(requests=st.lists(recommend_requests, max_size=5))
def test_batch_recommend(stubs, requests):
    query, *_ = stubs
    code, response = outcome(query.BatchRecommend, pb.BatchRecommendRequest(requests=requests))
    if code is grpc.StatusCode.OK:
        assert len(response.responses) == len(requests) > 0
        assert all(keeps_its_promises(r, q.k, q.exclude_candidate_ids) for q, r in zip(requests, response.responses))


@FEWER
@given(customer=ids, candidates=st.one_of(id_lists, st.lists(st.just("i000001"), min_size=95, max_size=110)))
def test_record_interactions(stubs, customer, candidates):
    query, *_ = stubs
    code, response = outcome(query.RecordInteractions,
                             pb.RecordInteractionsRequest(customer_id=customer, candidate_ids=candidates))
    if code is grpc.StatusCode.OK:
        assert 1 <= response.history_length <= 100


@FEWER
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes(stubs, payload):
    _, _, query_channel, _ = stubs
    for method in ("RecommendSimilar", "BatchRecommend", "RecordInteractions"):
        outcome(query_channel.unary_unary(f"/recsys.v1.QueryService/{method}"), payload)
