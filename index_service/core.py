"""The index service's core: search over the version this slot holds, and its
status for watchers. Knows nothing of gRPC; the servicer translates protos to
these calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, ContextManager, Sequence

import numpy as np

from index_service.searcher import CandidateIndex, SearchResult
from model_registry.deltas import MAX_UPSERT_SCALE
from serving import validation
from serving.errors import InvalidArgument
from serving.filters import NO_FILTER, Filter
from serving.lifecycle.versions import VersionManager
from settings.flags import option, require

# About 0.1 ms of ScaNN at 64 dims (a 1M tree-AH query scores ~30k rows): less
# than handing the search to a thread and back costs the event loop.
INLINE_MAX_ROWS = 50_000
# The most a query vector's norm times the largest norm of a version's trained candidates may be, which bounds its
# scores: float32's largest value, with room for tree-AH's scoring, which adds a query's score against a partition
# centre to its scores against quantized residuals (whose norms may reach twice the candidates' largest), and for
# catalogue candidates up to the MAX_UPSERT_SCALE times the trained ones that the publisher takes.
MAX_SCORE_BOUND = float(np.finfo(np.float32).max) / (16 * MAX_UPSERT_SCALE)


@dataclass(frozen=True)
class SearchLimits:
    """What one search call may ask; a call over a limit is refused before any work."""

    max_k: int = option(validation.DEFAULT_MAX_K, "largest k a request may ask")
    max_batch_queries: int = option(validation.DEFAULT_MAX_BATCH_QUERIES, "most queries in one BatchSearch")
    max_batch_results: int = option(validation.DEFAULT_MAX_BATCH_RESULTS,
                                    "most results one call may compute: queries x the largest k (the query "
                                    "service splits its batches at the defaults of this and --max-batch-queries)")

    def __post_init__(self) -> None:
        require(self.max_k >= 1, "max_k", "must be >= 1")
        require(self.max_batch_queries >= 1, "max_batch_queries", "must be >= 1")
        require(self.max_batch_results >= self.max_k, "max_batch_results", "must be >= max_k")


@dataclass(frozen=True)
class Answer:
    """Which version answered, and its catalogue generation when the search
    began. ``changing``: a catalogue delta applied during the search, or was
    part-applied when it began, so the answer may hold part of the next
    generation's changes: right for its caller, not to be cached as that
    generation's."""

    version: int
    generation: int
    id_chars: int | None = None  # at least the characters of the version's longest id (None: not known)
    changing: bool = False


@dataclass(frozen=True)
class Query:
    """One query of a (batch) search, as received; validated by ``IndexCore``."""

    vector: Sequence[float]  # the request's repeated field as it came: converted once per batch
    k: int
    exclusions: tuple[str, ...] = ()
    filter: Filter = NO_FILTER
    by_popularity: bool = False  # rank by the version's popularity; the vector is empty


# Three missed keepalives take the slot out of routing: 0.3 s makes that under a second for a hung process (a dead
# one's stream breaks at once).
KEEPALIVE_S = 0.3


