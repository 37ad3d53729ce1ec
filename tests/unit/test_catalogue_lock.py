"""recsys-catalogue and recsys-publish share the model's rollout lock (recsys_client.rollout_lock.exclusive): a delta's
write and apply wait for a rollout to end, and are refused, writing nothing, if it does not end in time or if it moved
CURRENT under them; a rollout is refused naming a catalogue run that holds it. In-memory admin stubs, no servers."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from model_registry import Registry
from model_registry.deltas import published_generation
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version
from recsys_client.rollout_lock import LOCK_FILE, exclusive
from tests.unit.test_publish import StatusOnly
from tests.unit.test_registry_retention import publish_dummy

HOLD_S = 0.5  # how long the "rollout" below holds the lock


class CatalogueIndex(StatusOnly):
    """An index replica of model "m" holding version 1 that records the generations it is asked to catch up to."""

    def __init__(self):
        super().__init__({1: SERVING}, "blue")
        self.applied: list[int] = []

    def ApplyCatalogue(self, request, metadata=None, timeout=None):
        self.applied.append(request.generation)
        return self.GetStatus(request)


def catalogue(tmp_path, monkeypatch, index: CatalogueIndex, *args: str) -> None:
    monkeypatch.setattr(Fleet, "connect", classmethod(
        lambda cls, *a, **k: Fleet([Replica("index", "blue", index)], [])))
    catalogue_main(["--registry", str(tmp_path), "--model", "m", "--delete", "a", "--index-admin", "b:1", *args])


def published(tmp_path) -> Registry:
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    registry.set_current(1)
    return registry


def rollout_holding_the_lock(registry: Registry, then_current: int | None = None) -> threading.Thread:
    """A rollout's lock held for HOLD_S (moving CURRENT to ``then_current`` before it lets go), from another open file
    description: flock conflicts between those within one process as between processes."""
    held = threading.Event()

    def run() -> None:
        with exclusive(registry):
            held.set()
            time.sleep(HOLD_S)
            if then_current is not None:
                registry.set_current(then_current)

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(10)
    return thread


def test_a_catalogue_run_waits_for_a_rollout_to_end_then_writes_and_applies(tmp_path, monkeypatch, capsys):
    registry, index = published(tmp_path), CatalogueIndex()
    start = time.monotonic()
    rollout = rollout_holding_the_lock(registry)
    catalogue(tmp_path, monkeypatch, index, "--version", "1")
    waited = time.monotonic() - start
    rollout.join()
    assert waited >= HOLD_S  # it wrote once the rollout let go, not under it
    assert index.applied == [1] and published_generation(registry.model_dir, 1) == 1
    assert '"generation": 1' in capsys.readouterr().out


def test_a_catalogue_run_is_refused_writing_nothing_when_a_rollout_outlasts_its_wait(tmp_path, monkeypatch, capsys):
    registry, index = published(tmp_path), CatalogueIndex()
    rollout = rollout_holding_the_lock(registry)
    try:
        with pytest.raises(SystemExit) as exit:
            catalogue(tmp_path, monkeypatch, index, "--lock-wait-s", "0.1")
    finally:
        rollout.join()
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and "\n" not in err, err
    assert err.startswith("recsys-catalogue: another recsys-publish run of 'm' is under way (pid "), err
    assert "waited 0.1 s; wait for it to end" in err and err.endswith("; nothing was written"), err
    assert index.applied == [] and published_generation(registry.model_dir, 1) == 0


def test_a_delta_for_current_is_refused_if_the_rollout_it_waited_for_moved_current(tmp_path, monkeypatch, capsys):
    registry, index = published(tmp_path), CatalogueIndex()
    rollout = rollout_holding_the_lock(registry, then_current=2)
    try:
        with pytest.raises(SystemExit) as exit:
            catalogue(tmp_path, monkeypatch, index)  # CURRENT (1) read before the rollout moved it
    finally:
        rollout.join()
    assert exit.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "recsys-catalogue: CURRENT moved from version 1 to 2 while this run prepared its delta (a rollout or rollback "
        "ended): nothing was written; run again to change version 2, or pass --version 1 to change that one")
    assert index.applied == [] and published_generation(registry.model_dir, 1) == 0


def test_a_rollout_is_refused_at_once_naming_a_catalogue_run_that_holds_the_lock(tmp_path):
    registry = published(tmp_path)
    with exclusive(registry, "recsys-catalogue"):
        with pytest.raises(PublishError, match=r"^another recsys-catalogue run of 'm' is under way \(pid \d+ on .* "
                                               r"by recsys-catalogue; lock "):
            publish_version(Fleet([], []), registry, 2)


def test_a_holder_that_has_not_yet_written_its_name_is_not_called_recsys_publish(tmp_path):
    """The lock taken, its line not yet written: a recsys-catalogue run was refused as "another recsys-publish run",
    a tool no one could know it was."""
    registry = published(tmp_path)
    fd = os.open(registry.model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(PublishError, match=r"^another run \(recsys-publish or recsys-catalogue\) of 'm' is under "
                                               r"way \(it has not yet written its name; lock "):
            with exclusive(registry, "recsys-catalogue"):
                pass
    finally:
        os.close(fd)
