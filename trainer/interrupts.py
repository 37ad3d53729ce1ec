"""A stop asked for by SIGINT or SIGTERM, kept where the run's loops can read it.

The signal handler raises ``Interrupted`` in the main thread, wherever it is. A
library the exception passes through may turn it into an error of its own, and
the search fails a trial on any error and goes on. So the handler also records
the stop here, and the search checks it each epoch and whenever a trial fails,
and the run once more before it publishes. Raised where Python cannot pass an
exception on (a ``__del__`` that TensorFlow's garbage collection runs), it is
dropped with an "Exception ignored" traceback on stderr, and a library may print
the error it made of it; the stop is kept here, so ``quiet_where_dropped``
leaves those tracebacks out.
"""

from __future__ import annotations

import signal
import sys

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


def quiet_where_dropped() -> None:
    """Leaves out of stderr the tracebacks a stop leaves behind, once it is recorded: an ``Interrupted`` that Python
    had to drop (raised in a ``__del__``), and an error that a library made of one and printed itself (the stop
    landing in an import TensorFlow's C++ makes came out as a SystemError's traceback, through ``sys.excepthook``).
    The stop is acted on at the next ``check``. An error printed so that is not of the stop's making is one line;
    other errors are reported as before."""
    report, show = sys.unraisablehook, sys.excepthook
    if getattr(report, "keeps_interrupts", False):
        return

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            report(unraisable)

    def excepthook(kind, value, tb) -> None:
        if not _asked:
            show(kind, value, tb)
        elif not _of_stop(value):
            print(f"(while stopping) {kind.__name__}: {value}", file=sys.stderr)

    hook.keeps_interrupts = True
    sys.unraisablehook, sys.excepthook = hook, excepthook


def _of_stop(error: BaseException | None) -> bool:
    """Whether ``error`` is an ``Interrupted``, or was raised from or while handling one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def check() -> None:
    """Raises ``Interrupted`` if a stop was asked for."""
    if _asked:
        raise Interrupted(_asked[0])
