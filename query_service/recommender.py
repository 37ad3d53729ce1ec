"""The query service's core: Recommend and Embed, free of gRPC.

Recommend pins one version for the whole request: it resolves the live version
once, looks the result up in the cache under that version's key, and on a miss
embeds with that version's tower and searches that version's index, so a
promotion in the middle of a request cannot mix versions.

Cache keys carry the version, so a promotion starts a cold cache: at a hit rate
that the service is sized for, every request would then be a miss at once.
``warm`` answers the replica's most recent requests with a version loaded
beside the live one, batched, before it is promoted (TensorFlow Serving's
warm-up requests, played against the cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from query_service.batching import BatchingConfig, MicroBatcher
from query_service.cache import CachedResult, ResultCache, cache_key
from query_service.index_client import IndexHits, IndexQuery
from query_service.tower import QueryModel
from serving import validation
from serving.errors import DeadlineExceeded, InvalidArgument, ServingError, Unavailable
from serving.versions import VersionManager
from settings.flags import option, require

log = logging.getLogger(__name__)

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"


class IndexBackend(Protocol):
    """Search pinned to a version: ``query_service.routing.IndexRouter`` in the
    service (gRPC to the index endpoints), an in-process index in unit tests.
    ``timeout_s``: the longest a search may take (a miss's whole budget)."""

    timeout_s: float

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]: ...


@dataclass(frozen=True)
class Recommendation:
    ids: list[str]
    scores: list[float]
    version: int
    source: str  # SOURCE_MODEL or SOURCE_POPULARITY
    cache_hit: bool


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray
    version: int
    known: bool


