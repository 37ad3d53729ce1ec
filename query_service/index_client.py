"""One index endpoint as the query service sees it: a channel, the versions the
endpoint says it holds (its status stream), and searches pinned to a version
whose gRPC failures become domain errors."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from serving import errors
from serving.tls import ClientTls

log = logging.getLogger(__name__)

# The query service validated the caller's request before searching, so an index
# INVALID_ARGUMENT means the services disagree (limits, dims), not a bad caller;
# an overloaded or cancelled index is worth a retry elsewhere.
_CODE_TO_ERROR = {
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: errors.FailedPrecondition,
}
# States in which an endpoint answers searches pinned to a version.
SEARCHABLE = frozenset({versions_pb2.VERSION_STATE_READY, versions_pb2.VERSION_STATE_SERVING})
# An endpoint silent for this many of its keepalive periods is taken as gone (hung or partitioned).
MISSED_KEEPALIVES = 3
# Reconnect backoff of a broken status stream: short, so a restarted slot rejoins within seconds.
RECONNECT_S = (0.2, 2.0)


@dataclass(frozen=True)
class IndexQuery:
    vector: np.ndarray
    k: int
    exclusions: frozenset[str]


@dataclass(frozen=True)
class IndexHits:
    ids: list[str]
    scores: list[float]


def error_for(e: grpc.aio.AioRpcError, address: str) -> errors.ServingError:
    """The domain error of a failed index call. Its message is for the query
    service's caller, so it names no address: the log does."""
    log.debug("index call to %s failed: %s: %s", address, e.code().name, e.details())
    return _CODE_TO_ERROR.get(e.code(), errors.ServingError)(f"index search failed: {e.code().name}: {e.details()}")


class IndexEndpoint:
    """One index endpoint (a slot process). ``versions`` is what its status
    stream last said it holds, empty while the endpoint is unreachable or
    silent. Safe for one event loop."""

    def __init__(self, address: str, tls: ClientTls = ClientTls()):
        self.address = address
        self.slot = ""
        self.versions: dict[int, int] = {}  # version -> VersionState
        self._channel = tls.aio_channel(address, options=[
            # Reconnect fast after an outage: the default backoff grows to minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_receive_message_length", 16 << 20),
        ])
        self._stub = pb_grpc.IndexServiceStub(self._channel)

    def holds(self, version: int) -> bool:
        return self.versions.get(version) in SEARCHABLE

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]:
        """Searches all queries in ``version`` within ``timeout_s``; one RPC whatever the batch size."""
        requests = [pb.SearchRequest(vector=q.vector.tolist(), k=q.k, model_version=version,
                                     exclude_candidate_ids=sorted(q.exclusions)) for q in queries]
        try:
            if len(requests) == 1:
                responses = [await self._stub.Search(requests[0], timeout=timeout_s)]
            else:
                batch = await self._stub.BatchSearch(pb.BatchSearchRequest(queries=requests), timeout=timeout_s)
                responses = list(batch.results)
        except grpc.aio.AioRpcError as e:
            raise error_for(e, self.address) from e
        for response in responses:
            if response.model_version != version:
                raise errors.FailedPrecondition(f"an index endpoint answered version {response.model_version} "
                                                f"to a query for version {version}")
        return [IndexHits([c.candidate_id for c in r.candidates], [c.score for c in r.candidates])
                for r in responses]

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Follows the endpoint's status stream until cancelled, reconnecting with
        backoff; ``on_change()`` after every update. While the stream is down or
        silent for ``MISSED_KEEPALIVES`` keepalives, the endpoint holds nothing."""
        backoff = RECONNECT_S[0]
        while True:
            call = self._stub.WatchStatus(pb.WatchStatusRequest())
            silence_s = 5.0
            try:
                while True:
                    status = await asyncio.wait_for(call.read(), silence_s)
                    if status is grpc.aio.EOF:
                        break
                    silence_s = MISSED_KEEPALIVES * max(status.keepalive_s, 0.1)
                    self._update(status.slot, {v.version: v.state for v in status.versions}, on_change)
                    backoff = RECONNECT_S[0]
            except asyncio.TimeoutError:
                log.warning("index endpoint %s silent for %.1fs: routing around it", self.address, silence_s)
            except grpc.aio.AioRpcError as e:
                if self.versions:
                    log.warning("index endpoint %s lost (%s): routing around it", self.address, e.code().name)
            finally:
                call.cancel()
            self._update(self.slot, {}, on_change)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, RECONNECT_S[1])

    def _update(self, slot: str, versions: dict[int, int], on_change: Callable[[], None]) -> None:
        if versions != self.versions or slot != self.slot:
            self.slot, self.versions = slot, versions
            log.info("index endpoint %s (slot %s) holds %s", self.address, slot or "?",
                     {v: versions_pb2.VersionState.Name(s).removeprefix("VERSION_STATE_") for v, s in versions.items()})
            on_change()

    async def close(self) -> None:
        await self._channel.close()
