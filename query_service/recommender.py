"""The query service's core: Recommend, RecommendSimilar, BatchRecommend,
RecordInteractions and Embed, free of gRPC.

A request pins one version for its whole life (a batch, one for all its
items): it resolves the live version once, looks the result up in the cache
under that version's key, and on a miss embeds with that version's tower and
searches that version's index, so a promotion in the middle of a request
cannot mix versions. A Recommend the in-process tier cannot answer goes to the
micro-batcher at once: the batch looks its requests up in Redis with one MGET,
then embeds and searches for those Redis does not hold, so misses that queue
together share one Redis round trip as they share a tower call and a search.

A cache key also carries the catalogue generation the replica knows for the
version (``QueryModel.catalogue_generation``), so a catalogue delta is never
answered from results of the catalogue before it. A result is stored under the
generation it was computed from (the index names it), never a newer one, and
searches go only to index endpoints that have caught up with the replica.

The live interaction history (``live_history``) is read before the cache
lookup, when it can change the result (history-aware towers, exclude_seen),
and its items are part of the key: a recorded interaction makes the
customer's earlier results unreachable, with nothing to invalidate.

Cache keys carry the version, so a promotion starts a cold cache: at a hit rate
that the service is sized for, every request would then be a miss at once.
``warm`` answers the replica's most recent requests (Recommend and
RecommendSimilar) with a version loaded beside the live one, batched, before
it is promoted (TensorFlow Serving's warm-up requests, played against the cache).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Collection, Protocol, Sequence, TypeVar

import cachetools
import numpy as np

from query_service.batching import BatchingConfig, MicroBatcher
from query_service.cache import CachedResult, ResultCache, cache_key, similar_key
from query_service.live_history import LiveHistory, merged_history
from query_service.searches import IndexHits, IndexQuery, OverMaxK, SimilarQuery
from serving import validation
from serving.errors import DeadlineExceeded, InvalidArgument, ServingError, Unavailable
from serving.filters import NO_FILTER, Filter
from serving.versions import VersionManager
from settings.flags import option, require

if TYPE_CHECKING:  # TensorFlow: the --workers supervisor imports this module and loads no model
    from query_service.tower import QueryModel

log = logging.getLogger(__name__)
T = TypeVar("T")

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"
# ``Recommender.replay``: the memory its requests may take (first in, first out; what one
# takes is ``replay_cost``), and the longest it remembers. A request for a customer and k is
# ~20 bytes; one with long lists is rarely sent twice.
REPLAY_BUDGET_BYTES = 32 << 20
REPLAY_MAX_BYTES = 256


def replay_cost(fingerprint: bytes) -> int:
    """What remembering a request takes, estimated from its bytes (tracemalloc: ~700 bytes
    for 21 bytes of customer and k, 1.8 KB for 71, 5.7 KB for 311 of exclusions)."""
    return 300 + 22 * len(fingerprint)


class IndexBackend(Protocol):
    """Search pinned to a version: ``query_service.routing.IndexRouter`` in the
    service (gRPC to the index endpoints), an in-process index in unit tests.
    ``timeout_s``: the longest a search may take (a miss's whole budget)."""

    timeout_s: float

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]: ...

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float) -> IndexHits: ...


@dataclass(frozen=True)
class RecommendQuery:
    """One Recommend request as received (``Recommender`` validates it)."""

    customer_id: str
    k: int
    exclusions: Sequence[str] = ()
    recent: Sequence[str] = ()
    exclude_seen: bool = False
    filter: Filter = NO_FILTER


@dataclass(frozen=True)
class Recommendation:
    ids: list[str]
    scores: list[float]
    version: int
    source: str  # SOURCE_MODEL or SOURCE_POPULARITY
    cache_hit: bool
    generation: int = 0  # the catalogue generation of the version the result reflects
    # A hit's ``CachedResult.rendered``: where the RPC layer keeps the response it built for this
    # cached result (the same for every hit of it); None for a computed result.
    rendered: dict | None = None


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray
    version: int
    known: bool


