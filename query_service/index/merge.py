"""The merge of a sharded version's answers: each shard's top k merged by score into one index's answer, and
crowded searches, whose shards are asked uncrowded (``TOKENS_ONLY``) and as deep as the merge needs to be the
greedy crowding of every candidate (``CrowdedMerge``). Free of gRPC: the router supplies the calls."""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
from typing import Awaitable, Callable, NamedTuple, TypeVar

import cachetools

from query_service.index.searches import IndexHits, IndexQuery, SimilarQuery
from serving import validation
from serving.filters import Filter

Q = TypeVar("Q", IndexQuery, SimilarQuery)

# The crowding limit the shards of a crowded search are asked with: one no answer reaches (the proto's int32 at
# most), so a shard crowds nothing but names each result's tokens, and the merge crowds every shard's candidates
# once. Shards that crowded their own answers lost candidates: one a shard dropped for a neighbour that the merge
# then dropped for another shard's better candidate never came back, and answers came out wrong or short.
TOKENS_ONLY = 2**31 - 1
# How much deeper each round asks a shard whose answer cannot settle a crowded merge (``unsettled``): as the
# index grows its own over-fetch (FETCH_GROWTH), few rounds reach the deepest.
SHARD_GROWTH = 4
# Crowded search shapes (version, filter, k) whose shard depth is remembered (``CrowdedMerge.first_depth``).
DEPTHS_KEPT = 1024
# Searches of a shape in a row that needed a shallower depth than remembered before it is lowered to theirs: the
# depth a shape needs varies by query (one per genre of ml-100k's films in 3 shards, k=10: 480 of a shard's 560 for
# seven queries in ten, 120 for the rest), and a deeper first ask costs less than another round of calls.
DEPTH_HELD = 8


def merge_hits(parts: list[IndexHits], k: int, max_per_value: int = 0) -> IndexHits:
    """The top ``k`` of several shards' answers, best score first (a candidate
    lives in one shard), at most ``max_per_value`` of them sharing a crowding
    token (0: no crowding), kept greedily by score from the shards' answers
    (``TOKENS_ONLY``: uncrowded, each result naming its tokens). The generation is
    the lowest answered: a cache keyed by it never holds an answer older than its key.
    Parts of different generations (shards mid-way through a catalogue rollout) make an
    answer that matches none: it is flagged ``changing``, as a part searched while a
    delta applied is, and so answered but never cached."""
    ids = [i for part in parts for i in part.ids]
    scores = [s for part in parts for s in part.scores]
    # Stable, equal scores in the shards' order: a crowded merge sorts up to 3,000 results, and a tuple of each
    # (score, id, tokens) cost more than the sort. Tokens are read only for the results the crowding passes.
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    if max_per_value:
        starts = list(itertools.accumulate((len(part.ids) for part in parts), initial=0))
        crowding = [part.crowding or [()] * len(part.ids) for part in parts]
        held: dict[str, int] = {}
        full: set[str] = set()  # tokens held max_per_value times
        kept = []
        for n in order:
            owner = bisect.bisect_right(starts, n) - 1
            tokens = crowding[owner][n - starts[owner]]
            if not full.isdisjoint(tokens):
                continue
            kept.append(n)
            if len(kept) == k:
                break
            for t in tokens:
                held[t] = held.get(t, 0) + 1
                if held[t] >= max_per_value:
                    full.add(t)
        order = kept
    order = order[:k]
    return IndexHits([ids[n] for n in order], [scores[n] for n in order], min(p.generation for p in parts),
                     changing=any(p.changing for p in parts) or len({p.generation for p in parts}) > 1)


def shard_depth(k: int, f: Filter, shards: int, max_k: int = validation.DEFAULT_MAX_K) -> int:
    """How many results to ask of each shard first for a merged top ``k``: with crowding, more than ``k`` (up
    to ``max_k``, the most a shard answers at once), since the crowded top k reaches deeper than k into the
    shards' uncrowded answers."""
    return max(k, min(k * shards, max_k)) if f.max_per_value else k


