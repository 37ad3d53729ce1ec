"""An index slot whose load runs out of memory: killed mid-load (a memory
cgroup's OOM kill), it restarts on the version it held, not on the one it died
loading (which would kill it again at every start); a load that raises
MemoryError or ENOMEM is refused as RESOURCE_EXHAUSTED naming the version kept;
a start-up load that raises leaves the slot up and empty; the registry's prune
keeps both versions of a pending load; a full disk says to free space."""

from __future__ import annotations

import errno
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from index_service.core import IndexCore
from index_service.searcher import CandidateIndex
from index_service.slot import SlotAdmin
from model_registry import Registry
from serving import errors
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import StartupVersions, slot_startup
from serving.lifecycle.versions import VersionManager
from serving.rpc.grpc_server import status_of
from tests.unit import tiny_versions as tiny
from tests.unit.test_slot_record import intents_that_cannot_be_cleared

ENOMEM = OSError(errno.ENOMEM, "Cannot allocate memory")


class Killed(BaseException):
    """Ends the load of a process the test takes as killed (SIGKILL ends it without a word)."""


@pytest.fixture
def registry(tmp_path) -> Registry:
    """Versions 1, 2 and 3."""
    registry = Registry(tmp_path, tiny.MODEL)
    for seed in (1, 2, 3):
        tiny.publish(registry, seed)
    return registry


def slot(registry: Registry, name: str, version: int | None, dies_loading=None) -> SlotAdmin:
    """A slot started on ``version``; ``dies_loading(version)``, when given, runs before each of its loads."""
    def load(path, manifest) -> CandidateIndex:
        if dies_loading is not None:
            dies_loading(manifest.version)
        return CandidateIndex.load(path, manifest, 0.9)

    manager: VersionManager[CandidateIndex] = VersionManager(tiny.MODEL)
    core = IndexCore(manager, ThreadPoolExecutor(1))
    admin = SlotAdmin(name, registry, manager, Loader(registry, load, "index", Background.IDLE),
                      lambda: core.last_search, 0.0)
    admin.start(StartupVersions(version))
    return admin


def held(admin: SlotAdmin) -> list[int]:
    return [v.version for v in admin.status().versions]


