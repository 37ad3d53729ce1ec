"""A stop asked for by SIGINT or SIGTERM, kept where the run's loops can read it.

The signal handler raises ``Interrupted`` in the main thread, wherever it is. A
library the exception passes through may turn it into an error of its own, and
the search fails a trial on any error and goes on. So the handler also records
the stop here, and the search checks it each epoch and whenever a trial fails.
"""

from __future__ import annotations

import signal

_asked: list[int] = []


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received: the run stops as at Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def request(signum: int) -> Interrupted:
    """Records a stop asked for by ``signum``; returns the exception to raise for it."""
    _asked.append(signum)
    return Interrupted(signum)


def clear() -> None:
    """Forgets a stop asked for before: a new run in this process starts unstopped."""
    _asked.clear()


def check() -> None:
    """Raises ``Interrupted`` if a stop was asked for."""
    if _asked:
        raise Interrupted(_asked[0])
