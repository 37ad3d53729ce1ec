"""gRPC QueryService: proto <-> core translation only."""

from __future__ import annotations

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.recommender import SOURCE_MODEL, Recommendation, Recommender, RecommendQuery
from serving import validation
from serving.filters import filter_from_proto
from serving.grpc_server import add_scored, map_errors

_SOURCES = {SOURCE_MODEL: pb.RESULT_SOURCE_MODEL}
_RENDERED = "recsys.v1.RecommendResponse"  # this layer's entry in CachedResult.rendered


def _query(request: pb.RecommendRequest) -> RecommendQuery:
    # The repeated fields go as they are: the core copies what it keeps (``Recommender._check``).
    return RecommendQuery(request.customer_id, request.k, request.exclude_candidate_ids,
                          request.recent_candidate_ids, request.exclude_seen, filter_from_proto(request.filter))


class QueryServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.model = recommender.model

    def _response(self, rec: Recommendation) -> pb.RecommendResponse:
        """The response of ``rec``; a cache hit's is built once per cached result and then
        shared by its hits (gRPC only serializes it): building it took ~20 us of a hit's
        CPU over gRPC (docs/BENCHMARKS.md)."""
        if rec.rendered is not None and (response := rec.rendered.get(_RENDERED)) is not None:
            return response
        response = pb.RecommendResponse(model_version=rec.version, cache_hit=rec.cache_hit,
                                        source=_SOURCES.get(rec.source, pb.RESULT_SOURCE_POPULARITY_FALLBACK),
                                        model_name=self.model, catalogue_generation=rec.generation)
        add_scored(response.candidates, rec.ids, rec.scores)
        if rec.rendered is not None:
            rec.rendered[_RENDERED] = response
        return response

    @map_errors
    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        return self._response(await self.recommender.answer(_query(request), timeout_s=context.time_remaining()))

    @map_errors
    async def RecommendSimilar(self, request: pb.RecommendSimilarRequest, context) -> pb.RecommendResponse:
        rec = await self.recommender.similar(
            request.candidate_id, request.k, list(request.exclude_candidate_ids),
            filter_from_proto(request.filter), timeout_s=context.time_remaining())
        return self._response(rec)

    @map_errors
    async def BatchRecommend(self, request: pb.BatchRecommendRequest, context) -> pb.BatchRecommendResponse:
        queries = []
        for i, item in enumerate(request.requests):
            with validation.item("requests", i):
                queries.append(_query(item))
        version, recs = await self.recommender.recommend_batch(queries, timeout_s=context.time_remaining())
        return pb.BatchRecommendResponse(responses=[self._response(rec) for rec in recs], model_version=version)

    @map_errors
    async def RecordInteractions(self, request: pb.RecordInteractionsRequest,
                                 context) -> pb.RecordInteractionsResponse:
        length = await self.recommender.record_interactions(request.customer_id, list(request.candidate_ids))
        return pb.RecordInteractionsResponse(history_length=length)

    @map_errors
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        embedding = await self.recommender.embed(request.customer_id)
        return pb.EmbedResponse(embedding=embedding.vector.tolist(), model_version=embedding.version,
                                known_customer=embedding.known, model_name=self.model)