async def test_a_slot_killed_while_loading_restarts_on_the_version_it_held_saying_so(registry, caplog):
    restarted = []

    def killed(version: int) -> None:
        if version == 2:  # the process dies here; its restart reads the record as the kill left it
            restarted.append(slot(registry, "green", slot_startup(registry, "green").live))
            raise Killed

    admin = slot(registry, "green", 1, killed)
    with caplog.at_level(logging.WARNING, "index_service.slot"), pytest.raises(Killed):
        await admin.load(2)
    assert held(restarted[0]) == [1]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "did not finish" in r.getMessage()]
    assert len(warnings) == 1 and "of version 2" in warnings[0] and "died while loading it" in warnings[0] \
        and "out of memory" in warnings[0] and "version 1, which it held before" in warnings[0], warnings
    # The restart recorded what it holds: the next one starts on it without a warning.
    assert registry.slot_version("green") == 1
    caplog.clear()
    assert held(slot(registry, "green", slot_startup(registry, "green").live)) == [1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_empty_slot_killed_while_loading_restarts_empty(registry, caplog):
    restarted = []

    def killed(version: int) -> None:
        restarted.append(slot(registry, "blue", slot_startup(registry, "blue").live))
        raise Killed

    with caplog.at_level(logging.WARNING, "index_service.slot"), pytest.raises(Killed):
        await slot(registry, "blue", None, killed).load(3)
    assert held(restarted[0]) == [] and registry.slot_version("blue") is None
    assert any("of version 3, did not finish" in r.getMessage() and "starts on no version" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def _live_beyond(registry: Registry) -> None:
    """Versions 4 and 5 published and rolled out (CURRENT 5, PREVIOUS 4): a prune keeping two may then delete 1-3."""
    for seed in (4, 5):
        tiny.publish(registry, seed)
    registry.set_current(4)
    registry.set_current(5)


async def test_prune_while_a_load_is_pending_keeps_the_version_loading_and_the_one_held(registry):
    _live_beyond(registry)
    pruned = []

    def prune(version: int) -> None:
        if version == 2:
            pruned.extend(registry.prune(keep=2))  # 4 and 5 the pointers'; the slot held 1 and loads 2

    admin = slot(registry, "green", 1, prune)
    await admin.load(2)
    assert pruned == [3] and registry.versions() == [1, 2, 4, 5] and held(admin) == [2]


@pytest.mark.parametrize("error", [MemoryError("std::bad_alloc"), ENOMEM], ids=["bad_alloc", "ENOMEM"])
async def test_a_load_out_of_memory_is_resource_exhausted_naming_the_version_kept(registry, error):
    def out_of_memory(version: int) -> None:
        if version == 2:
            raise error

    admin = slot(registry, "green", 1, out_of_memory)
    with pytest.raises(errors.ResourceExhausted) as refused:
        await admin.load(2)
    code, message = status_of(refused.value, "LoadVersion")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "version 2" in message and "out of memory" in message and "kept version 1" in message, message
    assert held(admin) == [1] and registry.slot_record("green") == (1, None)


@pytest.mark.parametrize("error", [MemoryError("std::bad_alloc"), ENOMEM], ids=["bad_alloc", "ENOMEM"])
def test_a_start_up_load_out_of_memory_leaves_the_slot_up_and_empty_saying_why(registry, caplog, error):
    registry.set_slot_version("green", 2)

    def out_of_memory(version: int) -> None:
        raise error

    with caplog.at_level(logging.WARNING, "index_service.slot"):
        admin = slot(registry, "green", slot_startup(registry, "green").live, out_of_memory)
    assert held(admin) == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "version 2 could not be loaded at start (out of memory" in warning and "starts empty" in warning, warning


def test_a_start_up_load_of_a_version_refused_leaves_the_slot_up_and_empty(registry, caplog):
    bad = tiny.publish(registry, 4, probe_dim=tiny.DIM - 1).version  # its index self-test fails
    registry.set_slot_version("green", bad)  # a restart rejoining on its record
    with caplog.at_level(logging.WARNING, "index_service.slot"):
        admin = slot(registry, "green", bad)
    assert held(admin) == []
    assert any(f"version {bad} could not be loaded at start (version {bad} refused" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # Asked for by --version rather than its record, the version's refusal stops the start, naming why.
    with pytest.raises(errors.FailedPrecondition, match=f"version {bad} refused"):
        slot(registry, "blue", bad)


async def test_a_full_disk_says_to_free_space(registry, monkeypatch):
    admin = slot(registry, "green", 1)

    def full(slot: str, version: int | None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry, "set_slot_version", full)
    with pytest.raises(errors.FailedPrecondition) as refused:
        await admin.load(2)
    message = str(refused.value)
    assert "No space left on device" in message and f"free space on {registry.model_dir / 'slots'}" in message \
        and "writable" not in message, message
    monkeypatch.undo()
    assert held(admin) == [1] and registry.slot_record("green") == (1, None)


async def test_a_load_whose_record_cannot_say_it_is_done_loads_back_the_version_held(registry, monkeypatch):
    """A restart would come back on the version held: the slot must not serve the new one meanwhile."""
    admin = slot(registry, "green", 1)
    intents_that_cannot_be_cleared(registry, monkeypatch, PermissionError(errno.EROFS, "Read-only file system"))
    with pytest.raises(errors.FailedPrecondition, match="Read-only file system"):
        await admin.load(2)
    assert held(admin) == [1] and registry.slot_version("green") == 1


def test_a_record_read_between_the_two_writes_of_a_load_restarts_on_the_version_held(registry):
    registry.set_slot_version("red", 1)
    registry.set_slot_loading("red", 2, 1)  # killed before the record itself names 2
    assert registry.slot_record("red") == (1, 2) and registry.slot_version("red") == 1
    registry.set_slot_version("red", 2)
    assert registry.slot_record("red") == (1, 2)
    registry.set_slot_version("red", 3)  # by a slot process that writes no intent: the one left is stale
    assert registry.slot_record("red") == (3, None)


def test_prune_keeps_what_an_empty_slot_killed_before_its_record_was_written_loads(registry):
    _live_beyond(registry)
    registry.set_slot_loading("grey", 1)  # its record (slots/grey) not yet written
    registry.set_slot_version("grey.loading", 2)  # a slot so named: its record is no intent
    assert registry.slot_record("grey") == (None, 1) and registry.slot_record("grey.loading") == (2, None)
    assert registry.prune(keep=2) == [3] and registry.versions() == [1, 2, 4, 5]
