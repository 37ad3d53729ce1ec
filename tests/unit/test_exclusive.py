"""The suite's run lock (tests/exclusive.py): a test marked ``alone`` waits for the other worker's test, the other
worker's next tests wait for it, and nothing else is serialised. Each ``RunLock`` stands for one worker (its own
open files), on threads here."""

from __future__ import annotations

import threading
import time
import uuid

from tests.exclusive import RunLock


def _hold(lock: RunLock, alone: bool, entered: threading.Event, release: threading.Event, order: list[str],
          name: str) -> threading.Thread:
    def run() -> None:
        with lock.held(alone):
            order.append(name)
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_alone_test_waits_for_the_running_one_and_holds_off_the_next_ones():
    run = uuid.uuid4().hex
    workers = [RunLock(run) for _ in range(3)]
    order: list[str] = []
    events = {name: (threading.Event(), threading.Event()) for name in ("shared", "alone", "next")}
    try:
        threads = [_hold(workers[0], False, *events["shared"], order, "shared")]
        assert events["shared"][0].wait(5)
        threads.append(_hold(workers[1], True, *events["alone"], order, "alone"))
        time.sleep(0.2)
        threads.append(_hold(workers[2], False, *events["next"], order, "next"))
        time.sleep(0.2)
        assert order == ["shared"]  # the alone test waits; the next shared one queues behind it, not beside it
        events["shared"][1].set()
        assert events["alone"][0].wait(5)
        time.sleep(0.2)
        assert order == ["shared", "alone"]
        events["alone"][1].set()
        assert events["next"][0].wait(5) and order == ["shared", "alone", "next"]
        events["next"][1].set()
        for thread in threads:
            thread.join(5)
    finally:
        for lock in workers:
            lock.close()


def test_shared_tests_run_side_by_side():
    run = uuid.uuid4().hex
    workers = [RunLock(run) for _ in range(2)]
    first, second = (threading.Event(), threading.Event()), (threading.Event(), threading.Event())
    try:
        threads = [_hold(workers[0], False, *first, [], "a"), _hold(workers[1], False, *second, [], "b")]
        assert first[0].wait(5) and second[0].wait(5)  # both inside at once
        first[1].set()
        second[1].set()
        for thread in threads:
            thread.join(5)
    finally:
        for lock in workers:
            lock.close()


def test_the_files_started_first_are_there():
    # A file renamed or gone from tests/conftest.py's list would quietly be handed out in its folder's turn again.
    from tests.conftest import REPO, STARTED_FIRST

    assert [path for path in STARTED_FIRST if not (REPO / path).is_file()] == []
