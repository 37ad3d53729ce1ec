"""The registry's two pointers move as one: a move of CURRENT and PREVIOUS cut off between its file writes (a
recsys-publish killed there) reads as not made, so the next run of recsys-publish can tell what happened and finish
it, and a rollback after it goes back to the version live before the cut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model_registry import Registry, VersionError
from recsys_client.fleet import ROLLBACK_TARGET, SERVING
from recsys_client.publish import publish_version, rollback
from tests.unit.test_publish import two_live


def cut_between_the_pointers(monkeypatch) -> None:
    """The next write of a registry's CURRENT fails, as if the writer were killed just before it: whatever the
    pointer move wrote until then stays written."""
    replace = os.replace

    def killed(source, destination, *args, **kwargs):
        if Path(destination).name == "CURRENT":
            monkeypatch.setattr(os, "replace", replace)
            raise OSError("killed")
        return replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", killed)


def test_a_pointer_move_cut_before_its_current_write_reads_as_not_made(tmp_path, monkeypatch):
    registry, _, _ = two_live(tmp_path)
    cut_between_the_pointers(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        registry.set_current(3)
    # Not PREVIOUS == CURRENT == 2: the rollback target 1 is kept, and "no move happened" is what a reader sees.
    assert (registry.current_version(), registry.previous_version()) == (2, 1)
    assert Registry(tmp_path, "m").current_version() == 2  # another process reads the same
    registry.set_current(3)  # the move, made again, completes
    assert (registry.current_version(), registry.previous_version()) == (3, 2)
    assert sorted(p.name for p in registry.model_dir.iterdir() if not p.name.isdigit()) == ["CURRENT", "PREVIOUS"]


def test_a_rollback_cut_between_the_two_pointer_writes_run_again_finishes_it(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_between_the_pointers(monkeypatch)
    with pytest.raises(OSError):
        rollback(fleet, registry)
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}
    # The replicas made the switch and the registry's move was cut: the rerun finishes it, it does not switch back.
    assert rollback(fleet, registry) == 1
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}
    assert (registry.current_version(), registry.previous_version()) == (1, 2)


def test_a_rollback_after_a_rollout_cut_between_the_two_pointer_writes_goes_back_to_the_version_before(
        tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_between_the_pointers(monkeypatch)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 3)
    assert (registry.current_version(), registry.previous_version()) == (2, 1)
    assert rollback(fleet, registry) == 2
    assert (query.versions[2], query.versions[3]) == (SERVING, ROLLBACK_TARGET)
    assert (registry.current_version(), registry.previous_version()) == (2, 3)


def test_a_move_to_a_version_not_published_is_refused_before_any_pointer_changes(tmp_path):
    registry, _, _ = two_live(tmp_path)
    with pytest.raises(VersionError, match="not published"):
        registry.set_current(9)
    assert (registry.current_version(), registry.previous_version()) == (2, 1)


def test_a_broken_previous_stops_neither_a_reader_of_current_nor_a_move(tmp_path):
    registry, _, _ = two_live(tmp_path)
    (registry.model_dir / "PREVIOUS").write_text("7\n")  # a version that was never published
    assert registry.current_version() == 2
    with pytest.raises(VersionError, match="names '7'"):
        registry.previous_version()
    registry.set_current(3)
    assert (registry.current_version(), registry.previous_version()) == (3, 2)
