"""Answers against the data plane's message limit (``--max-message-bytes``): a
BatchRecommend at the documented limits (256 requests, k = 1000, ids of 256
bytes) can be far larger than the limit, and so can one index search call
of many misses at k = 1000. Real gRPC over loopback, in process, with the
query core over the tiny versions' tower."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.core.recommender import Recommender
from query_service.index import index_client
from query_service.servicer import QueryServicer, add_to_server
from serving import validation
from serving.errors import InvalidArgument
from serving.rpc.grpc_server import ServiceSpec, start_server
from serving.rpc.tls import CLIENT_OPTIONS
from tests.unit import tiny_versions as tiny
from tests.unit.test_query_paths import ExactIndex, replica, tiny_model  # noqa: F401 - tiny_model: a fixture

# 1,000 candidates whose ids take the most bytes an id may: a k = 1000 answer is ~266 KB.
LONG_IDS = [f"{i:04d}".ljust(validation.MAX_ID_BYTES, "x") for i in range(1000)]


def long_id_index() -> ExactIndex:
    return ExactIndex(LONG_IDS, np.random.default_rng(0).normal(size=(len(LONG_IDS), tiny.DIM)).astype(np.float32))


async def serve(recommender: Recommender, max_message_bytes: int = validation.DEFAULT_MAX_MESSAGE_BYTES):
    return await start_server([ServiceSpec(add_to_server, QueryServicer(recommender, max_message_bytes),
                                           "recsys.v1.QueryService")], "127.0.0.1", 0, max_message_bytes)


async def test_a_batch_answer_over_the_message_limit_is_refused_naming_the_limit_and_its_halves_are_answered(
        tiny_model):  # noqa: F811 - the fixture imported above
    recommender = replica(tiny_model, long_id_index())
    server = await serve(recommender)
    # 64 requests at k = 1000: ~17 MB of answer, over the default 16 MiB.
    batch = pb.BatchRecommendRequest(requests=[pb.RecommendRequest(customer_id=str(customer), k=1000)
                                               for customer in tiny.CUSTOMERS.tolist() * 4][:64])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=list(CLIENT_OPTIONS.items())) \
                as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            try:
                await stub.BatchRecommend(batch, timeout=30)
                raise AssertionError("a BatchRecommend answer over the message limit was sent")
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                assert f"{validation.DEFAULT_MAX_MESSAGE_BYTES:,}" in e.details() and "split the batch" in e.details()
            # Half of it fits, and each half is answered in full.
            for half in (batch.requests[:32], batch.requests[32:]):
                answer = await stub.BatchRecommend(pb.BatchRecommendRequest(requests=half), timeout=30)
                assert [len(r.candidates) for r in answer.responses] == [1000] * 32
    finally:
        await server.server.stop(0)
        await recommender.close()


async def test_a_single_answer_over_a_lowered_message_limit_is_refused_naming_it(tiny_model):  # noqa: F811
    recommender = replica(tiny_model, long_id_index())
    server = await serve(recommender, 1 << 16)  # the least --max-message-bytes: under a k = 1000 answer
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            for call in (stub.Recommend(pb.RecommendRequest(customer_id="c001", k=1000), timeout=30),
                         stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=LONG_IDS[0], k=1000),
                                               timeout=30)):
                try:
                    await call
                    raise AssertionError("an answer over the message limit was sent")
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                    assert "65,536" in e.details() and "lower k" in e.details()
            answer = await stub.Recommend(pb.RecommendRequest(customer_id="c001", k=200), timeout=30)
            assert len(answer.candidates) == 200
    finally:
        await server.server.stop(0)
        await recommender.close()


def test_no_index_search_call_can_answer_over_the_message_limit():
    # 100 misses at k = 1000 fit the index's batch bounds (100,000 results), not its message limit with long ids.
    requests = [pb.SearchRequest(vector=[0.0] * tiny.DIM, k=1000, model_version=1) for _ in range(100)]
    parts = index_client._parts(requests)
    assert [r for part in parts for r in part] == requests
    longest = pb.SearchResponse(candidates=[pb.ScoredCandidate(candidate_id=LONG_IDS[0], score=1.0)]).ByteSize()
    for part in parts:
        assert len(part) * 1000 * longest < validation.DEFAULT_MAX_MESSAGE_BYTES, [len(p) for p in parts]


@pytest.mark.parametrize("ks, bound", [([1] * 5, ("queries", 4)), ([100] * 3, ("results", 250))])
def test_a_batch_refusal_names_the_bound_it_passed_to_a_caller_that_splits(ks, bound):
    with pytest.raises(InvalidArgument) as refused:
        validation.check_batch(ks, 4, 250)
    assert validation.refused_batch_bound(str(refused.value)) == bound
    assert validation.refused_batch_bound("query vector has 3 dimensions; model version 1 embeds into 4") is None
