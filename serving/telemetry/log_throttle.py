"""Log lines of a recurring fault, throttled: free of gRPC, for the services' cores and RPC layers alike."""

from __future__ import annotations

import time


class LogThrottle:
    """At most one log line per key every so often: a fault every request meets
    (a bad Redis value, a version no index holds) is one line a while, not one a
    request, and the line can say how many it stood for."""

    def __init__(self) -> None:
        self._last: dict[object, tuple[float, int]] = {}  # key -> (time.monotonic() of its line, held back since)

    def due(self, key: object, interval_s: float) -> int | None:
        """None if ``key`` had a line within ``interval_s`` (this one is counted);
        else how many were held back since that line, and this one is due."""
        now = time.monotonic()
        at, held = self._last.get(key, (float("-inf"), 0))
        if now - at < interval_s:
            self._last[key] = (at, held + 1)
            return None
        self._last[key] = (now, 0)
        return held

    def end(self, key: object) -> int | None:
        """Forgets ``key``, whose fault is over, so that its next occurrence has a line at once: None if it
        had no line, else how many were held back since it, for the line that says the fault is over."""
        last = self._last.pop(key, None)
        return None if last is None else last[1]
