import asyncio

import numpy as np
import pytest

from index_service.slot import SlotAdmin
from model_registry import Registry, VersionError
from model_registry.deltas import Delta, write_delta
from query_service.admin import QueryAdmin
from serving.errors import FailedPrecondition, InvalidArgument, Unavailable
from serving.lifecycle.admin import VersionAdmin
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.versions import State, VersionManager
from serving.telemetry.observability import REQUEST_ID


def test_empty_manager_is_unavailable():
    with pytest.raises(Unavailable, match="no version of model m"):
        VersionManager("m").get()


def test_first_added_becomes_live_and_pinning_by_number():
    versions = VersionManager("m")
    versions.add(1, "one")
    versions.add(2, "two")
    assert versions.get() == (1, "one")
    assert versions.get(2) == (2, "two")
    versions.promote(2)
    assert versions.get() == (2, "two")
    assert versions.loaded_versions() == [1, 2]


def test_promotion_keeps_the_previous_live_version_as_rollback_target():
    versions = VersionManager("m")
    for v in (1, 2, 3):
        versions.add(v, str(v))
    versions.promote(2)
    assert versions.rollback_target == 1
    assert {v: s for v, (s, _) in versions.states().items()} == {
        1: State.ROLLBACK_TARGET, 2: State.SERVING, 3: State.READY}
    versions.promote(1)  # a rollback: the switch goes both ways
    assert (versions.live_version, versions.rollback_target) == (1, 2)


def test_unknown_version_is_failed_precondition_naming_what_is_loaded():
    versions = VersionManager("m")
    versions.add(3, "three")
    with pytest.raises(FailedPrecondition, match=r"version 9 is not loaded here \(loaded: \[3\]\)"):
        versions.get(9)
    with pytest.raises(FailedPrecondition):
        versions.promote(9)


def test_live_version_is_removed_only_when_allowed():
    versions = VersionManager("m")
    versions.add(1, "one")
    versions.add(2, "two", make_live=True)
    with pytest.raises(FailedPrecondition, match="is live"):
        versions.remove(2)
    assert versions.remove(1) == "one" and versions.rollback_target is None
    assert versions.loaded_versions() == [2]
    assert versions.remove(2, allow_live=True) == "two"  # an index slot replacing what it holds
    assert versions.live_version is None
    with pytest.raises(Unavailable):
        versions.get()


def test_listeners_hear_every_change():
    versions = VersionManager("m")
    heard = []
    versions.listen(lambda: heard.append(dict(versions.states())))
    assert versions.begin_loading(1)
    assert not versions.begin_loading(1)  # already loading: no change
    versions.add(1, "one")
    versions.remove(1, allow_live=True)
    assert [{v: s for v, (s, _) in h.items()} for h in heard] == [{1: State.LOADING}, {1: State.SERVING}, {}]


class _RefusingServable:
    """A loaded version whose catch-up refuses the log's deltas, as an index does a delta of another dimension."""

    catalogue_generation = 0

    def apply_catalogue(self, deltas, generation):
        raise VersionError("a catalogue delta of version 1 has vectors of shape (1, 3); the version embeds into 2")


def test_a_catalogue_delta_the_version_refuses_is_failed_precondition_saying_why(tmp_path):
    registry = Registry(tmp_path, "m")
    write_delta(registry.model_dir, 1, Delta.make(["a"], np.ones((1, 3), np.float32), dim=3))
    manager = VersionManager("m")
    manager.add(1, _RefusingServable())
    loader = Loader(registry, lambda path, manifest: None, "test", Background.GIL)
    try:
        with pytest.raises(FailedPrecondition, match=r"deltas of version 1 refused: .*the version embeds into 2"):
            asyncio.run(VersionAdmin(manager, loader).apply_catalogue(1, 0))
    finally:
        loader.close()


def test_unloading_version_0_or_below_is_invalid_argument_as_loading_and_promoting_are(tmp_path):
    registry = Registry(tmp_path, "m")
    loader = Loader(registry, lambda path, manifest: None, "test", Background.GIL)
    try:
        for make in (lambda manager: QueryAdmin(manager, loader, router=None),
                     lambda manager: SlotAdmin("blue", registry, manager, loader, lambda: 0.0, 0.0)):
            for live in (None, 1):
                manager = VersionManager("m")
                if live:
                    manager.add(live, "one")
                admin = make(manager)
                for version in (0, -1):
                    # Version 0 is "the live one" to VersionManager.get: it must not reach it, nor say "not loaded".
                    with pytest.raises(InvalidArgument, match=f"version={version}: versions are positive integers"):
                        asyncio.run(admin.unload(version))
                assert manager.loaded_versions() == ([live] if live else [])
    finally:
        loader.close()


def test_a_load_runs_in_the_admin_calls_context_so_its_log_lines_carry_the_request_id(tmp_path):
    loader = Loader(Registry(tmp_path, "m"), lambda path, manifest: None, "test", Background.IDLE)

    async def admin_call() -> str:
        REQUEST_ID.set("an-admin-call")  # as the server's interceptor does for each call
        return await loader.run(REQUEST_ID.get)

    try:
        assert asyncio.run(admin_call()) == "an-admin-call"
    finally:
        loader.close()
