"""The stops a process's SIGINT/SIGTERM handler records, and where they are raised.

Outside ``deferred`` blocks a stop is raised at once, in the main thread, wherever it is. Inside one, while
TensorFlow runs, it is only recorded, and raised at the next ``check`` or at the block's end: an exception that
appears while TensorFlow's C++ calls back into Python can fail one of its checks and abort the process (a worker of
a stopped 2-worker ``recsys-train`` run died so, "Check failed: !PyErr_Occurred()", and never said what it had
published). A stop is also kept where Python dropped its exception (raised in a ``__del__``), for ``check`` to act
on. Shared by ``recsys-train`` (``trainer.interrupts``) and ``recsys-catalogue`` (``recsys_client.interrupts``),
each with the exception its run stops by.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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
