"""The miss path: what a micro-batch of cache misses costs. One Redis MGET for the batch, then
per version one tower call and at most one index search for the misses Redis does not hold."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from query_service.core.budget import BATCHED, SEARCHING, Progress
from query_service.core.queries import SOURCE_MODEL, SOURCE_POPULARITY, Answer, KeyedRequest, answers
from query_service.index.searches import IndexHits, IndexQuery, OverMaxK, SimilarQuery
from query_service.storage.cache import CachedResult, ResultCache
from query_service.storage.live_history import merged_history
from serving import validation
from serving.errors import DeadlineExceeded, InvalidArgument, ServingError
from serving.filters import Filter

if TYPE_CHECKING:  # TensorFlow: the --workers supervisor imports this module and loads no model
    from query_service.tower import QueryModel


class IndexBackend(Protocol):
    """Search pinned to a version: ``query_service.index.routing.IndexRouter`` in the
    service (gRPC to the index endpoints), an in-process index in unit tests.
    ``timeout_s``: the longest a search may take (a miss's whole budget)."""

    timeout_s: float

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float) -> list[IndexHits]: ...

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float) -> IndexHits: ...


@dataclass(frozen=True)
class Miss:
    """A cache miss waiting in the micro-batcher, pinned to its version."""

    model: QueryModel
    customer_id: str
    k: int
    exclusions: frozenset[str]
    history: tuple[str, ...]  # replaces the stored history of a history-aware tower when non-empty
    filter: Filter
    generation: int  # the catalogue generation the answer must reflect at least
    deadline: float  # event loop time by which the caller needs the answer
    progress: Progress = dataclasses.field(compare=False)  # the stages it reached, which its caller reports
    key: str = ""  # its result's cache key, looked up in Redis with its batch's others (a warm-up's: none)


def excluded(model: QueryModel, request: KeyedRequest) -> frozenset[str]:
    """What ``request``'s search excludes in ``model``'s version: with exclude_seen, the customer's
    stored, live and recent items too; InvalidArgument when that passes ``MAX_EXCLUSIONS``."""
    exclusions = request.exclusions
    if request.exclude_seen:
        exclusions = (exclusions | model.seen(request.customer_id) | frozenset(request.recent)
                      | frozenset(request.live))
        if len(exclusions) > validation.MAX_EXCLUSIONS:
            raise InvalidArgument(
                f"exclude_seen adds the customer's interactions to the exclusions: {len(exclusions)} in all, "
                f"over the limit of {validation.MAX_EXCLUSIONS}; send fewer exclude_candidate_ids or "
                "recent_candidate_ids, or leave exclude_seen off")
    return exclusions


def miss(model: QueryModel, request: KeyedRequest, budget_s: float, progress: Progress, key: str = "") -> Miss:
    """``request`` (its live history read) as a miss of ``model``'s version, due within ``budget_s``."""
    exclusions = excluded(model, request)
    history = tower_history(model, request.customer_id, request.recent, request.live)
    deadline = asyncio.get_running_loop().time() + budget_s
    return Miss(model, request.customer_id, request.k, exclusions, history, request.filter,
                model.catalogue_generation, deadline, progress, key)


def tower_history(model: QueryModel, customer_id: str, recent: tuple[str, ...],
                  live: tuple[str, ...]) -> tuple[str, ...]:
    """A history-aware tower's input for a customer, most recent first: the request's ``recent`` items, which replace
    the stored history (empty: the tower reads the stored one), until the customer has a ``live`` history; then the
    request's, the live and the stored items, merged. Recommend's and Embed's rule."""
    if live and model.takes.history_length:
        return merged_history(recent, live, _stored_history(model, customer_id))
    return recent


class MissPath:
    """Answers micro-batches of misses: tower calls run on ``executor`` threads, searches on ``index``;
    ``cache``: Redis, looked up first (None: no cache)."""

    def __init__(self, index: IndexBackend, cache: ResultCache | None, executor: ThreadPoolExecutor):
        self.index = index
        self.cache = cache
        self.executor = executor

    async def embed(self, model: QueryModel, customer_ids: list[str],
                    recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Table lookups run inline (microseconds); a tower call runs on the executor."""
        found = model.lookup(customer_ids, recent)
        if found is not None:
            return found
        return await asyncio.get_running_loop().run_in_executor(self.executor, model.embed, customer_ids, recent)

    async def process(self, misses: list[Miss]) -> list[Answer | CachedResult | Exception]:
        """A micro-batch: what Redis holds for it (one MGET), then per version the rest computed."""
        results: list = [None] * len(misses)
        for miss in misses:
            miss.progress.enter(BATCHED)
        if self.cache is not None:
            found = await self.cache.get_remote_many([miss.key for miss in misses])
            for i, (miss, cached) in enumerate(zip(misses, found)):
                if cached is not None and answers(cached, miss.k, miss.exclusions):
                    results[i] = cached
        by_version: dict[int, list[int]] = defaultdict(list)
        for i, miss in enumerate(misses):
            if results[i] is None:
                by_version[miss.model.version].append(i)
        groups = [self.process_version([misses[i] for i in positions]) for positions in by_version.values()]
        for positions, outcome in zip(by_version.values(),
                                      await asyncio.gather(*groups, return_exceptions=True)):
            for i, position in enumerate(positions):
                results[position] = outcome if isinstance(outcome, Exception) else outcome[i]
        return results

    async def process_version(self, misses: list[Miss]) -> list[Answer | Exception]:
        """One tower call and at most one index RPC for misses of one version.

        A customer the tower does not know gets the version's popular
        candidates: from the local list, or, under a filter, from the index,
        which alone holds the attributes a filter reads."""
        model = misses[0].model
        vectors, known = await self.embed(model, [m.customer_id for m in misses], [m.history for m in misses])
        catalogue = model.catalogue  # one snapshot: the popular list's deletions are exactly its generation's
        generation = catalogue.generation
        results: list = [None] * len(misses)
        asked: list[tuple[int, str]] = []  # (miss, source) per index query
        queries: list[IndexQuery] = []
        now = asyncio.get_running_loop().time()
        for i, miss in enumerate(misses):
            if miss.deadline <= now:
                # Its caller has given up (its own timer answers it): its index query would be answered to no one
                # (under overload 1,291 index calls of batched misses answered 614 callers in time).
                results[i] = DeadlineExceeded("the request's deadline passed before its index search")
            elif known[i]:
                asked.append((i, SOURCE_MODEL))
                queries.append(IndexQuery(vectors[i], miss.k, miss.exclusions, miss.filter,
                                          min_generation=miss.generation))
            elif miss.filter:
                asked.append((i, SOURCE_POPULARITY))
                queries.append(IndexQuery(None, miss.k, miss.exclusions, miss.filter, by_popularity=True,
                                          min_generation=miss.generation))
            else:
                ids, scores = model.popular(miss.k, miss.exclusions, catalogue)
                results[i] = Answer(ids, scores, SOURCE_POPULARITY, generation)
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
                    results[i] = Answer.searched(hit, source)
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


def _stored_history(model: QueryModel, customer_id: str) -> tuple[str, ...]:
    """The customer's history as the version stored it (most recent first; empty if unknown)."""
    store = model.customers
    if store is None:
        return ()
    row = store.rows([customer_id])
    return tuple(item for item in store.histories(row, model.takes.history_length)[0] if item)