class IndexCore:
    """Search over the versions in ``manager``, and a stream of its changes.

    Searches run on ``search_executor`` threads so the event loop keeps serving
    while ScaNN works (ScaNN releases the GIL, so two threads use both cores),
    except small calls (under ``INLINE_MAX_ROWS`` rows read by all their queries,
    ``CandidateIndex.rows_scanned``): those take less time than the hop to a
    thread and back, so they run inline.
    """

    def __init__(self, manager: VersionManager[CandidateIndex], search_executor: ThreadPoolExecutor,
                 limits: SearchLimits = SearchLimits(), keepalive_s: float = KEEPALIVE_S):
        self.manager = manager
        self.executor = search_executor
        self.limits = limits
        self.keepalive_s = keepalive_s
        self.last_search = -float("inf")  # time.monotonic() of the latest search
        self._generation = 0
        self._draining = False
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        manager.listen(self._on_change)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attaches the event loop that serves watchers (changes come from loader threads)."""
        self._loop = loop
        self._changed = asyncio.Condition()

    def _on_change(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))

    async def _notify(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def drain(self) -> None:
        """Ends every stream of ``changes``, and any begun from now on: the slot
        is going away. Its watchers route around it while it still answers the
        searches already sent, and its stop need not wait for their streams (nor
        cancel them)."""
        self._draining = True
        self._on_change()

    async def changes(self) -> AsyncIterator[None]:
        """Yields now, then after every change of the held versions, and at
        least every ``keepalive_s`` (so a watcher can tell a hung process);
        ends once ``drain`` is called."""
        while not self._draining:
            seen = self._generation
            yield
            async with self._changed:
                # asyncio.timeout, not wait_for: wait_for runs the wait in a task of its own, which a stream
                # cancelled while that task was cancelled for the timeout left to take the lock after this block had
                # released it ("Lock is not acquired"); the lock then stayed taken, and every stream of the slot
                # hung for good. Here Condition.wait takes the lock back before the block ends, however it ends.
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        await self._changed.wait_for(lambda: self._generation != seen)
                except TimeoutError:
                    pass

    def shard(self) -> tuple[int, int]:
        """(shard, of how many) of the version held; (0, 0) for an unsharded one or none."""
        held = [index.shard for _, index in self.manager.states().values() if index is not None and index.shard]
        return held[0] if held else (0, 0)

    def check_batch(self, ks: list[int]) -> None:
        """Refuses a batch over the limits (see ``SearchLimits``) before any work."""
        validation.check_batch(ks, self.limits.max_batch_queries, self.limits.max_batch_results)

    async def search(self, queries: list[Query], version: int, field: str | None = None) \
            -> tuple[Answer, list[SearchResult]]:
        """Searches every query in one version; returns (what answered, results). ``field``: the request's
        repeated field that held the queries (BatchSearch's ``queries``), which a refusal of one of them names
        with its index; None for a lone query."""
        self.check_batch([q.k for q in queries])
        index = self._index(version)
        before = index.catalogue_state()
        ks, exclusions = [], []
        results: list[SearchResult | None] = [None] * len(queries)
        # Queries of one filter share a ScaNN call; the popularity-ranked ones need no vector.
        groups: dict[Filter, list[int]] = {}
        popular: list[int] = []
        checked: set[Filter] = set()
        for i, q in enumerate(queries):
            with _naming(field, i):
                ks.append(validation.check_k(q.k, self.limits.max_k))
                exclusions.append(validation.check_exclusions(q.exclusions))
                if q.filter not in checked:
                    index.attributes.check(q.filter)  # here, where the query is known (the search checks again)
                    checked.add(q.filter)
                if q.by_popularity:
                    if q.vector:
                        raise InvalidArgument("by_popularity is set with a vector: send one or the other")
                    popular.append(i)
                    continue
            groups.setdefault(q.filter, []).append(i)
        vectors = {f: self._vectors(queries, members, index, field) for f, members in groups.items()}
        # Inline or on a thread, the call as a whole: many small groups (a filter each) add up. A group's ScaNN call
        # fetches its largest k and room for its longest exclusions (CandidateIndex.search).
        fetches = {f: max(ks[i] for i in members) + max(len(exclusions[i]) for i in members)
                   for f, members in groups.items()}
        rows = index.rows_scanned(len(popular), by_popularity=True) + sum(
            index.rows_scanned(len(members), f, fetch=fetches[f]) for f, members in groups.items())
        for i in popular:
            results[i] = await self._run(rows, index.by_popularity, ks[i], exclusions[i], queries[i].filter)
        for f, members in groups.items():
            found = await self._run(rows, index.search, vectors[f], max(ks[i] for i in members),
                                    [exclusions[i] for i in members], f)
            for i, result in zip(members, found):
                results[i] = result
        return self._answer(index, before), [r.head(qk) for r, qk in zip(results, ks)]

    @staticmethod
    def _vectors(queries: list[Query], members: list[int], index: CandidateIndex, field: str | None) -> np.ndarray:
        """The query vectors of ``members`` as one checked matrix (dimension, finite, scores in float32's range)."""
        try:
            vectors = validation.check_vectors([queries[i].vector for i in members], index.dim, index.version)
        except InvalidArgument:
            for i in members:  # the check of the whole group says what is wrong, not of which query
                with _naming(field, i):
                    validation.check_vectors([queries[i].vector], index.dim, index.version)
            raise
        _check_scores(vectors, index, field, members)
        return vectors

    async def similar(self, candidate_id: str, k: int, exclusions: tuple[str, ...], f: Filter,
                      version: int) -> tuple[Answer, SearchResult]:
        """The k nearest candidates to a candidate of ``version``, itself excluded."""
        validation.check_id(candidate_id, "candidate_id")
        validation.check_k(k, self.limits.max_k)
        excluded = validation.check_exclusions(exclusions)
        index = self._index(version)
        before = index.catalogue_state()
        result = await self._run(index.rows_scanned(1, f, fetch=k + len(excluded) + 1), index.similar, candidate_id, k,
                                 excluded, f)
        return self._answer(index, before), result

    @staticmethod
    def _answer(index: CandidateIndex, before: tuple[int, int, bool]) -> Answer:
        """What answered a search of ``index`` begun at catalogue state ``before`` (``catalogue_state``); called
        once it is done: a delta applied meanwhile may have widened the ids, never narrowed them."""
        generation, changes, settled = before
        return Answer(index.version, generation, index.rows.id_chars,
                      changing=not settled or index.catalogue_state()[1] != changes)

    def _index(self, version: int) -> CandidateIndex:
        if version < 0:
            raise InvalidArgument(f"model_version={version} is negative: pass 0 for the version this slot holds")
        self.last_search = time.monotonic()
        return self.manager.get(version)[1]

    async def _run(self, rows: int, search, *args):
        """A call reading about ``rows`` rows inline if small, else on the search threads (see the class docstring)."""
        if rows <= INLINE_MAX_ROWS:
            return search(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, search, *args)


def _naming(field: str | None, i: int) -> ContextManager[None]:
    """Names query ``i`` of ``field`` in an InvalidArgument raised within (see ``validation.item``); a lone
    query's (``field`` None) as it is."""
    return validation.item(field, i) if field else contextlib.nullcontext()


def _check_scores(vectors: np.ndarray, index: CandidateIndex, field: str | None, members: list[int]) -> None:
    """Refuses a query vector whose scores against ``index`` could pass float32's range (see ``MAX_SCORE_BOUND``):
    ScaNN would answer scores of inf (or NaN) in no meaningful order. Row j of ``vectors`` is query ``members[j]``
    of ``field``."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    scale = index.rows.trained_max_norm
    over = np.flatnonzero(norms * scale > MAX_SCORE_BOUND)
    if len(over):
        with _naming(field, members[over[0]]):
            raise InvalidArgument(
                f"query vector has norm {norms[over[0]]:.3g}: its scores against version {index.version}'s candidates "
                f"(trained norms up to {scale:.3g}) could pass float32's range ({MAX_SCORE_BOUND:.3g} allowed for the "
                f"product of the norms): scale it down (a vector's scale does not change the ranking)")
