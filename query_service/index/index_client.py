"""One index endpoint as the query service sees it: a channel, the versions the
endpoint says it holds and the catalogue generation of each (its status
stream), and searches pinned to a version whose gRPC failures become domain
errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import grpc
import numpy as np
import prometheus_client

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.index.searches import IndexHits, IndexQuery, OverMaxK, SimilarQuery, TimedOut
from serving import errors, validation
from serving.lifecycle.versions import State
from serving.rpc.admin_rpc import state_name, version_state
from serving.rpc.filter_protos import filter_to_proto
from serving.rpc.grpc_server import result_bytes
from serving.rpc.tls import ClientTls, tls_hint
from serving.telemetry.log_throttle import LogThrottle
from serving.telemetry.observability import LATENCY_BUCKETS, outgoing_metadata

log = logging.getLogger(__name__)

# The query service validated the caller's request before searching, so an index
# INVALID_ARGUMENT means the services disagree (limits, dims), not a bad caller
# (but for a k over the index's --max-k: ``OverMaxK``); an overloaded or cancelled
# index is worth a retry elsewhere.
INDEX_CALLS = prometheus_client.Histogram(
    "recsys_index_call_seconds", "A query replica's calls to index endpoints, each try (hedges and retries "
    "included), by endpoint, method and status code; CANCELLED is mostly the slower call of a hedged pair",
    ["endpoint", "method", "code"], buckets=LATENCY_BUCKETS)

_CODE_TO_ERROR = {
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: TimedOut,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: errors.FailedPrecondition,
}
# The most request bytes sent in one search call. Misses batched into one call may each carry the most
# exclusions a caller may send (10,000 ids of up to 256 bytes): in one message they would pass the index's
# receive limit (--max-message-bytes, 16 MiB) and fail every miss of the batch.
MAX_SEARCH_BYTES = 4 << 20
# The most bytes one result takes in a search's answer: an id of the most bytes an id may have, and its score.
RESULT_BYTES = result_bytes(validation.MAX_ID_BYTES)
# The most bytes of results one search call's answer may hold: the query service receives messages up to 16 MiB
# (serving.rpc.tls.CLIENT_OPTIONS), and the rest of the answer (each query's version, model and generation) needs room.
# 100,000 results of ids of 256 bytes would take 26 MB: the index fails to send it, and every miss of the call fails.
MAX_SEARCH_ANSWER_BYTES = 12 << 20
# The most queries, and results (queries x their largest k), sent in one search call: the index's default bounds
# of a batch (--max-batch-queries, --max-batch-results), which it refuses whole, and the answer's size. A
# --max-batch-size over 100 at k = 1000 would otherwise fail every miss of its batch, each of which it answers
# alone. An index started with lower bounds says so when it refuses a call: the endpoint then splits at them.
MAX_SEARCH_QUERIES = validation.DEFAULT_MAX_BATCH_QUERIES
MAX_SEARCH_RESULTS = min(validation.DEFAULT_MAX_BATCH_RESULTS, MAX_SEARCH_ANSWER_BYTES // RESULT_BYTES)
# States in which an endpoint answers searches pinned to a version.
SEARCHABLE = frozenset({State.READY, State.SERVING})
# What an index's refusal of a k over its --max-k (``validation.check_k``) says of the k asked and that limit.
_REFUSED_K = re.compile(r"\bk=(\d+) is out of range: ask for 1 to (\d+) candidates")
# An endpoint silent for this many of its keepalive periods is taken as gone (hung or partitioned).
MISSED_KEEPALIVES = 3
# Then given this long more, in which this replica's loop reads what came while it was stalled (``_read_within``).
STALL_GRACE_S = 0.1
# A peer address as gRPC writes it in a status's details (up to a ": " or the end), and what replaces it.
_PEER = re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|vsock|dns):[^\s;,]*?(?=:?(?:[\s;,]|$))")
_HIDDEN_PEER = "<index endpoint>"
# Reconnect backoff of a broken status stream: short, so a restarted slot rejoins within seconds.
RECONNECT_S = (0.2, 2.0)
# An endpoint that never connected logs why at once, and again when the reason changes or this often.
UNREACHABLE_LOG_S = 60.0


@dataclass(frozen=True)
class BatchBounds:
    """The most queries, and results (queries x their largest k), one search call to an endpoint carries."""

    queries: int = MAX_SEARCH_QUERIES
    results: int = MAX_SEARCH_RESULTS


def error_for(e: grpc.aio.AioRpcError, address: str) -> errors.ServingError:
    """The domain error of a failed index call. Its message is for the query
    service's caller, so it names no address: the log does."""
    log.debug("index call to %s failed: %s: %s", address, e.code().name, e.details())
    # gRPC's own details of a failed connection name the peer it tried, resolved ("ipv4:10.0.0.5:50051") or not.
    details = _PEER.sub(_HIDDEN_PEER, e.details() or "").replace(address, _HIDDEN_PEER)
    return _CODE_TO_ERROR.get(e.code(), errors.ServingError)(f"index search failed: {e.code().name}: {details}")


