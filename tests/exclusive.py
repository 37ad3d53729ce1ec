"""Tests that must run alone while the suite runs on several pytest-xdist workers.

``scripts/test.sh`` runs the suite on two workers: the second core is idle for most of
a one-process run (tests wait on servers starting and on each other's deadlines). A
test that bounds latency or a deadline under load (``@pytest.mark.alone``) would then
measure the other worker's CPU as well, so the workers share a readers-writer lock,
an ``flock`` on a file of this run: every test holds it shared; one marked ``alone``
holds it exclusively for its call (its fixtures start and stop beside other tests), so
the call starts once the other worker's current test is done and the other worker waits
for it to finish. A turnstile taken first by everyone, and held by a waiting ``alone``
test, keeps the other worker's stream of shared tests from starving it. Without xdist
there is no lock: the suite runs one test at a time anyway.
"""

from __future__ import annotations

import fcntl
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class RunLock:
    """The lock of one xdist run (``run_id``: the run's ``testrunuid``, the same on every worker)."""

    def __init__(self, run_id: str):
        directory = Path(tempfile.gettempdir())
        self._paths = [directory / f"recsys-tests-{run_id}.{name}" for name in ("turnstile", "lock")]
        # One open file description per worker: flock conflicts between them, not within one.
        self._turnstile, self._lock = (open(path, "a") for path in self._paths)

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Holds the run's lock shared for one test (setup, call and teardown)."""
        self._through_turnstile(exclusive=False)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Within ``shared``: holds the lock exclusively (an ``alone`` test's call), then shared again."""
        # Let go first: two alone tests upgrading in place would each wait for the other's shared hold.
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._through_turnstile(exclusive=True)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_SH)  # for the teardown (an alone test waiting may go first)

    def _through_turnstile(self, exclusive: bool) -> None:
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            if exclusive:
                fcntl.flock(self._lock, fcntl.LOCK_EX)  # the turnstile is held while this waits
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        if not exclusive:
            fcntl.flock(self._lock, fcntl.LOCK_SH)

    def close(self) -> None:
        """Closes this worker's files and removes them (a worker still running keeps its own open)."""
        self._turnstile.close()
        self._lock.close()
        for path in self._paths:
            path.unlink(missing_ok=True)