def needed_depth(parts: list[IndexHits], merged: IndexHits, k: int, first: int, deepest: int) -> int:
    """The least depth of ``first`` times a power of ``SHARD_GROWTH`` (at most ``deepest``) at which every shard's
    uncrowded answer in ``parts`` would have settled ``merged``, their crowded top ``k`` (``unsettled``)."""
    if len(merged.ids) < k:
        return deepest
    depth, last = first, merged.scores[-1]
    while depth < deepest and any(len(p.scores) >= depth and p.scores[depth - 1] > last for p in parts):
        depth = min(depth * SHARD_GROWTH, deepest)
    return depth


def unsettled(parts: list[IndexHits], asked: list[int], merged: IndexHits, k: int) -> list[int]:
    """The shards that must answer deeper for ``merged``, the crowded merge of their uncrowded ``parts`` (shard
    ``s`` asked for ``asked[s]``), to be the top ``k`` that one index over every candidate gives. A shard that
    gave all it was asked may hold more below its last score, any of which a greedy crowding might keep: the
    merge is settled when it has ``k`` results, each scoring at least every such shard's last (ties aside)."""
    full = [s for s, part in enumerate(parts) if len(part.ids) >= asked[s]]
    if len(merged.ids) < k:
        return full
    return [s for s in full if parts[s].scores[-1] > merged.scores[-1]]


def union(first: IndexHits, more: IndexHits) -> IndexHits:
    """``first``'s results and those of ``more`` that it lacks (two answers of one shard), for ``merge_hits``."""
    held = set(first.ids)
    extra = [j for j, candidate in enumerate(more.ids) if candidate not in held]
    return IndexHits(first.ids + [more.ids[j] for j in extra], first.scores + [more.scores[j] for j in extra],
                     min(first.generation, more.generation),
                     crowding=list(first.crowding or ()) + [(more.crowding or [])[j] for j in extra],
                     changing=first.changing or more.changing or first.generation != more.generation)


class Ask(NamedTuple):
    """What a crowded merge asks a shard of its query ``query``: ``depth`` results under ``filter``, passing over
    the ``skipped`` ones it holds already (the next results of a shard that answers fewer at once than needed)."""

    query: int
    depth: int
    filter: Filter
    skipped: frozenset[str] = frozenset()

    def of(self, q: Q) -> Q:
        """``q`` (the query) as a shard is asked it."""
        return dataclasses.replace(q, k=self.depth, filter=self.filter,
                                   exclusions=q.exclusions | self.skipped if self.skipped else q.exclusions)


def tokens_only(f: Filter) -> Filter:
    """What a shard of a search with filter ``f`` is asked: ``f`` with any crowding a no-op (``TOKENS_ONLY``)."""
    return dataclasses.replace(f, max_per_value=TOKENS_ONLY) if f.max_per_value else f


