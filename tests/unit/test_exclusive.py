"""The suite's run lock (tests/exclusive.py): a test marked ``alone`` waits for the other worker's test before its
call, the other worker's next tests wait for that call, and nothing else is serialised. Each ``RunLock`` stands for
one worker (its own open files), on threads here."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import nullcontext

import pytest

from tests.exclusive import RunLock


@pytest.fixture
def workers():
    """Three workers' locks of one run (a test uses those it needs), closed after the test."""
    run = uuid.uuid4().hex
    locks = [RunLock(run) for _ in range(3)]
    yield locks
    for lock in locks:
        lock.close()


def _hold(lock: RunLock, alone: bool, entered: threading.Event, release: threading.Event, order: list[str],
          name: str) -> threading.Thread:
    def run() -> None:
        with lock.shared(), lock.exclusive() if alone else nullcontext():
            order.append(name)
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_alone_test_waits_for_the_running_one_and_holds_off_the_next_ones(workers):
    order: list[str] = []
    events = {name: (threading.Event(), threading.Event()) for name in ("shared", "alone", "next")}
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


def test_shared_tests_run_side_by_side(workers):
    first, second = (threading.Event(), threading.Event()), (threading.Event(), threading.Event())
    threads = [_hold(workers[0], False, *first, [], "a"), _hold(workers[1], False, *second, [], "b")]
    assert first[0].wait(5) and second[0].wait(5)  # both inside at once
    first[1].set()
    second[1].set()
    for thread in threads:
        thread.join(5)


def test_an_alone_tests_setup_runs_beside_others_and_two_alone_tests_take_turns(workers):
    inside, calls = threading.Barrier(2, timeout=5), []

    def alone_test(lock: RunLock, name: str) -> None:
        with lock.shared():
            inside.wait()  # both set up at once
            with lock.exclusive():  # each waits for the other's shared hold: upgraded in place, they would deadlock
                calls.append(name)
                time.sleep(0.2)
                calls.append(name)

    threads = [threading.Thread(target=alone_test, args=(lock, name), daemon=True)
               for lock, name in zip(workers, "ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(calls) == ["a", "a", "b", "b"] and calls[0] == calls[1]  # one call, then the other


def test_the_files_started_first_are_there():
    # A file renamed or gone from tests/conftest.py's list would quietly be handed out in its folder's turn again.
    from tests.conftest import REPO, STARTED_FIRST

    assert [path for path in STARTED_FIRST if not (REPO / path).is_file()] == []
