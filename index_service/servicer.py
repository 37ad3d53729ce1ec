"""gRPC IndexService: proto <-> core translation, and answers kept within the message limit."""

from __future__ import annotations

import functools
import math
from typing import Sequence

from google.protobuf.message import Message

from index_service.core import Answer, IndexCore, Query
from index_service.searcher import SearchResult
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import validation
from serving.errors import DeadlineExceeded, InvalidArgument
from serving.lifecycle.admin import VersionAdmin
from serving.rpc.admin_rpc import version_protos
from serving.rpc.filter_protos import filter_from_proto
from serving.rpc.grpc_server import ANSWER_OVERHEAD_BYTES, add_scored, map_errors, result_bytes

# Crowding token lists kept serialized (~190 bytes each, its key included): an answer's are parsed from their
# bytes at a fifth of the CPU of a message added per result (MovieLens's 1,682 films hold 216 distinct genre lists),
# while a list not kept costs three times as much.
_CROWDING_KEPT = 65_536


def _query(request: pb.SearchRequest) -> Query:
    return Query(vector=request.vector, k=request.k, exclusions=tuple(request.exclude_candidate_ids),
                 filter=filter_from_proto(request.filter), by_popularity=request.by_popularity)


def _response(result: SearchResult, answer: Answer, model: str,
              response: pb.SearchResponse | None = None) -> pb.SearchResponse:
    """``result`` as a SearchResponse: ``response`` (a batch's ``results.add()``, so it is not copied), or a new one."""
    response = pb.SearchResponse() if response is None else response
    response.model_version, response.model_name = answer.version, model
    response.catalogue_generation, response.catalogue_changing = answer.generation, answer.changing
    add_scored(response.candidates, result.ids, result.scores)
    if result.crowding is not None:
        # Serialized messages concatenated parse as one merged message: each list is appended, in order.
        response.MergeFromString(b"".join(map(_crowding_bytes, result.crowding)))
    return response


@functools.lru_cache(maxsize=_CROWDING_KEPT)
def _crowding_bytes(tokens: tuple[str, ...]) -> bytes:
    """A SearchResponse holding only one result's crowding ``tokens``, serialized."""
    return pb.SearchResponse(crowding=[pb.CrowdingTokens(tokens=tokens)]).SerializeToString()


def _in_time(context) -> None:
    """DeadlineExceeded for a call whose deadline passed while it waited for its handler (queued behind an
    overload): its answer would be thrown away, after taking a search's place from a call still in time (at twice
    an index's capacity, half of its OK answers reached their callers too late)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the index began its search (it waited behind "
                               "others): give it a longer deadline, or add index replicas")


class IndexServicer(pb_grpc.IndexServiceServicer):
    """``max_message_bytes``: the largest message the server sends (its --max-message-bytes); a larger answer is
    refused INVALID_ARGUMENT naming it, where gRPC would fail the call after all the work with a bare
    RESOURCE_EXHAUSTED, which reads as a load to shed and retry."""

    def __init__(self, core: IndexCore, admin: VersionAdmin,
                 max_message_bytes: int = validation.DEFAULT_MAX_MESSAGE_BYTES):
        self.core = core
        self.admin = admin
        self.model = core.manager.model
        self.max_message_bytes = max_message_bytes

    @map_errors
    async def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        _in_time(context)
        answer, results = await self.core.search([_query(request)], request.model_version)
        return self._sendable(_response(results[0], answer, self.model), answer, results, "lower k")

    @map_errors
    async def SearchSimilar(self, request: pb.SearchSimilarRequest, context) -> pb.SearchResponse:
        _in_time(context)
        answer, result = await self.core.similar(request.candidate_id, request.k,
                                                 tuple(request.exclude_candidate_ids),
                                                 filter_from_proto(request.filter), request.model_version)
        response = _response(result, answer, self.model)
        if request.return_vector:
            response.query_vector.extend(result.vector.tolist())
        return self._sendable(response, answer, [result], "lower k", len(response.query_vector))

    @map_errors
    async def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        _in_time(context)
        self.core.check_batch([q.k for q in request.queries])  # before translating a batch too big to serve
        versions = {q.model_version for q in request.queries}
        if len(versions) > 1:
            raise InvalidArgument(
                f"queries name different model versions {sorted(versions)}: one batch searches one version"
            )
        queries = []
        for i, query in enumerate(request.queries):
            with validation.item("queries", i):
                queries.append(_query(query))
        # One version: check_batch refused an empty batch, and several versions are refused above.
        answer, results = await self.core.search(queries, versions.pop(), "queries")
        response = pb.BatchSearchResponse(model_version=answer.version, catalogue_generation=answer.generation)
        for result in results:
            _response(result, answer, self.model, response.results.add())
        return self._sendable(response, answer, results, "split the batch or lower k")

    def _sendable(self, response: Message, answer: Answer, results: Sequence[SearchResult], remedy: str,
                  vector_values: int = 0) -> Message:
        """``response`` (of ``results``, and a vector of ``vector_values`` values), if the server may send it;
        else InvalidArgument naming its size, the limit and ``remedy``."""
        bound = math.inf  # crowding tokens, or ids of no known width: sized exactly
        if answer.id_chars is not None and not any(r.crowding for r in results):
            bound = (sum(len(r.ids) for r in results) * result_bytes(4 * answer.id_chars)  # up to 4 bytes a character
                     + len(results) * ANSWER_OVERHEAD_BYTES + 4 * vector_values)
        validation.check_sendable(response, bound, self.max_message_bytes, remedy)
        return response

    async def WatchStatus(self, request: pb.WatchStatusRequest, context):
        # Counted in the admin status (status_watchers) until the stream ends: drained, or its watcher gone.
        with self.admin.watched():
            async for _ in self.core.changes():
                report = self.admin.status()
                shard, shards = self.core.shard()
                yield pb.IndexStatus(model_name=report.model, slot=report.slot,
                                     versions=version_protos(report.versions), keepalive_s=self.core.keepalive_s,
                                     shard=shard, shards=shards)
