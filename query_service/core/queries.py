"""What the query paths are asked and answer, free of gRPC: a Recommend request as
received and as keyed for the cache, a computed answer, and the answer a caller gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Sequence

import numpy as np

from query_service.index.searches import IndexHits
from query_service.storage.cache import CachedResult, cache_key
from serving.filters import NO_FILTER, Filter

if TYPE_CHECKING:  # its module imports TensorFlow
    from query_service.tower import QueryModel

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"


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
class KeyedRequest:
    """A validated Recommend request: what a cached result depends on besides the version and
    the catalogue generation (see ``cache_key``); ``live``: the live history, when it can change
    the result."""

    customer_id: str
    k: int
    exclusions: frozenset[str]
    recent: tuple[str, ...]
    exclude_seen: bool
    filter: Filter = NO_FILTER
    live: tuple[str, ...] = ()

    def key(self, model: str, tower: QueryModel, generation: int) -> str:
        """The cache key of this request answered by ``tower``'s version at catalogue ``generation``."""
        return cache_key(model, tower.version, self.customer_id, self.k, self.exclusions, self.recent,
                         self.exclude_seen, generation=generation, live=self.live, filter_key=self.filter.key(),
                         identity=tower.identity)

    def held(self) -> tuple:
        """This request as a plain tuple of strings, numbers and tuples of them (``from_held`` is
        the inverse), which the garbage collector stops tracking; a frozenset, a filter or the
        request itself would keep it tracked (only a request with a filter holds one)."""
        return (self.customer_id, self.k, tuple(self.exclusions), self.recent, self.exclude_seen,
                None if self.filter is NO_FILTER else self.filter, self.live)

    @classmethod
    def from_held(cls, held: tuple) -> "KeyedRequest":
        customer_id, k, exclusions, recent, exclude_seen, filter, live = held
        return cls(customer_id, k, frozenset(exclusions), recent, exclude_seen, NO_FILTER if filter is None else filter,
                   live)


@dataclass(frozen=True)
class Answer:
    """A computed result and the catalogue generation it reflects. Not ``cacheable``: a fallback short of k
    because the index failed, which must not be served once the index is back, or an index answer searched while
    the index applied a catalogue delta (``IndexHits.changing``), which may hold part of the next generation."""

    ids: list[str]
    scores: list[float]
    source: str
    generation: int
    cacheable: bool = True

    @classmethod
    def searched(cls, hits: IndexHits, source: str = SOURCE_MODEL) -> Answer:
        """The index's answer ``hits`` as a computed result."""
        return cls(hits.ids, hits.scores, source, hits.generation, cacheable=not hits.changing)


def answers(cached: CachedResult, k: int, exclusions: Collection[str]) -> bool:
    """Whether a cached result can answer a request for ``k`` without ``exclusions`` (a set, or
    the tuple of a held request); a corrupt or forged one cannot: its key's miss path then overwrites it."""
    return (len(cached.ids) <= k and cached.source in (SOURCE_MODEL, SOURCE_POPULARITY)
            and (not exclusions or frozenset(exclusions).isdisjoint(cached.ids)))


def hit(cached: CachedResult, version: int, generation: int) -> Recommendation:
    """A cache hit's answer. The cache holds tuples (``CachedResult``); a Recommendation's are lists
    whatever its path."""
    return Recommendation(list(cached.ids), list(cached.scores), version, cached.source, True, generation,
                          cached.rendered)
