"""gRPC QueryService: proto <-> core translation only."""

from __future__ import annotations

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.recommender import SOURCE_MODEL, Recommender
from serving.grpc_server import map_errors

_SOURCES = {SOURCE_MODEL: pb.RESULT_SOURCE_MODEL}


class QueryServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.model = recommender.model

    @map_errors
    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        rec = await self.recommender.recommend(request.customer_id, request.k, list(request.exclude_candidate_ids),
                                               list(request.recent_candidate_ids), request.exclude_seen,
                                               timeout_s=context.time_remaining())
        return pb.RecommendResponse(
            candidates=[pb.ScoredCandidate(candidate_id=i, score=s) for i, s in zip(rec.ids, rec.scores)],
            model_version=rec.version,
            cache_hit=rec.cache_hit,
            source=_SOURCES.get(rec.source, pb.RESULT_SOURCE_POPULARITY_FALLBACK),
            model_name=self.model,
        )

    @map_errors
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        embedding = await self.recommender.embed(request.customer_id)
        return pb.EmbedResponse(embedding=embedding.vector.tolist(), model_version=embedding.version,
                                known_customer=embedding.known, model_name=self.model)
