import os
import time
from pathlib import Path

import numpy as np
import pytest

from model_registry import IndexSpec, Manifest, Registry
from model_registry.manifest import CANDIDATE_EMBEDDINGS_FILE, CANDIDATE_IDS_FILE

DUMMY_IDS = ("a", "b", "c")  # its candidates: recsys-catalogue writes a delete only of an id the version holds


def publish_dummy(registry: Registry) -> int:
    def write(staging):
        (staging / "payload.bin").write_bytes(b"x")
        np.save(staging / CANDIDATE_IDS_FILE, np.array(DUMMY_IDS), allow_pickle=False)
        # recsys-catalogue checks an upsert's norm against these (recsys_client.upserts.check_scale).
        np.save(staging / CANDIDATE_EMBEDDINGS_FILE, np.ones((len(DUMMY_IDS), 1), np.float32), allow_pickle=False)
        return lambda version, files: Manifest(
            model=registry.model, version=version, embedding_dim=1, num_candidates=len(DUMMY_IDS), tower="id",
            dataset="test", created_at="2026-01-01T00:00:00Z", index=IndexSpec(kind="brute_force"), files=files)

    return registry.publish(write).version


def test_prune_keeps_newest_current_rollback_target_and_slot_contents(tmp_path):
    registry = Registry(tmp_path, "m")
    for _ in range(7):
        publish_dummy(registry)
    registry.set_current(4)
    registry.set_current(5)
    registry.set_slot_version("green", 1)
    assert registry.prune(keep=2) == [2, 3]  # 5 CURRENT; 4 PREVIOUS; 6, 7 not rolled out yet; 1 in slot green
    assert registry.versions() == [1, 4, 5, 6, 7]
    assert registry.current_version() == 5 and registry.previous_version() == 4
    assert sorted(p.name for p in registry.model_dir.iterdir()) == ["1", "4", "5", "6", "7", "CURRENT", "PREVIOUS",
                                                                    "slots"]
    assert publish_dummy(registry) == 8  # numbering never goes back


def test_prune_keeps_the_newest_up_to_the_live_one_and_every_version_waiting_for_its_rollout(tmp_path):
    """It kept the newest `keep` version numbers: with versions waiting for their rollouts, rolling out an older
    one deleted the newer ones (versions 1-10 published, 3 rolled out: 4 and 5 deleted, 1 kept)."""
    registry = Registry(tmp_path, "m")
    for _ in range(10):
        publish_dummy(registry)
    registry.set_current(2)
    registry.set_current(3)
    assert registry.prune(keep=5) == []
    registry.set_current(8)
    assert registry.prune(keep=3) == [1, 2, 4, 5]  # 6, 7, 8 the newest up to CURRENT; 3 PREVIOUS; 9, 10 waiting
    assert registry.versions() == [3, 6, 7, 8, 9, 10]


def test_prune_before_the_first_rollout_deletes_nothing(tmp_path):
    registry = Registry(tmp_path, "m")
    for _ in range(4):
        publish_dummy(registry)
    assert registry.prune(keep=2) == [] and registry.versions() == [1, 2, 3, 4]


def test_prune_refuses_to_keep_fewer_than_two(tmp_path):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    with pytest.raises(ValueError, match="keep at least 2"):
        registry.prune(keep=1)


def with_leftovers(root) -> tuple[Registry, Path, Path]:
    """A registry of two versions and two staging folders a crashed publish might have left: (registry, the one
    made first, the one made now); the caller ages the first."""
    registry = Registry(root, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    old, fresh = registry.model_dir / ".staging-old", registry.model_dir / ".staging-fresh"
    old.mkdir()
    fresh.mkdir()
    return registry, old, fresh


def test_prune_removes_old_leftovers_of_crashed_publishes_only(tmp_path):
    registry, old, fresh = with_leftovers(tmp_path)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    registry.prune(keep=2)
    assert not old.exists() and fresh.exists()


def test_leftovers_are_aged_by_the_registry_s_clock_not_the_pruning_host_s(tmp_path, monkeypatch):
    # A registry on a file server, pruned from a host whose clock is an hour ahead of it (or after an NTP step): a
    # publish's folder being written read as an hour old and was removed under it.
    registry, old, fresh = with_leftovers(tmp_path)
    stamp = os.stat(fresh).st_mtime - 7200
    os.utime(old, (stamp, stamp))
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 3601)
    registry.prune(keep=2)
    assert fresh.exists() and not old.exists()
    assert not [p for p in registry.model_dir.iterdir() if p.name.startswith(".current-")]
