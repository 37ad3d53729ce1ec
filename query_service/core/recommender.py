"""The query service's core: Recommend, RecommendSimilar, BatchRecommend,
RecordInteractions and Embed, free of gRPC.

A request pins one version for its whole life (a batch, one for all its
items): it resolves the live version once, looks the result up in the cache
under that version's key, and on a miss embeds with that version's tower and
searches that version's index, so a promotion in the middle of a request
cannot mix versions. A Recommend the in-process tier cannot answer goes to the
micro-batcher at once: the batch looks its requests up in Redis with one MGET,
then embeds and searches for those Redis does not hold (``misses``), so misses
that queue together share one Redis round trip as they share a tower call and
a search.

A cache key also carries the catalogue generation the replica knows for the
version (``QueryModel.catalogue_generation``), so a catalogue delta is never
answered from results of the catalogue before it. A result is stored under the
generation it was computed from (the index names it), never a newer one, and
searches go only to index endpoints that have caught up with the replica.

The live interaction history (``live_history``) is read before the cache
lookup, when it can change the result (history-aware towers, exclude_seen),
and its items are part of the key: a recorded interaction makes the
customer's earlier results unreachable, with nothing to invalidate.

``warm`` answers the replica's most recent requests with a version loaded
beside the live one, before it is promoted (``warmup``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Hashable, Sequence

from query_service.batching import BatchingConfig, MicroBatcher
from query_service.core import misses
from query_service.core.budget import QUEUED, SEARCHING, Progress, within_budget
from query_service.core.misses import IndexBackend, Miss, MissPath
from query_service.core.queries import (SOURCE_MODEL, Answer, Embedding, KeyedRequest, Recommendation, RecommendQuery,
                                        answers, hit)
from query_service.core.replays import Replays
from query_service.core.warmup import Warmup, WarmupConfig
from query_service.index.searches import SimilarQuery
from query_service.storage.cache import CachedResult, ResultCache, similar_key
from query_service.storage.live_history import LiveHistory
from serving import validation
from serving.errors import InvalidArgument, Unavailable
from serving.filters import NO_FILTER, Filter
from serving.lifecycle.versions import VersionManager

if TYPE_CHECKING:  # TensorFlow: the --workers supervisor imports this module and loads no model
    from query_service.tower import QueryModel

# The miss micro-batcher's ``recsys_batch_size`` series, named for the method that batched misses when it began:
# kept, so that dashboards and alerts on it keep their series whatever the code's names.
MISS_BATCHER = "Recommender._process_misses"


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
        self.max_k = max_k
        self.max_batch_requests = max_batch_requests
        self._misses = MissPath(index, cache, executor)
        self._batcher: MicroBatcher[Miss, Answer] = MicroBatcher(self._misses.process, batching, MISS_BATCHER)
        # A Recommend request is remembered as ``KeyedRequest.held()``, as a replay entry holds it.
        self._warmup = Warmup(warmup) if cache is not None and warmup.requests > 0 else None
        self._replays = Replays() if cache is not None and cache.holds_local else None

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
        ``answer`` it). Nothing is parsed, validated or keyed again (``replays``).
        Requests whose result reads the live interaction history are never replayed:
        it changes under them."""
        replay = self._replays.get(fingerprint) if self._replays is not None else None
        if replay is None:
            return None
        version, model = self.manager.get()
        replayed_version, generation, key, held, _ = replay
        if version != replayed_version or model.catalogue_generation != generation:
            return None
        cached = self.cache.get_local(key)
        k, exclusions = held[1], held[2]  # see KeyedRequest.held
        if cached is None or not answers(cached, k, exclusions):
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
                misses.excluded(model, request)

        async def one(i: int, request: KeyedRequest) -> Recommendation:
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

    def _check(self, model: QueryModel, query: RecommendQuery) -> KeyedRequest:
        """``query`` validated for ``model``'s version (its filter's namespaces included)."""
        validation.check_id(query.customer_id, "customer_id")
        validation.check_k(query.k, self.max_k)
        excluded = validation.check_exclusions(query.exclusions)
        recent = validation.check_id_list(query.recent, "recent_candidate_ids", validation.MAX_RECENT)
        model.check_filter(query.filter)
        return KeyedRequest(query.customer_id, query.k, excluded, recent, query.exclude_seen, query.filter)

    def _reads_live(self, model: QueryModel, request: KeyedRequest) -> bool:
        """Whether ``request``'s result depends on the live history: a history-aware tower, or exclude_seen."""
        return self.history is not None and (request.exclude_seen or bool(model.takes.history_length))

    async def _with_live(self, request: KeyedRequest) -> KeyedRequest:
        """``request`` with the customer's live history (see ``_reads_live``)."""
        live = await self.history.get(request.customer_id)
        return dataclasses.replace(request, live=live) if live else request

    async def _recommend(self, version: int, model: QueryModel, request: KeyedRequest,
                         timeout_s: float | None, fingerprint: bytes | None = None) -> Recommendation:
        """``request`` (its live history read, where ``_reads_live``) answered from ``version``."""
        generation = model.catalogue_generation
        key = request.key(self.model, model, generation)
        held = request.held()
        answer = self._lookup_local(key, request.k, request.exclusions)
        if answer is None:
            # Not held in process: the micro-batch looks it up in Redis, one MGET for the batch,
            # and computes it if Redis does not hold it (then it is an Answer).
            answer = await within_budget(
                lambda budget, progress: self._batcher.submit(misses.miss(model, request, budget, progress, key)),
                timeout_s, self.index.timeout_s, QUEUED)
        if isinstance(answer, CachedResult):
            self._note_replay(fingerprint, version, generation, key, held)
            return self._hit(version, generation, held, answer)
        self._remember(held)  # answered: a request that fails is not worth warming
        if answer.generation != generation:
            key = request.key(self.model, model, answer.generation)
        if answer.cacheable:
            self._store(key, answer)
            self._note_replay(fingerprint, version, answer.generation, key, held)
        return Recommendation(answer.ids, answer.scores, version, answer.source, False, answer.generation)

    def _hit(self, version: int, generation: int, held: tuple, cached: CachedResult) -> Recommendation:
        self._remember(held)
        return hit(cached, version, generation)

    def _note_replay(self, fingerprint: bytes | None, version: int, generation: int, key: str, held: tuple) -> None:
        if self._replays is not None:
            self._replays.note(fingerprint, version, generation, key, held)

    async def _lookup(self, key: str, k: int, exclusions: frozenset[str]) -> CachedResult | None:
        """RecommendSimilar's lookup: the in-process tier, then Redis (a Recommend
        miss is looked up in Redis by its micro-batch instead)."""
        cached = self._lookup_local(key, k, exclusions)
        if cached is not None or self.cache is None:
            return cached
        cached = await self.cache.get_remote(key)
        return cached if cached is not None and answers(cached, k, exclusions) else None

    def _lookup_local(self, key: str, k: int, exclusions: frozenset[str]) -> CachedResult | None:
        # The in-process tier, without a coroutine: most hits end there.
        cached = self.cache.get_local(key) if self.cache is not None else None
        return cached if cached is not None and answers(cached, k, exclusions) else None

    def _store(self, key: str, answer: Answer) -> None:
        if self.cache is not None:
            self.cache.put_in_background(key, CachedResult(answer.ids, answer.scores, answer.source))

    def _similar_key(self, tower: QueryModel, query: SimilarQuery, generation: int) -> str:
        return similar_key(self.model, tower.version, query.candidate_id, query.k, query.exclusions,
                           generation=generation, filter_key=query.filter.key(), identity=tower.identity)

    def _remember(self, request: Hashable) -> None:
        if self._warmup is not None:
            self._warmup.remember(request)

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
        cached = await self._lookup(self._similar_key(model, request, generation), k, excluded | {candidate_id})
        if cached is not None:
            self._remember(request)
            return hit(cached, version, generation)
        query = dataclasses.replace(request, min_generation=generation)
        hits = await within_budget(lambda budget, _: self.index.similar(query, version, budget), timeout_s,
                                   self.index.timeout_s, SEARCHING)
        self._remember(request)
        answer = Answer.searched(hits)
        if answer.cacheable:
            self._store(self._similar_key(model, request, hits.generation), answer)
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
        caches the results; returns how many were cached (``Warmup.run``)."""
        if self._warmup is None:
            return 0
        _, model = self.manager.get(version)
        return await self._warmup.run(version, lambda batch: self._warm_batch(version, model, batch))

    async def _warm_batch(self, version: int, model: QueryModel, batch: list[tuple | SimilarQuery]) -> int:
        """Answers ``batch`` with ``version`` (its Recommend requests in one tower
        call and index search, its RecommendSimilar requests side by side) and
        caches the answers; returns how many it cached."""
        recommends, to_answer = [], []
        for held in batch:
            if isinstance(held, tuple):
                request = KeyedRequest.from_held(held)
                try:  # what this version refuses, as it would the request itself, stays out, not its batch
                    model.check_filter(request.filter)
                    to_answer.append(misses.miss(model, request, self.index.timeout_s, Progress()))
                except InvalidArgument:
                    continue
                recommends.append(request)
        similars = [r for r in batch if isinstance(r, SimilarQuery)]
        generation = model.catalogue_generation
        answered = await self._misses.process_version(to_answer) if to_answer else []
        hits = await asyncio.gather(*(self.index.similar(dataclasses.replace(r, min_generation=generation), version,
                                                         self.index.timeout_s) for r in similars),
                                    return_exceptions=True)
        done = [(r.key(self.model, model, a.generation), a) for r, a in zip(recommends, answered)
                if not isinstance(a, BaseException)]
        done += [(self._similar_key(model, r, h.generation), Answer.searched(h))
                 for r, h in zip(similars, hits) if not isinstance(h, BaseException)]
        done = [(key, answer) for key, answer in done if answer.cacheable]
        for key, answer in done:
            self._store(key, answer)
        return len(done)

    # ------------------------------------------------------------------ Embed

    async def embed(self, customer_id: str) -> Embedding:
        """The customer's query-tower embedding in the live version, from the input its Recommend gives the tower:
        a history-aware tower's takes the customer's live history too (``misses.tower_history``)."""
        validation.check_id(customer_id, "customer_id")
        version, model = self.manager.get()
        live = await self.history.get(customer_id) if self.history is not None and model.takes.history_length else ()
        history = misses.tower_history(model, customer_id, (), live)
        vectors, known = await self._misses.embed(model, [customer_id], [history])
        return Embedding(vectors[0], version, bool(known[0]))

    async def close(self) -> None:
        await self._batcher.close()
        if self.history is not None:
            await self.history.close()
        if self.cache is not None:
            await self.cache.close()  # last: it closes the Redis link the live history shares
