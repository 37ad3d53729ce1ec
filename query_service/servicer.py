"""gRPC QueryService: proto <-> core translation only.

Recommend is registered to take the request's bytes and answer bytes
(``add_to_server``): a request whose bytes the replica answered before is
answered again from the in-process tier by those bytes (``Recommender.replay``),
with the response bytes built once per cached result, so a hit parses,
validates, keys and serializes nothing. RecommendSimilar answers bytes built
once per cached result too."""

from __future__ import annotations

from typing import Callable

import grpc

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.core.queries import SOURCE_MODEL, Recommendation, RecommendQuery
from query_service.core.recommender import Recommender
from query_service.index.index_client import RESULT_BYTES
from serving import validation
from serving.rpc.filter_protos import filter_from_proto
from serving.rpc.grpc_server import ANSWER_OVERHEAD_BYTES, add_scored, map_errors, parse_request

_SOURCES = {SOURCE_MODEL: pb.RESULT_SOURCE_MODEL}
# This layer's entries in CachedResult.rendered: the response, and its bytes.
_RENDERED = "recsys.v1.RecommendResponse"
_SERIALIZED = "recsys.v1.RecommendResponse bytes"
_SERVICE = pb.DESCRIPTOR.services_by_name["QueryService"]
_RECOMMEND = f"/{_SERVICE.full_name}/Recommend"


def _query(request: pb.RecommendRequest) -> RecommendQuery:
    # The repeated fields go as they are: the core copies what it keeps (``Recommender._check``).
    return RecommendQuery(request.customer_id, request.k, request.exclude_candidate_ids,
                          request.recent_candidate_ids, request.exclude_seen, filter_from_proto(request.filter))


class QueryServicer(pb_grpc.QueryServiceServicer):
    """``max_message_bytes``: the largest message the server sends (its --max-message-bytes); a larger answer is
    refused INVALID_ARGUMENT naming it, where gRPC would fail the call after all the work with a bare
    RESOURCE_EXHAUSTED, which reads as a load to retry."""

    def __init__(self, recommender: Recommender, max_message_bytes: int = validation.DEFAULT_MAX_MESSAGE_BYTES):
        self.recommender = recommender
        self.model = recommender.model
        self.max_message_bytes = max_message_bytes

    def _build(self, rec: Recommendation) -> pb.RecommendResponse:
        response = pb.RecommendResponse(model_version=rec.version, cache_hit=rec.cache_hit,
                                        source=_SOURCES.get(rec.source, pb.RESULT_SOURCE_POPULARITY_FALLBACK),
                                        model_name=self.model, catalogue_generation=rec.generation)
        add_scored(response.candidates, rec.ids, rec.scores)
        return response

    def _response(self, rec: Recommendation) -> pb.RecommendResponse:
        """The response of ``rec`` (for BatchRecommend); a cache hit's is built once per cached
        result and then shared by its hits (gRPC only serializes it): building it took ~20 us
        of a hit's CPU over gRPC (docs/BENCHMARKS.md)."""
        return _rendered(rec, _RENDERED, lambda: self._build(rec))

    def _serialized(self, rec: Recommendation) -> bytes:
        """``_response``'s bytes, likewise built once per cached result."""
        return _rendered(rec, _SERIALIZED, lambda: self._build(rec).SerializeToString())

    @map_errors
    async def Recommend(self, data: bytes, context) -> bytes:
        rec = self.recommender.replay(data)
        if rec is None:
            request = parse_request(pb.RecommendRequest, data, _RECOMMEND)
            rec = await self.recommender.answer(_query(request), timeout_s=context.time_remaining(), fingerprint=data)
        return self._sendable(self._serialized(rec))

    @map_errors
    async def RecommendSimilar(self, request: pb.RecommendSimilarRequest, context) -> bytes:
        rec = await self.recommender.similar(
            request.candidate_id, request.k, list(request.exclude_candidate_ids),
            filter_from_proto(request.filter), timeout_s=context.time_remaining())
        return self._sendable(self._serialized(rec))

    @map_errors
    async def BatchRecommend(self, request: pb.BatchRecommendRequest, context) -> pb.BatchRecommendResponse:
        # Before the items' filters are parsed: a batch too big is refused as such, not for its first bad item.
        validation.check_batch_requests(len(request.requests), self.recommender.max_batch_requests)
        queries = []
        for i, item in enumerate(request.requests):
            with validation.item("requests", i):
                queries.append(_query(item))
        version, recs = await self.recommender.recommend_batch(queries, timeout_s=context.time_remaining())
        response = pb.BatchRecommendResponse(responses=[self._response(rec) for rec in recs], model_version=version)
        validation.check_sendable(response, sum(len(rec.ids) * RESULT_BYTES + ANSWER_OVERHEAD_BYTES for rec in recs),
                                  self.max_message_bytes, "split the batch or lower k")
        return response

    def _sendable(self, data: bytes) -> bytes:
        """A single answer's ``data``, if the server may send it."""
        validation.check_answer_size(len(data), self.max_message_bytes, "lower k")
        return data

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


def _rendered(rec: Recommendation, name: str, build: Callable[[], object]):
    """What ``build`` makes of ``rec``, kept under ``name`` in a cached result's ``rendered``."""
    if rec.rendered is None:
        return build()
    made = rec.rendered.get(name)
    if made is None:
        made = rec.rendered[name] = build()
    return made


def add_to_server(servicer: QueryServicer, server: grpc.aio.Server) -> None:
    """Registers ``servicer`` as ``add_QueryServiceServicer_to_server`` does, but
    with Recommend taking the request's bytes and answering bytes, and
    RecommendSimilar answering bytes (see the module docstring)."""
    handlers = {method.name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, method.name), request_deserializer=getattr(pb, method.input_type.name).FromString,
        response_serializer=getattr(pb, method.output_type.name).SerializeToString) for method in _SERVICE.methods}
    handlers["Recommend"] = grpc.unary_unary_rpc_method_handler(servicer.Recommend)  # bytes in, bytes out
    handlers["RecommendSimilar"] = grpc.unary_unary_rpc_method_handler(
        servicer.RecommendSimilar, request_deserializer=pb.RecommendSimilarRequest.FromString)  # bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
