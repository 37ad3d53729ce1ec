"""The stops a process's SIGINT/SIGTERM handler records, and where they are raised.

Outside ``deferred`` blocks a stop is raised at once, in the main thread, wherever it is. Inside one, while
TensorFlow runs, it is only recorded, and raised at the next ``check`` or at the block's end: an exception that
appears while TensorFlow's C++ calls back into Python can fail one of its checks and abort the process (a worker of
a stopped 2-worker ``recsys-train`` run died so, "Check failed: !PyErr_Occurred()", and never said what it had
published). A stop is also kept where Python dropped its exception (raised in a ``__del__``), for ``check`` to act
on (``quiet_where_dropped`` leaves out the "Exception ignored" traceback Python prints for it). Shared by
``recsys-train`` (``trainer.interrupts``) and ``recsys-publish`` and ``recsys-catalogue``
(``recsys_client.interrupts``), each with the exception its run stops by.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


class Stops:
    """A process's recorded stops; ``interrupted(signum)`` makes the exception a stop is raised as."""

    def __init__(self, interrupted: type[BaseException]):
        self._interrupted = interrupted
        self.asked: list[int] = []  # the signals received since ``clear``, first first
        self._deferring = 0  # how many ``deferred`` blocks the main thread is in

    def request(self, signum: int) -> BaseException:
        """Records a stop asked for by ``signum``; returns the exception to raise for it."""
        self.asked.append(signum)
        return self._interrupted(signum)

    def stop(self, signum: int) -> None:
        """What the handler of ``signum`` does: records the stop, and raises it unless inside a ``deferred`` block."""
        error = self.request(signum)
        if not self._deferring:
            raise error

    def check(self) -> None:
        """Raises the first stop recorded since ``clear``, if any."""
        if self.asked:
            raise self._interrupted(self.asked[0])

    def clear(self) -> None:
        """Forgets the stops recorded before: a new run in this process starts unstopped."""
        self.asked.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block where a stop waits for the next ``check``, at the latest the outermost block's end. An error that
        ends the block while a stop waits is raised as the stop, the error as its cause (the run was asked to stop;
        the error may be of its making: a multi-worker peer that took the stop first and left their collective)."""
        self.check()  # a stop Python dropped before the block (in a ``__del__``): the block's work is not begun
        self._deferring += 1
        try:
            yield
        except BaseException as e:
            if self.asked and not isinstance(e, self._interrupted):
                raise self._interrupted(self.asked[0]) from e
            raise
        finally:
            self._deferring -= 1
        if not self._deferring:
            self.check()

    def quiet_where_dropped(self) -> None:
        """Leaves out of stderr the tracebacks a stop leaves behind, once it is recorded: a stop that Python had to
        drop (raised in a ``__del__``), and an error that a library made of one and printed itself (the stop
        landing in an import TensorFlow's C++ makes came out as a SystemError's traceback, through
        ``sys.excepthook`` or, where the C++ could not raise it, ``sys.unraisablehook``: a traceback with no
        "Exception ignored" line). The stop is acted on at the next ``check``. An error printed so that is not of
        the stop's making is one line; other errors are reported as before. Installed once per process (again
        where something replaced the hooks since)."""
        report, show = sys.unraisablehook, sys.excepthook
        if getattr(report, "keeps_stops_of", None) is self:
            return

        def hook(unraisable) -> None:
            self._told(unraisable.exc_value, lambda: report(unraisable))

        def excepthook(kind, value, tb) -> None:
            self._told(value, lambda: show(kind, value, tb))

        hook.keeps_stops_of = self
        sys.unraisablehook, sys.excepthook = hook, excepthook

    def _told(self, error: BaseException | None, show: Callable[[], None]) -> None:
        """Shows ``error`` as before while no stop is recorded; once one is, leaves it out if it is of the stop's
        making, else prints it in one line."""
        if not self.asked:
            show()
        elif not self._of_stop(error):
            print(f"(while stopping) {type(error).__name__}: {error}", file=sys.stderr)

    def _of_stop(self, error: BaseException | None) -> bool:
        """Whether ``error`` is a stop's exception, or was raised from or while handling one."""
        seen = set()
        while error is not None and id(error) not in seen:
            if isinstance(error, self._interrupted):
                return True
            seen.add(id(error))
            error = error.__cause__ or error.__context__
        return False
