"""SIGINT and SIGTERM in a run of recsys-publish or recsys-catalogue: ``stop_on_signals`` raises ``Interrupted`` in
the run's place, so that it undoes (recsys-publish) or reports (recsys-catalogue) what it changed; its
``exit_code`` is the status a shell gives a process the signal ended (130 or 143). Shared, so that both tools stop
alike."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator

from recsys_client.fleet import PublishError
from settings.stops import Stops


class Interrupted(PublishError):
    """SIGINT or SIGTERM arrived during a run: raised in its place, so the run undoes what it changed."""

    def __init__(self, signum: int, when: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}{when}")
        self.signum = signum
        self.exit_code = 128 + signum  # a shell's status for a process ended by the signal


# Kept even where Python dropped a stop's exception (in a ``__del__``: of the candidate tower's TensorFlow objects,
# which the garbage collector runs at any time after the tower is used, of a gRPC channel), for the run's next
# ``check`` (each rollout step's end, recsys-catalogue's write), its "Exception ignored" traceback left out;
# deferred while that tower runs (recsys-catalogue's upserts given as catalogue values: ``settings.stops`` says why).
_stops = Stops(Interrupted)
check, deferred = _stops.check, _stops.deferred


@contextmanager
def stop_on_signals(tool_log: logging.Logger,
                    stopping: str = "already stopping: undoing what this run changed") -> Iterator[None]:
    """Turns SIGINT and SIGTERM into Interrupted for the block (at the end of a ``deferred`` block within it), so that
    a run stopped by either undoes (or reports) what it changed; once one arrived, the others are logged on
    ``tool_log`` as ``stopping`` and wait for that."""
    def stop(signum: int, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: tool_log.warning(stopping))
        _stops.stop(signum)

    _stops.clear()
    _stops.quiet_where_dropped()
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        _stops.clear()  # after the handlers are put back: the next run in this process starts unstopped
