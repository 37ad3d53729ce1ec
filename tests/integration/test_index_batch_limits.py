"""The bounds of one index search call. An index slot started with batch bounds
lower than the defaults (``--max-batch-queries``, ``--max-batch-results``)
refuses a search call over them whole; the query service, which batches misses
at the defaults, must still answer every miss. And an answer of many results
with ids of 256 bytes must stay under the message limit. Real processes:
recsys-train, an index slot, a query replica (conftest.long_ids_version: the long ids)."""

from __future__ import annotations

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.index.index_client import IndexEndpoint
from query_service.index.searches import IndexQuery
from serving import validation
from tests.integration.conftest import VersionOracle, index_slot, overlap, query_replica
from tests.processes import start_all



@pytest.mark.parametrize("bounds", [("--max-batch-queries", "4"), ("--max-batch-results", "1000")])
def test_misses_are_answered_by_an_index_with_batch_bounds_below_the_defaults(trained_registry, tmp_path, bounds):
    index = index_slot(trained_registry, "blue", tmp_path / "index.log", *bounds)
    query = query_replica(trained_registry, [index], tmp_path / "query.log", "--local-cache-mb", "0",
                          "--max-batch-size", "64")
    start_all(index, query)
    oracle = VersionOracle(trained_registry / "itest" / "1")
    try:
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            customers = [c for c in (f"c{i:06d}" for i in range(64))  # the synthetic data set's ids
                         if stub.Embed(pb.EmbedRequest(customer_id=c), timeout=10).known_customer][:16]
            # One call of 16 misses at k = 100: 16 queries and 1,600 results in one search, over either bound.
            batch = stub.BatchRecommend(pb.BatchRecommendRequest(
                requests=[pb.RecommendRequest(customer_id=c, k=100) for c in customers]), timeout=30)
            for customer, response in zip(customers, batch.responses):
                assert response.source == pb.RESULT_SOURCE_MODEL
                assert overlap([c.candidate_id for c in response.candidates], oracle.top_k(customer, 100)) >= 0.9
    finally:
        query.stop()
        index.stop()


async def test_misses_at_k_1000_with_the_longest_ids_are_answered_within_the_message_limit(long_ids_version,
                                                                                           tmp_path):
    root, vector = long_ids_version  # 1,000 candidates whose ids take the most bytes an id may, nearest to vector
    index = index_slot(root, "blue", tmp_path / "index.log").start()
    endpoint = IndexEndpoint(index.address)
    try:
        # 64 misses at k = 1000 (a warm-up batch, or --max-batch-size 64): 17 MB of answer in one call.
        hits = await endpoint.search([IndexQuery(vector, 1000, frozenset(), min_generation=1)] * 64, 1, 60)
        assert [len(h.ids) for h in hits] == [1000] * 64
        assert all(len(i) == validation.MAX_ID_BYTES for h in hits for i in h.ids)
    finally:
        await endpoint.close()
        index.stop()