@dataclass(frozen=True)
class WarmupConfig:
    requests: int = option(10_000, "most recent distinct requests (Recommend, RecommendSimilar) answered with a "
                                   "new version before it is promoted, to fill the cache (0: no warm-up)",
                           flag="warmup-requests")
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
    """What a cached result depends on besides the version and the catalogue
    generation (see ``cache_key``); ``live``: the live history, when it can
    change the result."""

    customer_id: str
    k: int
    exclusions: frozenset[str]
    recent: tuple[str, ...]
    exclude_seen: bool
    filter: Filter = NO_FILTER
    live: tuple[str, ...] = ()

    def key(self, model: str, version: int, generation: int) -> str:
        return cache_key(model, version, self.customer_id, self.k, self.exclusions, self.recent, self.exclude_seen,
                         generation=generation, live=self.live, filter_key=self.filter.key())

    def held(self) -> tuple:
        """This request as a plain tuple of strings, numbers and tuples of them (``from_held`` is
        the inverse), which the garbage collector stops tracking; a frozenset, a filter or the
        request itself would keep it tracked (only a request with a filter holds one)."""
        return (self.customer_id, self.k, tuple(self.exclusions), self.recent, self.exclude_seen,
                None if self.filter is NO_FILTER else self.filter, self.live)

    @classmethod
    def from_held(cls, held: tuple) -> "_Request":
        customer_id, k, exclusions, recent, exclude_seen, filter, live = held
        return cls(customer_id, k, frozenset(exclusions), recent, exclude_seen, NO_FILTER if filter is None else filter,
                   live)


def _cached(cached: CachedResult, version: int, generation: int) -> Recommendation:
    """A cache hit's answer. The cache holds tuples (``CachedResult``); a Recommendation's are lists
    whatever its path."""
    return Recommendation(list(cached.ids), list(cached.scores), version, cached.source, True, generation,
                          cached.rendered)


@dataclass(frozen=True)
class _Answer:
    """A computed result and the catalogue generation it reflects. Not ``cacheable``: a fallback short of k
    because the index failed, which must not be served once the index is back."""

    ids: list[str]
    scores: list[float]
    source: str
    generation: int
    cacheable: bool = True


# The stages a miss goes through (``_Progress``), and what a timeout spent mostly in one says was slow.
QUEUED = "queued in this replica for a micro-batch"
BATCHED = "in its cache lookup and tower call"
SEARCHING = "waiting on the index"
_SLOW = {QUEUED: "this replica is overloaded (its micro-batches were all busy)",
         BATCHED: "this replica's tower or Redis is slow", SEARCHING: "the index is overloaded or hung"}


@dataclass
class _Progress:
    """The stages a request reached, in order, each with the event loop time it began: a timeout's
    message says where the time went from what was measured here."""

    stages: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def enter(self, stage: str) -> None:
        self.stages.append((stage, asyncio.get_running_loop().time()))

    def spent(self) -> tuple[str, str]:
        """The seconds spent in each stage until now, as words, and the stage that took the most."""
        ends = [began for _, began in self.stages[1:]] + [asyncio.get_running_loop().time()]
        spans = [(stage, end - began) for (stage, began), end in zip(self.stages, ends)]
        return ", ".join(f"{seconds:.2f}s {stage}" for stage, seconds in spans), max(spans, key=lambda s: s[1])[0]


@dataclass(frozen=True)
class _Miss:
    """A cache miss waiting in the micro-batcher, pinned to its version."""

    model: QueryModel
    customer_id: str
    k: int
    exclusions: frozenset[str]
    history: tuple[str, ...]  # replaces the stored history of a history-aware tower when non-empty
    filter: Filter
    generation: int  # the catalogue generation the answer must reflect at least
    deadline: float  # event loop time by which the caller needs the answer
    progress: _Progress = dataclasses.field(compare=False)  # the stages it reached, which its caller reports
    key: str = ""  # its result's cache key, looked up in Redis with its batch's others (a warm-up's: none)