class CrowdedMerge:
    """The crowded merges of one router, and how deep recent crowded searches of each shape needed their shards
    to answer (``first_depth``)."""

    def __init__(self) -> None:
        # (version, filter, k) -> (the depth its searches needed, how many in a row needed less since)
        self._depths: cachetools.LRUCache[tuple[int, Filter, int], tuple[int, int]] = cachetools.LRUCache(
            DEPTHS_KEPT)

    def first_depth(self, version: int, q: IndexQuery | SimilarQuery, shards: int, max_k: int) -> int:
        """How many results to ask a shard (answering at most ``max_k``) of ``version`` first for ``q``:
        ``shard_depth``, or as deep as recent crowded searches of its shape needed (``_learn``). How deep a
        crowded top k reaches depends on how its candidates' tokens spread (one per genre in MovieLens reaches
        most of its films), which searches of one shape share: asked step by step, most took three rounds."""
        learnt = self._depths.get((version, q.filter, q.k), (0, 0))[0]
        return min(max(shard_depth(q.k, q.filter, shards, max_k), learnt), max(q.k, max_k))

    def _learn(self, version: int, q: IndexQuery | SimilarQuery, parts: list[IndexHits], merged: IndexHits) -> None:
        """Remembers the depth (``needed_depth``) that ``merged``, the crowded answer to ``q`` from its shards'
        ``parts``, needed, for ``first_depth``: the deepest that searches of its shape needed, until
        ``DEPTH_HELD`` in a row needed less. The shapes least recently searched are forgotten."""
        key = (version, q.filter, q.k)
        depth, shallower = self._depths.pop(key, (0, 0))
        needed = needed_depth(parts, merged, q.k, shard_depth(q.k, q.filter, len(parts)),
                              max(q.k, validation.DEFAULT_MAX_K))
        self._depths[key] = (depth, shallower + 1) if needed < depth and shallower + 1 < DEPTH_HELD else (needed, 0)

    async def merge(self, version: int, queries: list[IndexQuery] | list[SimilarQuery],
                    answers: list[list[IndexHits]], asked: list[list[int]], max_ks: list[int],
                    deeper: Callable[[int, list[Ask]], Awaitable[list[IndexHits]]]) -> list[IndexHits]:
        """Each query's shards' ``answers`` (to ``asked[query][shard]`` results) merged by ``merge_hits``. A
        crowded merge its shards' answers cannot settle (``unsettled``) asks those shards again, ``SHARD_GROWTH``
        times as deep each round, up to the default --max-k (or k): ``deeper(shard, [Ask, ...])`` is that shard's
        answer to each. Without crowding, no call. A shard answering fewer results a search (``max_ks[shard]``,
        its lower --max-k) is asked for the next ones it has, passing over those held (``Ask.skipped``), as far
        as the exclusions a search may carry allow.

        A shard still unsettling a merge at the deepest that reaches is asked once more with the query's own
        crowding, which looks further down the shard (as far as an unsharded index looks), and the merge takes
        both its answers: no longer sure to be exact, but it finds the candidates of a rare token that lie
        deeper than that, as one index would."""
        def merge_query(i: int) -> IndexHits:
            return merge_hits(answers[i], queries[i].k, queries[i].filter.max_per_value)

        merged = [merge_query(i) for i in range(len(queries))]
        own_crowding: set[tuple[int, int]] = set()  # (query, shard) asked with the query's own crowding
        while True:
            wanted: dict[int, list[Ask]] = collections.defaultdict(list)
            for i, q in enumerate(queries):
                if not q.filter.max_per_value:
                    continue
                for shard in unsettled(answers[i], asked[i], merged[i], q.k):
                    held, most = asked[i][shard], max(q.k, max_ks[shard])
                    depth = min(held * SHARD_GROWTH, max(q.k, validation.DEFAULT_MAX_K))
                    if held < depth <= most:
                        wanted[shard].append(Ask(i, depth, tokens_only(q.filter)))
                    elif held < depth and len(q.exclusions) + held <= validation.MAX_EXCLUSIONS:
                        wanted[shard].append(Ask(i, min(depth - held, most), tokens_only(q.filter),
                                                 frozenset(answers[i][shard].ids)))
                    elif (i, shard) not in own_crowding:
                        own_crowding.add((i, shard))
                        wanted[shard].append(Ask(i, q.k, q.filter))
            if not wanted:
                for i, q in enumerate(queries):
                    if q.filter.max_per_value:
                        self._learn(version, q, answers[i], merged[i])
                return merged
            shards = list(wanted)
            for shard, hits in zip(shards, await asyncio.gather(*(deeper(shard, wanted[shard]) for shard in shards))):
                for a, part in zip(wanted[shard], hits):
                    if a.skipped:  # the next results below those held
                        answers[a.query][shard] = union(answers[a.query][shard], part)
                        asked[a.query][shard] += a.depth
                    elif a.filter.max_per_value == TOKENS_ONLY:
                        answers[a.query][shard], asked[a.query][shard] = part, a.depth
                    else:  # the query's own crowding: what it adds to the shard's uncrowded answer
                        answers[a.query][shard] = union(answers[a.query][shard], part)
            for i in {a.query for shard in shards for a in wanted[shard]}:
                merged[i] = merge_query(i)
