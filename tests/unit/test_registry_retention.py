import os
import time

import pytest

from model_registry import IndexSpec, Manifest, Registry


def publish_dummy(registry: Registry, make_current: bool = True) -> int:
    def write(staging):
        (staging / "payload.bin").write_bytes(b"x")
        return lambda version, files: Manifest(
            model=registry.model, version=version, embedding_dim=1, num_candidates=1, tower="id",
            dataset="test", created_at="2026-01-01T00:00:00Z", index=IndexSpec(kind="brute_force"), files=files)

    return registry.publish(write, make_current=make_current).version


def test_prune_keeps_newest_current_and_rollback_target(tmp_path):
    registry = Registry(tmp_path, "m")
    for _ in range(6):
        publish_dummy(registry)
    registry.set_current(3)
    assert registry.prune(keep=2) == [1, 4]  # 5, 6 newest; 3 CURRENT; 2 its rollback target
    assert registry.versions() == [2, 3, 5, 6]
    assert registry.current_version() == 3
    assert sorted(p.name for p in registry.model_dir.iterdir()) == ["2", "3", "5", "6", "CURRENT"]
    assert publish_dummy(registry) == 7  # numbering never goes back


def test_prune_refuses_to_keep_fewer_than_two(tmp_path):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    with pytest.raises(ValueError, match="keep at least 2"):
        registry.prune(keep=1)


def test_prune_removes_old_leftovers_of_crashed_publishes_only(tmp_path):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    old = registry.model_dir / ".staging-old"
    old.mkdir()
    fresh = registry.model_dir / ".staging-fresh"
    fresh.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    registry.prune(keep=2)
    assert not old.exists() and fresh.exists()
