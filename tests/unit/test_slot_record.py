"""An index slot whose record in the registry (``slots/<slot>``) cannot be
written: a load or unload is refused and the slot keeps what it held, so
memory and record agree (a restart reloads what the slot served)."""

from __future__ import annotations

import errno
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from index_service.core import IndexCore, Query
from index_service.searcher import CandidateIndex
from index_service.slot import SlotAdmin
from model_registry import Registry
from serving import errors
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import StartupVersions
from serving.lifecycle.versions import State, VersionManager
from serving.rpc.grpc_server import status_of
from tests.unit import tiny_versions as tiny


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """Versions 1, 2 and 3."""
    registry = Registry(tmp_path_factory.mktemp("registry"), tiny.MODEL)
    for seed in (1, 2, 3):
        tiny.publish(registry, seed)
    return registry


def slot(registry: Registry, name: str, version: int) -> tuple[IndexCore, SlotAdmin]:
    manager: VersionManager[CandidateIndex] = VersionManager(tiny.MODEL)
    loader = Loader(registry, lambda path, manifest: CandidateIndex.load(path, manifest, 0.9), "index", Background.IDLE)
    core = IndexCore(manager, ThreadPoolExecutor(1))
    admin = SlotAdmin(name, registry, manager, loader, lambda: core.last_search, 0.0)
    admin.start(StartupVersions(version))
    return core, admin


def unwritable_records(registry: Registry, monkeypatch) -> None:
    """What ``chattr +i slots/`` does to the record's write."""
    def refuse(slot: str, version: int | None) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(registry.model_dir / "slots" / ".current-x"))

    monkeypatch.setattr(registry, "set_slot_version", refuse)


def intents_that_cannot_be_cleared(registry: Registry, monkeypatch, error: OSError) -> None:
    """A load intent is written as ever, its removal raises ``error``."""
    set_loading = registry.set_slot_loading

    def refusing_to_clear(slot: str, version: int | None, held: int | None = None) -> None:
        if version is None:
            raise error
        set_loading(slot, version, held)

    monkeypatch.setattr(registry, "set_slot_loading", refusing_to_clear)


async def test_a_load_whose_slot_record_cannot_be_written_leaves_the_slot_as_it_was(registry, monkeypatch):
    core, admin = slot(registry, "green", 2)
    unwritable_records(registry, monkeypatch)
    with pytest.raises(errors.FailedPrecondition) as refused:
        await admin.load(3)
    code, message = status_of(refused.value, "LoadVersion")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(registry.model_dir / "slots" / "green") in message and "Operation not permitted" in message, message
    monkeypatch.undo()
    assert [(v.version, v.state) for v in admin.status().versions] == [(2, State.SERVING)]
    assert registry.slot_version("green") == 2
    answer, _ = await core.search([Query([0.1] * tiny.DIM, 3)], 0)
    assert answer.version == 2


async def test_an_unload_whose_slot_record_cannot_be_written_leaves_the_slot_as_it_was(registry, monkeypatch):
    _, admin = slot(registry, "blue", 1)
    unwritable_records(registry, monkeypatch)
    with pytest.raises(errors.FailedPrecondition, match="Operation not permitted"):
        await admin.unload(1)
    monkeypatch.undo()
    assert [(v.version, v.state) for v in admin.status().versions] == [(1, State.SERVING)]
    assert registry.slot_version("blue") == 1


@pytest.mark.parametrize("change", ["load", "unload"])
async def test_a_record_written_but_not_synced_is_put_back_so_a_restart_comes_back_on_what_the_slot_holds(
        registry, monkeypatch, change):
    """The record's directory fsync failed after its rename: the change was refused ("nothing changed, it still
    holds version 2"), yet the record named the refused change and its load intent was removed, so a restarted slot
    loaded version 3 (or came back empty after a refused unload)."""
    from model_registry import registry as registry_module

    _, admin = slot(registry, f"sync-{change}", 2)
    fsync_dir = registry_module.fsync_dir
    record = registry.slot_file(f"sync-{change}")
    failing = [True]

    def once_failing(path):
        # Once the record file itself (not the load intent beside it) names the change.
        if path == record.parent and failing[0] and (record.read_text() if record.exists() else None) != "2\n":
            failing[0] = False
            raise OSError(errno.EIO, "Input/output error")
        fsync_dir(path)

    monkeypatch.setattr(registry_module, "fsync_dir", once_failing)
    with pytest.raises(errors.FailedPrecondition, match="Input/output error"):
        await (admin.load(3) if change == "load" else admin.unload(2))
    assert not failing[0]
    monkeypatch.undo()
    assert [(v.version, v.state) for v in admin.status().versions] == [(2, State.SERVING)]
    assert registry.slot_record(f"sync-{change}").holds == 2  # what a restart comes back on


def test_a_start_that_cannot_clear_a_load_intent_leaves_the_record_naming_what_it_came_back_on(registry, monkeypatch):
    """A start's record is not put back as a refused load's is: it would be removed, and the next restart come back
    on no version."""
    registry.set_slot_loading("amber", 3, 2)
    registry.set_slot_version("amber", 3)  # killed loading 3: the intent says it held 2
    intents_that_cannot_be_cleared(registry, monkeypatch, PermissionError(errno.EPERM, "Operation not permitted"))
    _, admin = slot(registry, "amber", 2)  # a restart, on what it held
    monkeypatch.undo()
    assert [v.version for v in admin.status().versions] == [2]
    assert registry.slot_record("amber").holds == 2


def test_a_slot_restarted_on_what_its_record_names_needs_no_write_and_another_version_names_the_record(
        registry, monkeypatch):
    registry.set_slot_version("grey", 2)
    unwritable_records(registry, monkeypatch)
    core, admin = slot(registry, "grey", 2)  # as a restart does: the record already names version 2
    assert [v.version for v in admin.status().versions] == [2]
    with pytest.raises(errors.FailedPrecondition, match=r"slot 'grey' cannot write its record .*slots/grey"):
        slot(registry, "grey", 3)  # started with --version 3
