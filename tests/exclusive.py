"""Tests that must run alone while the suite runs on several pytest-xdist workers.

``scripts/test.sh`` runs the suite on two workers: the second core is idle for most of
a one-process run (tests wait on servers starting and on each other's deadlines). A
test that bounds latency or a deadline under load (``@pytest.mark.alone``) would then
measure the other worker's CPU as well, so the workers share a readers-writer lock,
an ``flock`` on a file of this run: every test holds it shared; one marked ``alone``
holds it exclusively, so it starts once the other worker's current test is done and
the other worker waits for it to finish. A turnstile taken first by everyone, and held
by a waiting ``alone`` test, keeps the other worker's stream of shared tests from
starving it. Without xdist there is no lock: the suite runs one test at a time anyway.
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
    def held(self, alone: bool) -> Iterator[None]:
        """Holds the run's lock for one test: exclusively when ``alone``, else shared."""
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            if alone:
                fcntl.flock(self._lock, fcntl.LOCK_EX)  # the turnstile is held while this waits
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        if not alone:
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        """Closes this worker's files and removes them (a worker still running keeps its own open)."""
        self._turnstile.close()
        self._lock.close()
        for path in self._paths:
            path.unlink(missing_ok=True)
