"""Client of the index service, as the query service's core sees it: a search
pinned to a version, with a deadline, whose gRPC failures become domain errors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import numpy as np

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import errors

_CODE_TO_ERROR = {
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
}


@dataclass(frozen=True)
class IndexQuery:
    vector: np.ndarray
    k: int
    exclusions: frozenset[str]


@dataclass(frozen=True)
class IndexHits:
    ids: list[str]
    scores: list[float]


class IndexClient:
    """gRPC client of IndexService. One channel, reused; safe for one event loop."""

    def __init__(self, address: str, timeout_s: float = 1.0):
        self.address = address
        self.timeout_s = timeout_s
        # Short reconnect backoff: after an index outage the query service should
        # notice the index is back within seconds, not gRPC's default of minutes.
        # round_robin spreads calls over every replica a name resolves to (e.g.
        # dns:///index-service:50051 with several index replicas behind it).
        self._channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_receive_message_length", 16 << 20),
        ])
        self._stub = pb_grpc.IndexServiceStub(self._channel)

    async def search(self, queries: list[IndexQuery], version: int) -> list[IndexHits]:
        """Searches all queries in ``version``; one RPC whatever the batch size."""
        requests = [pb.SearchRequest(vector=q.vector.tolist(), k=q.k, model_version=version,
                                     exclude_candidate_ids=sorted(q.exclusions)) for q in queries]
        try:
            if len(requests) == 1:
                responses = [await self._stub.Search(requests[0], timeout=self.timeout_s)]
            else:
                batch = await self._stub.BatchSearch(pb.BatchSearchRequest(queries=requests), timeout=self.timeout_s)
                responses = list(batch.results)
        except grpc.aio.AioRpcError as e:
            error = _CODE_TO_ERROR.get(e.code(), errors.ServingError)
            raise error(f"index service at {self.address}: {e.code().name}: {e.details()}") from e
        for response in responses:
            if response.model_version != version:
                raise errors.FailedPrecondition(
                    f"index service answered version {response.model_version} to a query for version {version}")
        return [IndexHits([c.candidate_id for c in r.candidates], [c.score for c in r.candidates])
                for r in responses]

    async def close(self) -> None:
        await self._channel.close()