async def _read_within(call, silence_s: float):
    """The stream's next message; TimeoutError if none came within ``silence_s`` and a grace after it.

    The grace is for this replica's own event loop: stalled past ``silence_s`` (a large request parsed on it), its
    timer fires late, beside keepalives that came meanwhile and are not read yet; a silent endpoint sent none."""
    # Not wait_for: on Python 3.11 it returns a read that completes as the task is cancelled, and swallows the
    # cancellation, so a replica's close waited on this stream for ever. asyncio.wait leaves the read running.
    read = asyncio.ensure_future(call.read())
    try:
        for wait_s in (silence_s, STALL_GRACE_S):
            done, _ = await asyncio.wait({read}, timeout=wait_s)
            if done:
                return read.result()
        raise asyncio.TimeoutError
    finally:
        if not read.done():
            read.cancel()


class IndexEndpoint:
    """One index endpoint (a slot process). ``versions`` is what its status
    stream last said it holds, empty while the endpoint is unreachable or
    silent, or serves another model than ``model`` (the replica's; "": any).
    Safe for one event loop."""

    def __init__(self, address: str, tls: ClientTls = ClientTls(), model: str = ""):
        self.address = address
        self.model = model
        self.slot = ""
        self.shard, self.shards = 0, 0  # of a sharded version (shards 0: whole versions)
        self.versions: dict[int, State] = {}  # version -> its state there
        self.generations: dict[int, int] = {}  # version -> catalogue generation applied there
        self.bounds = BatchBounds()  # lowered to what the endpoint names when it refuses a call over its own
        self.max_k = validation.DEFAULT_MAX_K  # the most results a search gets, as far as known (``_refusal``)
        self._connected = False  # whether its status stream ever answered
        self.streaming = False  # whether its status stream answers now (admin status: ``IndexRouter.report``)
        self.other_model = ""  # the model its last status named when not the replica's (it then holds nothing)
        self._unreachable_log = LogThrottle()  # by cause: why it never connected, or the other model it serves
        self._channel = tls.aio_channel(address, options=[
            # Reconnect fast after an outage: the default backoff grows to minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self._stub = pb_grpc.IndexServiceStub(self._channel)
        self._timers: dict[tuple[str, str], prometheus_client.Histogram] = {}  # label lookups, once per series

    @contextlib.contextmanager
    def _timed(self, method: str):
        """Times the call made within into ``recsys_index_call_seconds``, by how it ended."""
        start = time.perf_counter()
        code = "UNKNOWN"  # a failure of the client's own (a closed channel)
        try:
            yield
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            raise
        except asyncio.CancelledError:  # the slower of a hedged pair, or its caller's time ran out
            code = "CANCELLED"
            raise
        finally:
            timer = self._timers.get((method, code))
            if timer is None:
                timer = self._timers[method, code] = INDEX_CALLS.labels(self.address, method, code)
            timer.observe(time.perf_counter() - start)

    def holds(self, version: int, generation: int = 0) -> bool:
        """Whether it answers searches of ``version`` from catalogue ``generation`` or a later one."""
        return self.versions.get(version) in SEARCHABLE and self.generations.get(version, 0) >= generation

    def serves(self, shard: int, shards: int) -> bool:
        """Whether it serves shard ``shard`` of ``shards`` (0 of 1: a whole, unsharded version)."""
        return self.shard == shard and max(self.shards, 1) == shards

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]:
        """Searches all queries in ``version`` within ``timeout_s``; one RPC, unless the batch is over
        ``MAX_SEARCH_BYTES`` or ``self.bounds``: then one per part of it, side by side."""
        requests = [pb.SearchRequest(vector=[] if q.vector is None else q.vector.tolist(), k=q.k,
                                     model_version=version, exclude_candidate_ids=sorted(q.exclusions),
                                     filter=filter_to_proto(q.filter) if q.filter else None,
                                     by_popularity=q.by_popularity) for q in queries]
        return await self._search_parts(requests, version, max(q.min_generation for q in queries), timeout_s)

    async def _search_parts(self, requests: list[pb.SearchRequest], version: int, min_generation: int,
                            timeout_s: float) -> list[IndexHits]:
        parts = _parts(requests, self.bounds) if len(requests) > 1 else [requests]
        if len(parts) == 1:
            return await self._search(requests, version, min_generation, timeout_s)
        answers = await asyncio.gather(*(self._search(part, version, min_generation, timeout_s) for part in parts))
        return [hits for answer in answers for hits in answer]

    async def _search(self, requests: list[pb.SearchRequest], version: int, min_generation: int,
                      timeout_s: float) -> list[IndexHits]:
        try:
            if len(requests) == 1:
                with self._timed("Search"):
                    responses = [await self._stub.Search(requests[0], timeout=timeout_s,
                                                         metadata=outgoing_metadata())]
                generation = responses[0].catalogue_generation
            else:
                with self._timed("BatchSearch"):
                    batch = await self._stub.BatchSearch(pb.BatchSearchRequest(queries=requests), timeout=timeout_s,
                                                         metadata=outgoing_metadata())
                responses = list(batch.results)
                generation = max([batch.catalogue_generation, *(r.catalogue_generation for r in responses)])
        except grpc.aio.AioRpcError as e:
            if self._over_bound(e, requests):  # refused before any work: split at the endpoint's bound
                return await self._search_parts(requests, version, min_generation, timeout_s)
            raise self._refusal(e) from e
        for response in responses:
            self._check(response, version, min_generation, generation)
        return [_hits(r, generation) for r in responses]

    def _over_bound(self, e: grpc.aio.AioRpcError, requests: list[pb.SearchRequest]) -> bool:
        """Whether ``e`` refused the batch ``requests`` for a bound of the endpoint's that the batch passes: a
        batch bound (an index started with a lower --max-batch-queries or --max-batch-results than the defaults),
        or its answer's size (an index started with a --max-message-bytes below ``MAX_SEARCH_ANSWER_BYTES``), read
        as a bound of results (``_fitting_results``). ``self.bounds`` then holds it. Parts cut at it pass no bound
        the refusal named again; a lone query is not split (its refusal is the caller's error)."""
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT or len(requests) < 2:
            return False
        results = len(requests) * max(r.k for r in requests)
        details = e.details() or ""
        answer = validation.refused_answer_size(details)
        refused = ("results", _fitting_results(results, *answer)) if answer else validation.refused_batch_bound(details)
        if refused is None:
            return False
        name, limit = refused
        if (len(requests) if name == "queries" else results) <= limit:
            return False  # not this batch's: the services disagree otherwise
        if limit < getattr(self.bounds, name):
            log.info("index endpoint %s takes at most %d %s per search call: splitting its searches there",
                     self.address, limit, name)
            self.bounds = dataclasses.replace(self.bounds, **{name: limit})
        return True

    def _refusal(self, e: grpc.aio.AioRpcError) -> errors.ServingError:
        """The domain error of a failed search (``error_for``): ``OverMaxK`` for a refusal of a k over the
        endpoint's --max-k, which ``self.max_k`` then holds (reset with ``bounds``, as a restart may change it)."""
        error = error_for(e, self.address)
        refused = _REFUSED_K.search(e.details() or "") if e.code() == grpc.StatusCode.INVALID_ARGUMENT else None
        if refused is None:
            return error
        max_k = int(refused.group(2))
        if max_k != self.max_k:
            log.info("index endpoint %s answers at most %d results a search (its --max-k)", self.address, max_k)
            self.max_k = max_k
        return OverMaxK(str(error), max_k)

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float, with_vector: bool = False) \
            -> IndexHits:
        """The neighbours of ``query.candidate_id`` in ``version`` within ``timeout_s``
        (and the candidate's vector ``with_vector``); NotFound when the version's
        catalogue does not hold the candidate."""
        request = pb.SearchSimilarRequest(candidate_id=query.candidate_id, k=query.k, model_version=version,
                                          exclude_candidate_ids=sorted(query.exclusions),
                                          filter=filter_to_proto(query.filter) if query.filter else None,
                                          return_vector=with_vector)
        try:
            with self._timed("SearchSimilar"):
                response = await self._stub.SearchSimilar(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # the caller's candidate, not a disagreement of services
                raise errors.NotFound(f"candidate_id {query.candidate_id!r} is not in version {version}'s "
                                      "catalogue (never in it, or deleted): ask for a candidate the live version "
                                      "holds") from e
            raise self._refusal(e) from e
        self._check(response, version, query.min_generation, response.catalogue_generation)
        hits = _hits(response, response.catalogue_generation)
        if with_vector:
            hits = dataclasses.replace(hits, vector=np.asarray(response.query_vector, np.float32))
        return hits

    def _check(self, response, version: int, min_generation: int, generation: int) -> None:
        # Routed here on a status naming this replica's model: an answer naming another is from a restart since.
        if self.model and response.model_name and response.model_name != self.model:
            raise errors.FailedPrecondition(f"an index endpoint answered model {response.model_name!r} to a query "
                                            f"of model {self.model!r}")
        if response.model_version != version:
            raise errors.FailedPrecondition(f"an index endpoint answered version {response.model_version} "
                                            f"to a query for version {version}")
        if generation < min_generation:  # its status stream said otherwise: a restart; another holder may be current
            log.warning("index endpoint %s answered version %d from catalogue generation %d; %d was needed",
                        self.address, version, generation, min_generation)
            raise errors.Unavailable(f"the index answered from catalogue generation {generation} of version "
                                     f"{version}, behind the {min_generation} this replica serves; retry shortly")

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
                    status = await _read_within(call, silence_s)
                    if status is grpc.aio.EOF:
                        if self.versions:  # once per drain, not once per reconnect to a drained endpoint
                            log.info("index endpoint %s (slot %s) ended its status stream (draining or stopping): "
                                     "routing searches around it", self.address, self.slot or "?")
                        break
                    silence_s = MISSED_KEEPALIVES * max(status.keepalive_s, 0.1)
                    self._connected = self.streaming = True
                    self._update(status.slot, *self._held(status), on_change, (status.shard, status.shards))
                    backoff = RECONNECT_S[0]
            except asyncio.TimeoutError:
                log.warning("index endpoint %s silent for %.1fs: routing around it", self.address, silence_s)
            except grpc.aio.AioRpcError as e:
                if self.versions:
                    log.warning("index endpoint %s lost (%s): routing around it", self.address, e.code().name)
                elif not self._connected:
                    self._log_unreachable(e)
            finally:
                call.cancel()
                self.streaming = False
            # A restarted endpoint may have other bounds: learnt again if lower.
            self.bounds, self.max_k = BatchBounds(), validation.DEFAULT_MAX_K
            self._update(self.slot, {}, {}, on_change, (self.shard, self.shards))
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, RECONNECT_S[1])

    def _log_unreachable(self, e: grpc.aio.AioRpcError) -> None:
        """Says why an endpoint that never connected does not: else a query service whose TLS flags do not fit
        the slots' stays NOT_SERVING with both slots up, and only gRPC's own log says why."""
        details = e.details() or ""
        held = self._unreachable_log.due((e.code(), details), UNREACHABLE_LOG_S)
        if held is not None:
            log.warning("index endpoint %s unreachable, never connected: %s: %s%s%s", self.address, e.code().name,
                        details, tls_hint(details, "--index-tls-"), f" ({held} more since the last line)" if held
                        else "")

    def _held(self, status: pb.IndexStatus) -> tuple[dict[int, State], dict[int, int]]:
        """The versions ``status`` says the endpoint holds, with their states and catalogue generations: none
        when it names another model than the replica's (a wrong --index-address). Its version numbers name
        other embeddings and candidates: one of the same dims would answer wrong ids under this model's name."""
        self.other_model = (status.model_name if self.model and status.model_name and status.model_name != self.model
                            else "")
        if self.other_model:
            held = self._unreachable_log.due(("model", status.model_name), UNREACHABLE_LOG_S)
            if held is not None:
                log.warning("index endpoint %s (slot %s) serves model %r, not this replica's %r: routing nothing to "
                            "it; fix --index-address to list only index endpoints of model %r%s", self.address,
                            status.slot or "?", status.model_name, self.model, self.model,
                            f" ({held} more such statuses since the last line)" if held else "")
            return {}, {}
        versions, generations = {}, {}
        for v in status.versions:
            state = version_state(v.state)
            if state is None:  # not routable. Raising ended the watch, leaving the last status routed for ever
                held = self._unreachable_log.due(("state", v.state), UNREACHABLE_LOG_S)
                if held is not None:
                    log.warning("index endpoint %s (slot %s) holds version %d in state %s, which this query service "
                                "does not know: routing nothing of that version to it (an index slot of a newer "
                                "release? upgrade this query service)%s", self.address,
                                status.slot or "?", v.version, state_name(v.state),
                                f" ({held} more such statuses since the last line)" if held else "")
                continue
            versions[v.version], generations[v.version] = state, v.catalogue_generation
        return versions, generations

    def _update(self, slot: str, versions: dict[int, State], generations: dict[int, int],
                on_change: Callable[[], None], shard: tuple[int, int]) -> None:
        if versions != self.versions or generations != self.generations or (slot, shard) != (self.slot, (
                self.shard, self.shards)):
            self.slot, self.versions, self.generations = slot, versions, generations
            self.shard, self.shards = shard
            log.info("index endpoint %s (slot %s%s) holds %s", self.address, slot or "?",
                     f", shard {shard[0]} of {shard[1]}" if shard[1] else "",
                     {v: f"{s.value} "
                         f"(catalogue generation {generations.get(v, 0)})" for v, s in versions.items()} or "nothing")
            on_change()

    async def close(self) -> None:
        await self._channel.close()


