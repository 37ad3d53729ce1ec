"""A stop asked for by SIGINT or SIGTERM, kept where the run's loops can read it.

Outside ``deferred`` blocks the signal handler raises ``Interrupted`` in the
main thread, wherever it is: loading the data and the baselines (minutes at 1M
interactions) stop at once. Inside one, while TensorFlow runs (training,
evaluation, the publish), it only records the stop (``settings.stops``: why),
acted on at the next ``check``: each training batch's end, each epoch, before
the publish, at the block's end.

A library an ``Interrupted`` passes through may turn it into an error of its
own, and the search fails a trial on any error and goes on. So the handler also
records the stop here, and the search checks it each epoch and whenever a trial
fails, and the run once more before it publishes. Raised where Python cannot
pass an exception on (a ``__del__`` that TensorFlow's garbage collection runs),
it is dropped with an "Exception ignored" traceback on stderr, and a library
may print the error it made of it; the stop is kept here, so
``quiet_where_dropped`` leaves those tracebacks out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from settings.stops import Stops


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received: the run stops as at Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stops = Stops(Interrupted)
request, stop, check, clear, deferred = _stops.request, _stops.stop, _stops.check, _stops.clear, _stops.deferred
quiet_where_dropped = _stops.quiet_where_dropped


class StopReport:
    """The one line an interrupted run ends with (``message()``), printed once. With ``grace_s`` (a worker of a
    multi-worker run), a stop also arms a watchdog: a worker whose peer is gone can wait in a collective that never
    returns, where ``Interrupted`` cannot reach it. Its launcher kills such a worker after its own grace, but a
    launcher killed outright cannot (the kernel's parent-death SIGTERM is all its workers get): one of two stayed
    up after that. So ``grace_s`` after the stop the watchdog prints the line and ends the process (128 + the
    signal, as the run would have returned). Without it (a single process), a second signal ends the run at once
    (``again``)."""

    def __init__(self, message: Callable[[], str], grace_s: float | None = None):
        self._message, self._grace_s = message, grace_s
        self._lock = threading.RLock()  # ``again`` prints from a signal handler, maybe while ``print`` holds it
        self._printed = False

    def again(self, signum: int, frame) -> None:
        """The handler of the signals after the stop. A single process ends at once, printing the line: the step
        its stop waits for (the evaluation, the publish's index build: a minute at a million interactions) is one
        its user chose not to wait for, and the registry stays whole (a publish is renamed into place last; its
        staging folder is swept later). A multi-worker worker ignores them: a terminal's Ctrl-C reaches the
        launcher, which passes it on, and its workers, so each worker sees two; its watchdog bounds the wait."""
        if self._grace_s is None:
            try:  # the main thread may be inside a write to stderr: a reentrant print raises, and must not stop it
                self.print(f" (a second {signal.Signals(signum).name}: ended at once, in the step under way)")
            finally:
                os._exit(128 + signum)

    def arm(self, signum: int) -> None:
        """Starts the watchdog for a stop by ``signum`` (with ``grace_s`` only)."""
        if self._grace_s is None:
            return

        def expire() -> None:
            self.print(f" (still running {self._grace_s:g} s after the stop: a collective that never returns, or a "
                       f"step that outlasts the grace)")
            os._exit(128 + signum)

        timer = threading.Timer(self._grace_s, expire)
        timer.daemon = True  # a run that ends in time is not held up by it
        timer.start()

    def print(self, note: str = "") -> None:
        """Prints the line (with ``note``) unless it was printed already."""
        with self._lock:
            if not self._printed:
                self._printed = True
                print(self._message() + note, file=sys.stderr, flush=True)
