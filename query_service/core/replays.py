"""The requests a replica answered, by their bytes as received, and where their results went:
``Recommender.replay`` answers the same bytes again from the in-process tier without parsing,
validating or keying them (that Python was most of what a hit cost beyond a bare gRPC call)."""

from __future__ import annotations

import cachetools

# The memory remembered requests may take (first in, first out; what one takes is ``replay_cost``),
# and the longest request remembered. A request for a customer and k is ~20 bytes; one with long
# lists is rarely sent twice.
REPLAY_BUDGET_BYTES = 32 << 20
REPLAY_MAX_BYTES = 256


def replay_cost(fingerprint: bytes) -> int:
    """What remembering a request takes, estimated from its bytes (tracemalloc: ~700 bytes
    for 21 bytes of customer and k, 1.8 KB for 71, 5.7 KB for 311 of exclusions)."""
    return 300 + 22 * len(fingerprint)


class Replays:
    """Request bytes -> (version, catalogue generation, cache key, the request as ``KeyedRequest.held``,
    ``replay_cost``). A plain tuple, so that the ~46k entries the budget allows leave the garbage
    collector's full collections nothing to walk."""

    def __init__(self) -> None:
        self._entries: cachetools.FIFOCache[bytes, tuple] = cachetools.FIFOCache(
            REPLAY_BUDGET_BYTES, getsizeof=lambda replay: replay[4])

    def note(self, fingerprint: bytes | None, version: int, generation: int, key: str, held: tuple) -> None:
        """Remembers where the request of ``fingerprint`` found or stored its result (none: nothing)."""
        if fingerprint is not None and len(fingerprint) <= REPLAY_MAX_BYTES:
            self._entries[fingerprint] = (version, generation, key, held, replay_cost(fingerprint))

    def get(self, fingerprint: bytes) -> tuple | None:
        """The entry noted for ``fingerprint`` (see the class); None if none."""
        return self._entries.get(fingerprint)