def _fitting_results(results: int, size: int, max_message_bytes: int) -> int:
    """The most results (queries x their largest k) a search call may ask for its answer to fit in
    ``max_message_bytes``, from a call of ``results`` refused for an answer of ``size`` bytes: as many as fit at
    ``RESULT_BYTES`` each (ids of the most bytes an id may take), and no more than fit at the refused answer's
    bytes per result (which count crowding tokens and each query's other fields), in seven eighths of the limit:
    the rest is for the queries' other fields (up to 90 bytes a query: version, generation, model name) and parts
    whose queries hold more results than the refused call's did on average. Less than ``results``, so parts of the
    call ask for less."""
    room = max_message_bytes - max_message_bytes // 8
    return max(1, min(room // RESULT_BYTES, results * room // size))


def _parts(requests: list[pb.SearchRequest], bounds: BatchBounds = BatchBounds()) -> list[list[pb.SearchRequest]]:
    """``requests`` in order, cut into parts of at most ``MAX_SEARCH_BYTES`` (a request over it alone),
    ``bounds.queries`` queries and ``bounds.results`` results (queries x the part's largest k)."""
    parts: list[list[pb.SearchRequest]] = [[]]
    size = largest_k = 0
    for request in requests:
        request_size = request.ByteSize()
        part = parts[-1]
        if part and (size + request_size > MAX_SEARCH_BYTES or len(part) >= bounds.queries
                     or (len(part) + 1) * max(largest_k, request.k) > bounds.results):
            parts.append([])
            size = largest_k = 0
        parts[-1].append(request)
        size += request_size
        largest_k = max(largest_k, request.k)
    return parts


class CrowdingTokens(Sequence[tuple[str, ...]]):
    """Each result's crowding tokens in an answer, read from its message when asked for: a crowded merge reads
    those down to its k-th result only (a third of its shards' answers at one per genre in MovieLens, fewer at
    looser crowding), and a tuple made for every result cost 0.5 ms of a 3 ms search at one per genre."""

    __slots__ = ("_crowding",)

    def __init__(self, crowding):
        self._crowding = crowding  # the answer's repeated CrowdingTokens

    def __len__(self) -> int:
        return len(self._crowding)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [tuple(c.tokens) for c in self._crowding[j]]
        return tuple(self._crowding[j].tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))


def _hits(response: pb.SearchResponse, generation: int) -> IndexHits:
    return IndexHits([c.candidate_id for c in response.candidates], [c.score for c in response.candidates],
                     generation, crowding=CrowdingTokens(response.crowding) if response.crowding else None,
                     changing=response.catalogue_changing)