class Recommender:
    """The query paths over the towers in ``manager``.

    Tower calls run on ``executor`` threads; concurrent cache misses are
    micro-batched into one tower call and one index search per version. A miss
    has the caller's remaining time, at most the index's timeout, for the
    whole path (waiting for a batch included), so a hung index fails requests
    within that time instead of queueing them until the callers give up.
    ``history``: the live interaction history (None without Redis).
    """

    def __init__(self, manager: VersionManager[QueryModel], index: IndexBackend, cache: ResultCache | None,
                 executor: ThreadPoolExecutor, batching: BatchingConfig = BatchingConfig(),
                 max_k: int = validation.DEFAULT_MAX_K, warmup: WarmupConfig = WarmupConfig(),
                 history: LiveHistory | None = None,
                 max_batch_requests: int = validation.DEFAULT_MAX_BATCH_REQUESTS):
        self.manager = manager
        self.model = manager.model
        self.index = index
        self.cache = cache
        self.history = history
        self.executor = executor
        self.max_k = max_k
        self.max_batch_requests = max_batch_requests
        self._batcher: MicroBatcher[_Miss, _Answer] = MicroBatcher(self._process_misses, batching)
        self.warmup = warmup
        # The replica's latest distinct requests, most recent last: what a warm-up replays (an
        # OrderedDict iterates in recency order, which cachetools' LRUCache does not expose). A
        # Recommend request is held as ``_Request.held()``, as a replay entry holds it.
        self._recent_requests: OrderedDict[tuple | SimilarQuery, None] | None = (
            OrderedDict() if cache is not None and warmup.requests > 0 else None)
        # Request bytes -> where ``answer`` found or stored its result: (version, catalogue generation,
        # cache key, the request as ``_Request.held``, ``replay_cost``). A plain tuple, so that the ~46k
        # entries the budget allows leave the garbage collector's full collections nothing to walk.
        self._replays: cachetools.FIFOCache[bytes, tuple] | None = (
            cachetools.FIFOCache(REPLAY_BUDGET_BYTES, getsizeof=lambda replay: replay[4])
            if cache is not None and cache.holds_local else None)

    # ------------------------------------------------------------------ Recommend, BatchRecommend

    async def recommend(self, customer_id: str, k: int, exclusions: Sequence[str] = (),
                        recent: Sequence[str] = (), exclude_seen: bool = False,
                        timeout_s: float | None = None, filter: Filter = NO_FILTER) -> Recommendation:
        """Top-k for a customer from the live version (see the module docstring).

        ``recent``: latest items, most recent first, for history-aware towers;
        ``exclude_seen``: also exclude the customer's stored, live and recent items;
        ``timeout_s``: the caller's remaining time (None: no deadline);
        ``filter``: only candidates passing it (validated by ``filter_from_proto``).
        """
        return await self.answer(RecommendQuery(customer_id, k, exclusions, recent, exclude_seen, filter), timeout_s)

    async def answer(self, query: RecommendQuery, timeout_s: float | None = None,
                     fingerprint: bytes | None = None) -> Recommendation:
        """``recommend`` for a query as the RPC layer receives it. ``fingerprint``:
        the request's bytes as received, under which ``replay`` finds its result again."""
        version, model = self.manager.get()
        request = self._check(model, query)
        if self._reads_live(model, request):
            fingerprint = None  # the live history changes under a remembered request: never replayed
            request = await self._with_live(request)
        return await self._recommend(version, model, request, timeout_s, fingerprint)

    def replay(self, fingerprint: bytes) -> Recommendation | None:
        """The answer to the request whose bytes are ``fingerprint``, when ``answer``
        saw those bytes before and the in-process tier still holds their result for
        the live version at its current catalogue generation; None otherwise (then
        ``answer`` it). Nothing is parsed, validated or keyed again: that Python was
        most of what a hit cost beyond a bare gRPC call (docs/BENCHMARKS.md). Requests
        whose result reads the live interaction history are never replayed: it
        changes under them."""
        replay = self._replays.get(fingerprint) if self._replays is not None else None
        if replay is None:
            return None
        version, model = self.manager.get()
        replayed_version, generation, key, held, _ = replay
        if version != replayed_version or model.catalogue_generation != generation:
            return None
        cached = self.cache.get_local(key)
        k, exclusions = held[1], held[2]  # see _Request.held
        if cached is None or not self._answers(cached, k, exclusions):
            return None
        return self._hit(version, generation, held, cached)

    async def recommend_batch(self, queries: Sequence[RecommendQuery],
                              timeout_s: float | None = None) -> tuple[int, list[Recommendation]]:
        """Each query answered as ``recommend`` would, all from one version
        (returned first). Every query is checked before any work: an invalid one
        fails the call, naming its index. Misses share the micro-batcher's
        tower calls and index searches."""
        validation.check_batch_requests(len(queries), self.max_batch_requests)
        version, model = self.manager.get()
        requests = []
        for i, query in enumerate(queries):
            with validation.item("requests", i):
                requests.append(self._check(model, query))
        reading = [i for i, request in enumerate(requests) if self._reads_live(model, request)]
        for i, request in zip(reading, await asyncio.gather(*(self._with_live(requests[i]) for i in reading))):
            requests[i] = request
        # exclude_seen's limit counts the customer's stored and live items: checked once they are known, as
        # the others are, before any item is looked up or searched (an item past it fails the whole call).
        for i, request in enumerate(requests):
            with validation.item("requests", i):
                self._excluded(model, request)

        async def one(i: int, request: _Request) -> Recommendation:
            with validation.item("requests", i):
                return await self._recommend(version, model, request, timeout_s)

        # The first failure fails the call then, not once the other items are answered (a refusal such as
        # RESOURCE_EXHAUSTED comes back at once). The rest are cancelled (a cancelled miss is left out of its
        # micro-batch) and awaited, so that no outcome goes unretrieved; what finished is cached.
        items = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            done, _ = await asyncio.wait(items, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for item in items:
                item.cancel()
            await asyncio.gather(*items, return_exceptions=True)
        for item in items:
            if item in done and item.exception() is not None:
                raise item.exception()
        return version, [item.result() for item in items]

    def _check(self, model: QueryModel, query: RecommendQuery) -> _Request:
        """``query`` validated for ``model``'s version (its filter's namespaces included)."""
        validation.check_id(query.customer_id, "customer_id")
        validation.check_k(query.k, self.max_k)
        excluded = validation.check_exclusions(query.exclusions)
        recent = validation.check_id_list(query.recent, "recent_candidate_ids", validation.MAX_RECENT)
        model.check_filter(query.filter)
        return _Request(query.customer_id, query.k, excluded, recent, query.exclude_seen, query.filter)

    def _reads_live(self, model: QueryModel, request: _Request) -> bool:
        """Whether ``request``'s result depends on the live history: a history-aware tower, or exclude_seen."""
        return self.history is not None and (request.exclude_seen or bool(model.takes.history_length))

    async def _with_live(self, request: _Request) -> _Request:
        """``request`` with the customer's live history (see ``_reads_live``)."""
        live = await self.history.get(request.customer_id)
        return dataclasses.replace(request, live=live) if live else request

    async def _recommend(self, version: int, model: QueryModel, request: _Request,
                         timeout_s: float | None, fingerprint: bytes | None = None) -> Recommendation:
        """``request`` (its live history read, where ``_reads_live``) answered from ``version``."""
        generation = model.catalogue_generation
        key = request.key(self.model, version, generation)
        held = request.held()
        answer = self._lookup_local(key, request.k, request.exclusions)
        if answer is None:
            # Not held in process: the micro-batch looks it up in Redis, one MGET for the batch,
            # and computes it if Redis does not hold it (then it is an _Answer).
            answer = await self._within_budget(
                lambda budget, progress: self._batcher.submit(self._miss(model, request, budget, progress, key)),
                timeout_s, QUEUED)
        if isinstance(answer, CachedResult):
            self._note_replay(fingerprint, version, generation, key, held)
            return self._hit(version, generation, held, answer)
        self._remember(held)  # answered: a request that fails is not worth warming
        if answer.generation != generation:
            key = request.key(self.model, version, answer.generation)
        if answer.cacheable:
            self._store(key, answer)
            self._note_replay(fingerprint, version, answer.generation, key, held)
        return Recommendation(answer.ids, answer.scores, version, answer.source, False, answer.generation)

    def _hit(self, version: int, generation: int, held: tuple, cached: CachedResult) -> Recommendation:
        self._remember(held)
        return _cached(cached, version, generation)

    def _note_replay(self, fingerprint: bytes | None, version: int, generation: int, key: str, held: tuple) -> None:
        if self._replays is not None and fingerprint is not None and len(fingerprint) <= REPLAY_MAX_BYTES:
            self._replays[fingerprint] = (version, generation, key, held, replay_cost(fingerprint))

    @staticmethod
    def _answers(cached: CachedResult, k: int, exclusions: Collection[str]) -> bool:
        """Whether a cached result can answer a request for ``k`` without ``exclusions`` (a set, or
        the tuple of a held request); a corrupt or forged one cannot: its key's miss path then overwrites it."""
        return (len(cached.ids) <= k and cached.source in (SOURCE_MODEL, SOURCE_POPULARITY)
                and (not exclusions or frozenset(exclusions).isdisjoint(cached.ids)))

    async def _lookup(self, key: str, k: int, exclusions: frozenset[str]) -> CachedResult | None:
        """RecommendSimilar's lookup: the in-process tier, then Redis (a Recommend
        miss is looked up in Redis by its micro-batch instead)."""
        cached = self._lookup_local(key, k, exclusions)
        if cached is not None or self.cache is None:
            return cached
        cached = await self.cache.get_remote(key)
        return cached if cached is not None and self._answers(cached, k, exclusions) else None

    def _lookup_local(self, key: str, k: int, exclusions: frozenset[str]) -> CachedResult | None:
        # The in-process tier, without a coroutine: most hits end there.
        cached = self.cache.get_local(key) if self.cache is not None else None
        return cached if cached is not None and self._answers(cached, k, exclusions) else None

    def _store(self, key: str, answer: _Answer) -> None:
        if self.cache is not None:
            self.cache.put_in_background(key, CachedResult(answer.ids, answer.scores, answer.source))

    def _similar_key(self, version: int, query: SimilarQuery, generation: int) -> str:
        return similar_key(self.model, version, query.candidate_id, query.k, query.exclusions, generation=generation,
                           filter_key=query.filter.key())

    def _remember(self, request: tuple | SimilarQuery) -> None:
        recent = self._recent_requests
        if recent is None:
            return
        try:
            recent.move_to_end(request)  # most requests were seen before: one dict lookup
        except KeyError:
            recent[request] = None
            if len(recent) > self.warmup.requests:
                recent.popitem(last=False)

    async def _within_budget(self, work: Callable[[float, _Progress], Awaitable[T]], timeout_s: float | None,
                             first_stage: str) -> T:
        """``work(budget, progress)`` within the caller's remaining time, at most the index's timeout.
        ``progress`` starts at ``first_stage``; ``work`` enters the later stages it reaches, so a timeout
        says where the time went (a replica whose own queue is full is not a hung index)."""
        callers = timeout_s is not None and timeout_s < self.index.timeout_s
        budget = timeout_s if callers else self.index.timeout_s
        progress = _Progress()
        progress.enter(first_stage)
        try:
            async with asyncio.timeout(budget):
                return await work(budget, progress)
        except TimeoutError:
            spent, slowest = progress.spent()
            if callers:
                raise DeadlineExceeded(f"the request's deadline ({budget:.3f}s left on arrival) passed "
                                       f"before it was answered: {spent}") from None
            raise Unavailable(f"no answer within {budget:.1f}s: {spent}: {_SLOW[slowest]}; "
                              "retry later or on another replica") from None

    @staticmethod
    def _excluded(model: QueryModel, request: _Request) -> frozenset[str]:
        """What ``request``'s search excludes in ``model``'s version: with exclude_seen, the customer's
        stored, live and recent items too; InvalidArgument when that passes ``MAX_EXCLUSIONS``."""
        excluded = request.exclusions
        if request.exclude_seen:
            excluded = (excluded | model.seen(request.customer_id) | frozenset(request.recent)
                        | frozenset(request.live))
            if len(excluded) > validation.MAX_EXCLUSIONS:
                raise InvalidArgument(
                    f"exclude_seen adds the customer's interactions to the exclusions: {len(excluded)} in all, "
                    f"over the limit of {validation.MAX_EXCLUSIONS}; send fewer exclude_candidate_ids or "
                    "recent_candidate_ids, or leave exclude_seen off")
        return excluded

    def _miss(self, model: QueryModel, request: _Request, budget_s: float, progress: _Progress,
              key: str = "") -> _Miss:
        excluded = self._excluded(model, request)
        history = request.recent
        if request.live and model.takes.history_length:
            history = merged_history(request.recent, request.live, _stored_history(model, request.customer_id))
        deadline = asyncio.get_running_loop().time() + budget_s
        return _Miss(model, request.customer_id, request.k, excluded, history, request.filter,
                     model.catalogue_generation, deadline, progress, key)

    # ------------------------------------------------------------------ RecommendSimilar

    async def similar(self, candidate_id: str, k: int, exclusions: Sequence[str] = (), filter: Filter = NO_FILTER,
                      timeout_s: float | None = None) -> Recommendation:
        """The candidates of the live version nearest to ``candidate_id`` (never
        itself), cached like Recommend; NotFound when the version's catalogue
        does not hold it."""
        validation.check_id(candidate_id, "candidate_id")
        validation.check_k(k, self.max_k)
        excluded = validation.check_exclusions(exclusions)
        version, model = self.manager.get()
        model.check_filter(filter)
        generation = model.catalogue_generation
        request = SimilarQuery(candidate_id, k, excluded, filter)  # remembered for warm-ups without a generation
        cached = await self._lookup(self._similar_key(version, request, generation), k, excluded | {candidate_id})
        if cached is not None:
            self._remember(request)
            return _cached(cached, version, generation)
        query = dataclasses.replace(request, min_generation=generation)
        hits = await self._within_budget(lambda budget, _: self.index.similar(query, version, budget), timeout_s,
                                         SEARCHING)
        self._remember(request)
        self._store(self._similar_key(version, request, hits.generation),
                    _Answer(hits.ids, hits.scores, SOURCE_MODEL, hits.generation))
        return Recommendation(hits.ids, hits.scores, version, SOURCE_MODEL, False, hits.generation)

    # ------------------------------------------------------------------ RecordInteractions

    async def record_interactions(self, customer_id: str, candidate_ids: Sequence[str]) -> int:
        """Appends the customer's interactions (oldest first) to the live history;
        returns its length after. Unavailable without Redis or when it fails."""
        validation.check_id(customer_id, "customer_id")
        ids = validation.check_interactions(candidate_ids)
        if self.history is None:
            raise Unavailable("this query replica runs without Redis, where live histories are kept: start it "
                              "with --redis-url to record interactions")
        return await self.history.record(customer_id, ids)

    # ------------------------------------------------------------------ warm-up

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
        warmed = failed = 0
        first_failure = ""
        for start in range(0, len(requests), self.warmup.batch_size):
            if time.monotonic() > deadline:
                log.warning("warm-up of version %d stopped at its %.1fs budget: %d of %d requests cached",
                            version, self.warmup.budget_s, warmed, len(requests))
                break
            batch_started = time.monotonic()
            try:
                warmed += await self._warm_batch(version, model, requests[start:start + self.warmup.batch_size])
            except Exception as e:  # noqa: BLE001 - a tower or client failure costs its batch only, as an index's does
                failed += 1
                first_failure = first_failure or f"{type(e).__name__}: {e}"
            worked = time.monotonic() - batch_started
            await asyncio.sleep(worked * (1 - self.warmup.duty_cycle) / self.warmup.duty_cycle)
        if failed:
            log.warning("warm-up of version %d: %d batches failed (first: %s); their requests stay misses", version,
                        failed, first_failure)
        return warmed

    async def _warm_batch(self, version: int, model: QueryModel, batch: list[tuple | SimilarQuery]) -> int:
        """Answers ``batch`` with ``version`` (its Recommend requests in one tower
        call and index search, its RecommendSimilar requests side by side) and
        caches the answers; returns how many it cached."""
        recommends, misses = [], []
        for held in batch:
            if isinstance(held, tuple):
                request = _Request.from_held(held)
                try:  # what this version refuses, as it would the request itself, stays out, not its batch
                    model.check_filter(request.filter)
                    misses.append(self._miss(model, request, self.index.timeout_s, _Progress()))
                except InvalidArgument:
                    continue
                recommends.append(request)
        similars = [r for r in batch if isinstance(r, SimilarQuery)]
        generation = model.catalogue_generation
        answers = await self._process_version(misses) if misses else []
        hits = await asyncio.gather(*(self.index.similar(dataclasses.replace(r, min_generation=generation), version,
                                                         self.index.timeout_s) for r in similars),
                                    return_exceptions=True)
        done = [(r.key(self.model, version, a.generation), a) for r, a in zip(recommends, answers)
                if not isinstance(a, BaseException)]
        done += [(self._similar_key(version, r, h.generation), _Answer(h.ids, h.scores, SOURCE_MODEL, h.generation))
                 for r, h in zip(similars, hits) if not isinstance(h, BaseException)]
        done = [(key, answer) for key, answer in done if answer.cacheable]
        for key, answer in done:
            self._store(key, answer)
        return len(done)

    # ------------------------------------------------------------------ Embed and the miss path

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

    async def _process_misses(self, misses: list[_Miss]) -> list[_Answer | CachedResult | Exception]:
        """A micro-batch: what Redis holds for it (one MGET), then per version the rest computed."""
        results: list = [None] * len(misses)
        for miss in misses:
            miss.progress.enter(BATCHED)
        if self.cache is not None:
            found = await self.cache.get_remote_many([miss.key for miss in misses])
            for i, (miss, cached) in enumerate(zip(misses, found)):
                if cached is not None and self._answers(cached, miss.k, miss.exclusions):
                    results[i] = cached
        by_version: dict[int, list[int]] = defaultdict(list)
        for i, miss in enumerate(misses):
            if results[i] is None:
                by_version[miss.model.version].append(i)
        groups = [self._process_version([misses[i] for i in positions]) for positions in by_version.values()]
        for positions, outcome in zip(by_version.values(),
                                      await asyncio.gather(*groups, return_exceptions=True)):
            for i, position in enumerate(positions):
                results[position] = outcome if isinstance(outcome, Exception) else outcome[i]
        return results

    async def _process_version(self, misses: list[_Miss]) -> list[_Answer | Exception]:
        """One tower call and at most one index RPC for misses of one version.

        A customer the tower does not know gets the version's popular
        candidates: from the local list, or, under a filter, from the index,
        which alone holds the attributes a filter reads."""
        model = misses[0].model
        vectors, known = await self._embed(model, [m.customer_id for m in misses], [m.history for m in misses])
        # Read before the popular list: its deletions are then at least this generation's.
        generation = model.catalogue_generation
        results: list = [None] * len(misses)
        asked: list[tuple[int, str]] = []  # (miss, source) per index query
        queries: list[IndexQuery] = []
        for i, miss in enumerate(misses):
            if known[i]:
                asked.append((i, SOURCE_MODEL))
                queries.append(IndexQuery(vectors[i], miss.k, miss.exclusions, miss.filter,
                                          min_generation=miss.generation))
            elif miss.filter:
                asked.append((i, SOURCE_POPULARITY))
                queries.append(IndexQuery(None, miss.k, miss.exclusions, miss.filter, by_popularity=True,
                                          min_generation=miss.generation))
            else:
                ids, scores = model.popular(miss.k, miss.exclusions)
                results[i] = _Answer(ids, scores, SOURCE_POPULARITY, generation)
                if len(ids) < miss.k:
                    # The popular list ran out (it holds the most popular only, less what is excluded or
                    # deleted): the index fills the rest, as under a filter; without it, the list stands.
                    asked.append((i, SOURCE_POPULARITY))
                    queries.append(IndexQuery(None, miss.k, miss.exclusions, miss.filter, by_popularity=True,
                                              min_generation=miss.generation))
        if queries:
            # The batch's search may take as long as its most patient caller; the others give up on their own.
            deadline = max(misses[i].deadline for i, _ in asked)
            timeout_s = deadline - asyncio.get_running_loop().time()
            for i, _ in asked:
                misses[i].progress.enter(SEARCHING)
            try:
                hits = await self.index.search(queries, model.version, max(timeout_s, 0.001))
            except OverMaxK as e:
                hits = await self._search_within(e, queries, model.version, deadline)
            except ServingError as e:  # fails these requests only; local fallbacks need no index
                hits = [e] * len(queries)
            for (i, source), hit in zip(asked, hits):
                if not isinstance(hit, Exception):
                    results[i] = _Answer(hit.ids, hit.scores, source, hit.generation)
                elif results[i] is None:
                    results[i] = hit
                else:  # a short popular list answers without the index, until the index is back
                    results[i] = dataclasses.replace(results[i], cacheable=False)
        return results

    async def _search_within(self, refused: OverMaxK, queries: list[IndexQuery], version: int,
                             deadline: float) -> list[IndexHits | ServingError]:
        """A batch's search that the index ``refused`` whole for a k over its --max-k, asked again without the
        queries over it, which get the refusal: one caller's k must not fail the others batched with it."""
        hits: list[IndexHits | ServingError] = [refused] * len(queries)
        fit = [i for i, q in enumerate(queries) if q.k <= refused.max_k]
        if fit and len(fit) < len(queries):
            left = max(deadline - asyncio.get_running_loop().time(), 0.001)
            try:
                for i, hit in zip(fit, await self.index.search([queries[i] for i in fit], version, left)):
                    hits[i] = hit
            except ServingError as e:
                for i in fit:
                    hits[i] = e
        return hits

    async def close(self) -> None:
        await self._batcher.close()
        if self.history is not None:
            await self.history.close()
        if self.cache is not None:
            await self.cache.close()  # last: it closes the Redis link the live history shares


def _stored_history(model: QueryModel, customer_id: str) -> tuple[str, ...]:
    """The customer's history as the version stored it (most recent first; empty if unknown)."""
    store = model.customers
    if store is None:
        return ()
    row = store.rows([customer_id])
    return tuple(item for item in store.histories(row, model.takes.history_length)[0] if item)