@dataclass(frozen=True)
class WarmupConfig:
    requests: int = option(10_000, "most recent distinct requests answered with a new version before it is "
                                   "promoted, to fill the cache (0: no warm-up)", flag="warmup-requests")
    budget_s: float = option(10.0, "longest a warm-up may take", flag="warmup-budget-s")
    batch_size: int = option(64, "requests per tower call and index search of a warm-up", flag="warmup-batch-size")
    duty_cycle: float = option(0.25, "share of the warm-up's time spent working: it rests between batches so "
                                     "that the live version's traffic keeps its latency (1: no rest)",
                               flag="warmup-duty-cycle")

    def __post_init__(self) -> None:
        require(self.requests >= 0, "requests", "must be >= 0")
        require(self.budget_s > 0, "budget_s", "must be > 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(0 < self.duty_cycle <= 1, "duty_cycle", "must be in (0, 1]")


@dataclass(frozen=True)
class _Request:
    """What a cached result depends on besides the version (see ``cache_key``)."""

    customer_id: str
    k: int
    exclusions: frozenset[str]
    recent: tuple[str, ...]
    exclude_seen: bool

    def key(self, model: str, version: int) -> str:
        return cache_key(model, version, self.customer_id, self.k, self.exclusions, self.recent, self.exclude_seen)


@dataclass(frozen=True)
class _Miss:
    """A cache miss waiting in the micro-batcher, pinned to its version."""

    model: QueryModel
    customer_id: str
    k: int
    exclusions: frozenset[str]
    recent: tuple[str, ...]
    deadline: float  # event loop time by which the caller needs the answer


class Recommender:
    """The Recommend path over the towers in ``manager``.

    Tower calls run on ``executor`` threads; concurrent cache misses are
    micro-batched into one tower call and one index search per version. A miss
    has the caller's remaining time, at most the index's timeout, for the
    whole path (waiting for a batch included), so a hung index fails requests
    within that time instead of queueing them until the callers give up.
    """

    def __init__(self, manager: VersionManager[QueryModel], index: IndexBackend, cache: ResultCache | None,
                 executor: ThreadPoolExecutor, batching: BatchingConfig = BatchingConfig(),
                 max_k: int = validation.DEFAULT_MAX_K, warmup: WarmupConfig = WarmupConfig()):
        self.manager = manager
        self.model = manager.model
        self.index = index
        self.cache = cache
        self.executor = executor
        self.max_k = max_k
        self._batcher: MicroBatcher[_Miss, tuple[list[str], list[float], str]] = MicroBatcher(
            self._process_misses, batching)
        self.warmup = warmup
        # The replica's latest distinct requests, most recent last: what a warm-up replays (an
        # OrderedDict iterates in recency order, which cachetools' LRUCache does not expose).
        self._recent_requests: OrderedDict[_Request, None] | None = (
            OrderedDict() if cache is not None and warmup.requests > 0 else None)

    async def recommend(self, customer_id: str, k: int, exclusions: list[str] = (),
                        recent: list[str] = (), exclude_seen: bool = False,
                        timeout_s: float | None = None) -> Recommendation:
        """Top-k for a customer from the live version (see the module docstring).

        ``recent``: latest items, most recent first, for history-aware towers;
        ``exclude_seen``: also exclude the customer's stored and recent items;
        ``timeout_s``: the caller's remaining time (None: no deadline).
        """
        validation.check_id(customer_id, "customer_id")
        validation.check_k(k, self.max_k)
        excluded = validation.check_exclusions(exclusions)
        recent = validation.check_id_list(recent, "recent_candidate_ids", validation.MAX_RECENT)
        version, model = self.manager.get()
        request = _Request(customer_id, k, excluded, recent, exclude_seen)
        key = request.key(self.model, version)
        if self.cache is not None:
            cached = await self.cache.get(key)
            if cached is not None and self._answers(cached, request):
                self._remember(request)
                return Recommendation(cached.ids, cached.scores, version, cached.source, cache_hit=True)
        ids, scores, source = await self._answer_miss(model, request, timeout_s)
        self._remember(request)  # answered: a request that fails is not worth warming
        if self.cache is not None:
            self.cache.put_in_background(key, CachedResult(ids, scores, source))
        return Recommendation(ids, scores, version, source, cache_hit=False)

    @staticmethod
    def _answers(cached: CachedResult, request: _Request) -> bool:
        """Whether a cached result can answer ``request`` (a corrupt or forged one
        cannot; its key's miss path then overwrites it)."""
        return (len(cached.ids) <= request.k and cached.source in (SOURCE_MODEL, SOURCE_POPULARITY)
                and request.exclusions.isdisjoint(cached.ids))

    def _remember(self, request: _Request) -> None:
        recent = self._recent_requests
        if recent is None:
            return
        recent[request] = None
        recent.move_to_end(request)
        if len(recent) > self.warmup.requests:
            recent.popitem(last=False)

    async def _answer_miss(self, model: QueryModel, request: _Request,
                           timeout_s: float | None) -> tuple[list[str], list[float], str]:
        callers = timeout_s is not None and timeout_s < self.index.timeout_s
        budget = timeout_s if callers else self.index.timeout_s
        try:
            async with asyncio.timeout(budget):
                return await self._batcher.submit(self._miss(model, request, budget))
        except TimeoutError:
            if callers:
                raise DeadlineExceeded(f"the request's deadline ({budget:.3f}s left on arrival) passed "
                                       "before the tower and the index answered") from None
            raise Unavailable(f"no answer from the index within {budget:.1f}s: it is overloaded or hung; "
                              "retry later or on another replica") from None

    def _miss(self, model: QueryModel, request: _Request, budget_s: float) -> _Miss:
        excluded = request.exclusions
        if request.exclude_seen:
            excluded = excluded | model.seen(request.customer_id) | frozenset(request.recent)
            if len(excluded) > validation.MAX_EXCLUSIONS:
                raise InvalidArgument(
                    f"exclude_seen adds the customer's interactions to the exclusions: {len(excluded)} in all, "
                    f"over the limit of {validation.MAX_EXCLUSIONS}; send fewer exclude_candidate_ids or "
                    "recent_candidate_ids, or leave exclude_seen off")
        deadline = asyncio.get_running_loop().time() + budget_s
        return _Miss(model, request.customer_id, request.k, excluded, request.recent, deadline)

    async def warm(self, version: int) -> int:
        """Answers the replica's most recent requests (most recent first) with
        ``version``, whose tower is loaded and whose index is routable, and
        caches the results; returns how many were cached. Stops at the
        warm-up's budget; a failed batch is skipped (its requests stay misses).

        The warm-up shares the replica and the machine with live traffic: after
        each batch it rests for as long as the duty cycle asks, so that its
        searches take CPU in short, spaced bursts rather than for a second."""
        if self._recent_requests is None:
            return 0
        _, model = self.manager.get(version)
        requests = list(reversed(self._recent_requests))  # a snapshot: traffic goes on meanwhile
        deadline = time.monotonic() + self.warmup.budget_s
        warmed = 0
        for start in range(0, len(requests), self.warmup.batch_size):
            if time.monotonic() > deadline:
                log.warning("warm-up of version %d stopped at its %.1fs budget: %d of %d requests cached",
                            version, self.warmup.budget_s, warmed, len(requests))
                break
            batch = requests[start:start + self.warmup.batch_size]
            batch_started = time.monotonic()
            results = await self._process_version([self._miss(model, r, self.index.timeout_s) for r in batch])
            for request, result in zip(batch, results):
                if not isinstance(result, Exception):
                    self.cache.put_in_background(request.key(self.model, version), CachedResult(*result))
                    warmed += 1
            worked = time.monotonic() - batch_started
            await asyncio.sleep(worked * (1 - self.warmup.duty_cycle) / self.warmup.duty_cycle)
        return warmed

    async def embed(self, customer_id: str) -> Embedding:
        validation.check_id(customer_id, "customer_id")
        version, model = self.manager.get()
        vectors, known = await self._embed(model, [customer_id])
        return Embedding(vectors[0], version, bool(known[0]))

    async def _embed(self, model: QueryModel, customer_ids: list[str],
                     recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Table lookups run inline (microseconds); a tower call runs on the executor."""
        found = model.lookup(customer_ids, recent)
        if found is not None:
            return found
        return await asyncio.get_running_loop().run_in_executor(self.executor, model.embed, customer_ids, recent)

    async def _process_misses(self, misses: list[_Miss]) -> list[tuple[list[str], list[float], str] | Exception]:
        by_version: dict[int, list[int]] = defaultdict(list)
        for i, miss in enumerate(misses):
            by_version[miss.model.version].append(i)
        results: list = [None] * len(misses)
        groups = [self._process_version([misses[i] for i in positions]) for positions in by_version.values()]
        for positions, outcome in zip(by_version.values(),
                                      await asyncio.gather(*groups, return_exceptions=True)):
            for i, position in enumerate(positions):
                results[position] = outcome if isinstance(outcome, Exception) else outcome[i]
        return results

    async def _process_version(self, misses: list[_Miss]) -> list[tuple[list[str], list[float], str] | Exception]:
        """One tower call and at most one index RPC for misses of one version."""
        model = misses[0].model
        vectors, known = await self._embed(model, [m.customer_id for m in misses], [m.recent for m in misses])
        results: list = [None] * len(misses)
        personal = []
        for i, miss in enumerate(misses):
            if known[i]:
                personal.append(i)
            else:
                results[i] = (*model.popular(miss.k, miss.exclusions), SOURCE_POPULARITY)
        if personal:
            # The batch's search may take as long as its most patient caller; the others give up on their own.
            timeout_s = max(misses[i].deadline for i in personal) - asyncio.get_running_loop().time()
            try:
                hits = await self.index.search(
                    [IndexQuery(vectors[i], misses[i].k, misses[i].exclusions) for i in personal], model.version,
                    max(timeout_s, 0.001))
            except ServingError as e:  # fails the personal requests only; fallbacks need no index
                hits = [e] * len(personal)
            for i, hit in zip(personal, hits):
                results[i] = hit if isinstance(hit, Exception) else (hit.ids, hit.scores, SOURCE_MODEL)
        return results

    async def close(self) -> None:
        await self._batcher.close()
        if self.cache is not None:
            await self.cache.close()
