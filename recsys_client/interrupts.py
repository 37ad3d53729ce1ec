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


class Interrupted(PublishError):
    """SIGINT or SIGTERM arrived during a run: raised in its place, so the run undoes what it changed."""

    def __init__(self, signum: int, when: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}{when}")
        self.signum = signum
        self.exit_code = 128 + signum  # a shell's status for a process ended by the signal


_held: list[int] = []  # a stop that came inside ``deferred`` blocks, raised at the outermost one's end
_deferring = 0


@contextmanager
def deferred() -> Iterator[None]:
    """A block where TensorFlow runs (recsys-catalogue's candidate tower): a stop that comes in it is raised at its
    end. Raised inside, the exception could appear while TensorFlow's C++ calls back into Python and fail one of its
    checks, which aborts the process (a trainer's worker died so: ``trainer.interrupts``), and the run could not
    say what it had done."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _held and not _deferring:
        raise Interrupted(_held.pop())


@contextmanager
def stop_on_signals(tool_log: logging.Logger,
                    stopping: str = "already stopping: undoing what this run changed") -> Iterator[None]:
    """Turns SIGINT and SIGTERM into Interrupted for the block (at the end of a ``deferred`` block within it), so that
    a run stopped by either undoes (or reports) what it changed; once one arrived, the others are logged on
    ``tool_log`` as ``stopping`` and wait for that."""
    def stop(signum: int, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: tool_log.warning(stopping))
        if _deferring:
            _held.append(signum)
        else:
            raise Interrupted(signum)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _held.clear()  # a stop held by a deferred block that an error ended: the run is over either way
        for sig, handler in before.items():
            signal.signal(sig, handler)
