"""An index slot started under a name the registry has no record of while
other slots have records (``--slot bleu`` for ``blue``): it starts, as a new
slot may, but says so in one WARNING naming the slot, the records there are
and the flag, so the typo is seen before the stale ``blue`` record pins its
version against pruning for good."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from index_service.core import IndexCore
from index_service.searcher import CandidateIndex
from index_service.slot import SlotAdmin
from model_registry import Registry, VersionError
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import query_startup, slot_startup
from serving.lifecycle.versions import VersionManager
from tests.unit import tiny_versions as tiny


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Registry:
    """Versions 1 and 2, no slot records."""
    registry = Registry(tmp_path_factory.mktemp("registry"), tiny.MODEL)
    for seed in (1, 2):
        tiny.publish(registry, seed)
    return registry


@pytest.fixture
def registry(published: Registry):
    """``published`` with slot ``blue`` recording version 1 and ``green`` version 2."""
    published.set_slot_version("blue", 1)
    published.set_slot_version("green", 2)
    yield published
    for entry in (published.model_dir / "slots").iterdir():
        entry.unlink()


def start(registry: Registry, name: str, explicit: int = 0) -> SlotAdmin:
    """Starts slot ``name`` as ``recsys-index-service --slot name [--version explicit]`` does."""
    manager: VersionManager[CandidateIndex] = VersionManager(tiny.MODEL)
    loader = Loader(registry, lambda path, manifest: CandidateIndex.load(path, manifest, 0.9), "index", Background.IDLE)
    core = IndexCore(manager, ThreadPoolExecutor(1))
    admin = SlotAdmin(name, registry, manager, loader, lambda: core.last_search, 0.0)
    admin.start(slot_startup(registry, name, explicit))
    return admin


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_slot_with_no_record_beside_other_slots_records_starts_empty_and_warns_once(registry, caplog):
    admin = start(registry, "bleu")
    assert admin.manager.live_version is None  # a new slot is legitimate: it starts, empty
    [message] = warnings(caplog)
    assert "'bleu'" in message and "--slot" in message, message
    assert "blue (version 1)" in message and "green (version 2)" in message, message
    assert "--slot blue?" in message, message  # the close match
    assert str(registry.model_dir / "slots") in message, message


def test_a_slot_with_no_record_started_on_an_explicit_version_warns_too(registry, caplog):
    admin = start(registry, "bleu", explicit=2)
    assert admin.manager.live_version == 2 and registry.slot_version("bleu") == 2
    [message] = warnings(caplog)
    assert "'bleu'" in message and "blue (version 1)" in message and "version 2" in message, message


def test_a_slot_restarted_on_its_own_record_and_the_first_slot_of_a_registry_do_not_warn(registry, caplog):
    assert start(registry, "blue").manager.live_version == 1
    assert warnings(caplog) == []
    for entry in (registry.model_dir / "slots").iterdir():
        entry.unlink()
    assert start(registry, "blue").manager.live_version is None
    assert warnings(caplog) == []


def test_a_broken_record_of_another_slot_is_named_in_the_warning_not_raised(registry, caplog):
    (registry.model_dir / "slots" / "green").write_text("7\n")
    start(registry, "bleu")
    [message] = warnings(caplog)
    assert "blue (version 1)" in message and "green (unreadable: " in message and "'7'" in message, message


def test_a_mistyped_registry_or_an_unpublished_version_stops_a_service_at_once_saying_which(published, tmp_path):
    """A --registry naming no directory started an index slot empty, without a word, and told a query replica that
    nothing had been rolled out; a query replica's --version N of no published version was found only by its load,
    after TensorFlow's import, and a race there left the process hanging (see test_status_stream_cancel)."""
    typo = Registry(tmp_path / "regsitry", tiny.MODEL)
    for start in (lambda: slot_startup(typo, "blue"), lambda: query_startup(typo),
                  lambda: query_startup(typo, explicit=1)):
        with pytest.raises(VersionError, match=rf"registry {typo.root} is not a directory: check --registry"):
            start()
    with pytest.raises(VersionError, match=rf"version 9 of {tiny.MODEL} is not published under .*\(published: "
                                           r"\[1, 2\]\)"):
        query_startup(published, explicit=9)
    with pytest.raises(VersionError, match="version 7 of"):
        query_startup(published, explicit=1, explicit_rollback=7)
    assert query_startup(published, explicit=2, explicit_rollback=1).live == 2


def test_a_replica_of_the_live_slot_is_refused_another_version(registry, tmp_path):
    """Found trying the tools (stop 60): a replica of the slot serving the live version, started with --version of
    another, rewrote the slot's record; the slot's other replicas came back on that version at their next restart,
    and every search of the live version failed: "no index endpoint holds version 2"."""
    registry.set_current(2)
    try:
        with pytest.raises(VersionError, match=r"slot 'green' holds version 2, the live version \(CURRENT\): a replica "
                                               r"of it started with --version 1 would move the slot's record"):
            slot_startup(registry, "green", explicit=1)
        assert registry.slot_version("green") == 2
        assert slot_startup(registry, "green", explicit=2).live == 2  # its own version: as before
        assert slot_startup(registry, "blue", explicit=2).live == 2  # a slot not live: an operator's to move
    finally:
        (registry.model_dir / "CURRENT").unlink()
    typo = Registry(tmp_path, tiny.MODEL)
    (tmp_path / tiny.MODEL).write_text("")  # a traceback: NotADirectoryError
    with pytest.raises(VersionError, match=rf"{tmp_path / tiny.MODEL} is a file, not model {tiny.MODEL}'s directory"):
        slot_startup(typo, "blue")
