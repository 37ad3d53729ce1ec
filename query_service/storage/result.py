"""A cached result and its encoding in Redis."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CachedResult:
    """A cached Recommend result. Its ids and scores are held as tuples: the in-process tier holds
    up to ~100k results, and every list among them would be an object that each full collection of
    Python's garbage collector walks while requests wait (tuples of strings and floats it stops
    tracking; ``LocalTier`` holds these fields in such a tuple)."""

    ids: tuple[str, ...]
    scores: tuple[float, ...]
    source: str
    # What the RPC layer built from this result, kept with it: the result never changes, so a hit of
    # the in-process tier returns the response the first hit built (opaque here; gRPC-free).
    rendered: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "scores", tuple(self.scores))

    def encode(self) -> bytes:
        return json.dumps([self.ids, self.scores, self.source]).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "CachedResult | None":
        """The result ``payload`` holds, or None unless it is well formed: ids
        (distinct strings) and finite, non-increasing scores of one length."""
        try:
            ids, scores, source = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not (isinstance(ids, list) and isinstance(scores, list) and isinstance(source, str)
                and len(ids) == len(scores) and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)
                and all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores)
                and all(a >= b for a, b in zip(scores, scores[1:]))):
            return None
        return cls(ids, [float(s) for s in scores], source)
