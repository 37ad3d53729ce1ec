"""gRPC IndexService: proto <-> core translation only."""

from __future__ import annotations

from index_service.core import Answer, IndexCore, Query
from index_service.searcher import SearchResult
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.admin import VersionAdmin
from serving.admin_rpc import version_protos
from serving.errors import InvalidArgument
from serving.filters import filter_from_proto
from serving.grpc_server import add_scored, map_errors


def _query(request: pb.SearchRequest) -> Query:
    return Query(vector=request.vector, k=request.k, exclusions=tuple(request.exclude_candidate_ids),
                 filter=filter_from_proto(request.filter), by_popularity=request.by_popularity)


def _response(result: SearchResult, answer: Answer, model: str,
              response: pb.SearchResponse | None = None) -> pb.SearchResponse:
    """``result`` as a SearchResponse: ``response`` (a batch's ``results.add()``, so it is not copied), or a new one."""
    response = pb.SearchResponse() if response is None else response
    response.model_version, response.model_name = answer.version, model
    response.catalogue_generation = answer.generation
    add_scored(response.candidates, result.ids, result.scores)
    if result.crowding is not None:
        for tokens in result.crowding:
            response.crowding.add(tokens=tokens)
    return response


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, core: IndexCore, admin: VersionAdmin):
        self.core = core
        self.admin = admin
        self.model = core.manager.model

    @map_errors
    async def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        answer, results = await self.core.search([_query(request)], request.model_version)
        return _response(results[0], answer, self.model)

    @map_errors
    async def SearchSimilar(self, request: pb.SearchSimilarRequest, context) -> pb.SearchResponse:
        answer, result = await self.core.similar(request.candidate_id, request.k,
                                                 tuple(request.exclude_candidate_ids),
                                                 filter_from_proto(request.filter), request.model_version)
        response = _response(result, answer, self.model)
        if request.return_vector:
            response.query_vector.extend(result.vector.tolist())
        return response

    @map_errors
    async def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        self.core.check_batch([q.k for q in request.queries])  # before translating a batch too big to serve
        versions = {q.model_version for q in request.queries}
        if len(versions) > 1:
            raise InvalidArgument(
                f"queries name different model versions {sorted(versions)}: one batch searches one version"
            )
        answer, results = await self.core.search([_query(q) for q in request.queries],
                                                 versions.pop() if versions else 0)
        response = pb.BatchSearchResponse(model_version=answer.version, catalogue_generation=answer.generation)
        for result in results:
            _response(result, answer, self.model, response.results.add())
        return response

    async def WatchStatus(self, request: pb.WatchStatusRequest, context):
        async for _ in self.core.changes():
            report = self.admin.status()
            shard, shards = self.core.shard()
            yield pb.IndexStatus(model_name=report.model, slot=report.slot, versions=version_protos(report.versions),
                                 keepalive_s=self.core.keepalive_s, shard=shard, shards=shards)
