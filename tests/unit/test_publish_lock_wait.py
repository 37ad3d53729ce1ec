"""recsys-publish and the model's rollout lock (recsys_client.rollout_lock.exclusive), against in-memory admin stubs: a
run waits (--lock-wait-s) for a recsys-catalogue run that holds it, a delta being short, and is refused at once by
another recsys-publish run."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from model_registry import Registry
from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError
from recsys_client.publish import rollback
from recsys_client.publish import main as publish_main
from recsys_client.rollout_lock import exclusive
from tests.unit.test_publish import two_live

HOLD_S = 0.5  # how long the other run below holds the lock
pytestmark = pytest.mark.alone  # the runs' timings are compared with HOLD_S


@contextmanager
def held_by(registry: Registry, tool: str) -> Iterator[float]:
    """The lock held by a ``tool`` run for HOLD_S from another thread (another open file description: flock conflicts
    between those within one process as between processes); yields when it was taken (time.monotonic())."""
    taken = threading.Event()
    when: list[float] = []

    def run() -> None:
        with exclusive(registry, tool):
            when.append(time.monotonic())
            taken.set()
            time.sleep(HOLD_S)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert taken.wait(10)
        yield when[0]
    finally:
        thread.join()


def test_a_rollback_waits_for_a_catalogue_run_that_holds_the_lock(tmp_path, monkeypatch, capsys):
    registry, query, fleet = two_live(tmp_path)
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))
    with held_by(registry, "recsys-catalogue") as taken:
        publish_main(["--rollback", "--registry", str(tmp_path), "--model", "m", "--query-admin", "q:1"])
        waited = time.monotonic() - taken
    assert waited >= HOLD_S  # it switched once the delta let go, not under it
    assert capsys.readouterr().out.strip() == "live version 1"
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}


def test_a_run_is_refused_when_a_catalogue_run_outlasts_its_wait(tmp_path):
    registry, query, fleet = two_live(tmp_path)
    with held_by(registry, "recsys-catalogue"):
        with pytest.raises(PublishError, match=r"^another recsys-catalogue run of 'm' is under way \(pid \d+ .* by "
                                               r"recsys-catalogue; lock .*\): waited 0.1 s; wait for it to end"):
            rollback(fleet, registry, lock_wait_s=0.1)
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}


def test_a_run_is_refused_at_once_by_another_recsys_publish_run_whatever_its_wait(tmp_path):
    registry, query, fleet = two_live(tmp_path)
    with held_by(registry, "recsys-publish") as taken:
        with pytest.raises(PublishError, match=r"^another recsys-publish run of 'm' is under way \(pid \d+ .* by "
                                               r"recsys-publish; lock .*\): wait for it to end and check its outcome"):
            rollback(fleet, registry, lock_wait_s=60)
        assert time.monotonic() - taken < HOLD_S  # not after the holder let go
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}
