"""What the query service's core asks of an index and gets back, free of gRPC:
a search (``IndexQuery``, ``SimilarQuery``), its answer (``IndexHits``), and the
refusal of a k over an index's --max-k (``OverMaxK``). ``index_client`` carries
them to the index endpoints and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serving import errors
from serving.filters import NO_FILTER, Filter


@dataclass(frozen=True)
class IndexQuery:
    """One search. ``vector`` None with ``by_popularity``: the version's most
    popular candidates passing ``filter``. ``min_generation``: the catalogue
    generation the answer must reflect at least (the asking tower's)."""

    vector: np.ndarray | None
    k: int
    exclusions: frozenset[str]
    filter: Filter = NO_FILTER
    by_popularity: bool = False
    min_generation: int = 0


@dataclass(frozen=True)
class SimilarQuery:
    """The candidates nearest to ``candidate_id`` (itself excluded)."""

    candidate_id: str
    k: int
    exclusions: frozenset[str]
    filter: Filter = NO_FILTER
    min_generation: int = 0


@dataclass(frozen=True)
class IndexHits:
    ids: list[str]
    scores: list[float]
    generation: int = 0  # the catalogue generation the endpoint answered from
    vector: np.ndarray | None = None  # a similar-candidate search's, when asked for
    crowding: Sequence[tuple[str, ...]] | None = None  # with crowding: each result's tokens (a merge crowds again)
    changing: bool = False  # searched while the endpoint applied a catalogue delta: may hold part of it


class TimedOut(errors.Unavailable):
    """An index call that ran out of its time (the caller's, or --index-timeout-s): UNAVAILABLE to the caller as any
    failed index call, but not one for another replica to try, since that try would have no time either (under
    overload 983 such doomed retries each also passed over a healthy replica for a second)."""


class OverMaxK(errors.InvalidArgument):
    """A search refused for a k over the most results the index endpoint answers (its --max-k, ``max_k``): the
    caller's to lower, not another replica's to try (a sharded search asks its shards no deeper)."""

    def __init__(self, message: str, max_k: int):
        super().__init__(message)
        self.max_k = max_k
