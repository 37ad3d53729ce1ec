"""The result cache's in-process tier: an LRU bounded in bytes whose entries expire.

Written here rather than taken from cachetools because of Python's garbage
collector. Its full collections walk every object it tracks while requests
wait, and a replica holds up to ~70k results of k = 10 at the default 256 MiB: cachetools' TTLCache keeps a
Python link object per entry (its expiry list), and the result held is an
object too, so a full collection took 75-101 ms at 13-15k held results under
load (docs/BENCHMARKS.md). Here an entry is a plain tuple of strings, floats and
tuples of them, which the collector stops tracking once it has seen its
contents untracked (by the second collection it takes part in), kept in an
``OrderedDict``, whose order costs no Python objects. A tuple holding a dict is
tracked for good, so what the RPC layer renders from a result lives beside it."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Iterator

from query_service.storage.result import CachedResult


class LocalTier:
    """Results by key, the least recently used dropped first once their sizes
    (``sizeof``) pass ``max_bytes``; each expires ``ttl_s`` after it was stored.

    An expired entry is dropped when it is looked up, or when it is the least
    recently used one at a put; until then it counts against ``max_bytes``, so
    the bound holds either way."""

    def __init__(self, max_bytes: int, ttl_s: float, sizeof: Callable[[CachedResult], int]):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.currsize = 0  # bytes held, by ``sizeof``
        self._sizeof = sizeof
        # key -> (expires at, size, ids, scores, source): CachedResult's fields, in a tuple the collector drops.
        self._entries: OrderedDict[str, tuple] = OrderedDict()
        # key -> its result's ``rendered``, from the first hit on (a dict of bytes is untracked too).
        self._rendered: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._rendered.clear()
        self.currsize = 0

    def get(self, key: str) -> CachedResult | None:
        """The result under ``key``, now the most recently used; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = {}
        return CachedResult(entry[2], entry[3], entry[4], rendered)

    def put(self, key: str, result: CachedResult, ttl_s: float | None = None) -> None:
        """Holds ``result`` under ``key`` (replacing what was there) for ``ttl_s`` (at most, and by
        default, the tier's TTL), dropping the least recently used results until the tier fits;
        one larger than the whole tier, or already expired (``ttl_s`` <= 0), is not held."""
        size = self._sizeof(result)
        if size > self.max_bytes:
            return
        self._drop(key)
        now = time.monotonic()
        ttl_s = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl_s <= 0:  # held, it would be the oldest expired entry, dropped at once with nothing after it
            return
        self._entries[key] = (now + ttl_s, size, result.ids, result.scores, result.source)
        self.currsize += size
        while True:
            oldest, entry = next(iter(self._entries.items()))
            if self.currsize <= self.max_bytes and entry[0] > now:
                break
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.currsize -= entry[1]
            self._rendered.pop(key, None)
