"""A reader of the registry's two pointers gets a pair that was in force at one moment, even while another process
(recsys-publish) moves them: CURRENT and PREVIOUS read one after the other can straddle a move and give a pair that
never existed (the old CURRENT with the new PREVIOUS, so no rollback target, or the reverse). A query replica
starting mid-move would take its live version and rollback target from such a pair, and a prune would protect it
instead of the pair in force, deleting the live version or its rollback target."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Iterator

import pytest

from model_registry import Registry, VersionError
from serving.lifecycle.sources import query_startup
from tests.unit.test_pointer_move import cut_between_the_pointers
from tests.unit.test_publish import two_live
from tests.unit.test_registry_retention import publish_dummy

MOVER = textwrap.dedent("""
    import itertools, sys
    from model_registry import Registry

    registry = Registry(sys.argv[1], "m")
    print("ready", flush=True)
    for version in itertools.cycle([int(v) for v in sys.argv[2:]]):
        registry.set_current(version)
""")
READ_S = 1.0  # a move takes about a millisecond here: hundreds of moves overlap the reads


@contextlib.contextmanager
def moving(registry: Registry, *cycle: int) -> Iterator[None]:
    """Another process points CURRENT at each of ``cycle`` in turn, again and again, for as long as the block runs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", MOVER, str(registry.root), *map(str, cycle)],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"ready\n"
        yield
        assert proc.poll() is None, "the mover stopped: a move was refused"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def published(tmp_path, count: int) -> Registry:
    """A registry with versions 1..``count``, CURRENT 2 and PREVIOUS 1."""
    registry = Registry(tmp_path, "m")
    for _ in range(count):
        publish_dummy(registry)
    registry.set_current(1)
    registry.set_current(2)
    return registry


def test_pointers_read_while_moves_run_are_always_a_pair_that_was_in_force(tmp_path):
    registry = published(tmp_path, 3)
    in_force = {(2, 1), (3, 2), (1, 3)}  # the pairs the moves to 3, 1, 2, 3, ... leave
    seen: Counter[tuple[int | None, int | None]] = Counter()
    with moving(registry, 3, 1, 2):
        deadline = time.monotonic() + READ_S
        while time.monotonic() < deadline:
            seen[tuple(registry.pointers())] += 1
    assert set(seen) <= in_force, f"pairs never in force were read: {dict(seen)}"
    assert set(seen) == in_force, f"the reads did not overlap the moves: {dict(seen)}"


def test_a_query_replica_starting_while_moves_run_takes_a_pair_that_was_in_force(tmp_path):
    # Read as two pointers, a straddled move gave (2, None): a replica with no rollback target, which then made
    # recsys-publish --rollback refuse the whole fleet ("query replicas disagree on the rollback target").
    registry = published(tmp_path, 3)
    seen: Counter[tuple[int, int | None]] = Counter()
    with moving(registry, 3, 1, 2):
        deadline = time.monotonic() + READ_S
        while time.monotonic() < deadline:
            startup = query_startup(registry)
            seen[(startup.live, startup.rollback_target)] += 1
    assert set(seen) <= {(2, 1), (3, 2), (1, 3)}, f"start-ups from pairs never in force: {dict(seen)}"


def test_a_prune_while_moves_run_keeps_current_and_previous(tmp_path):
    registry = published(tmp_path, 3)
    registry.set_current(1)
    registry.set_current(3)
    # The moves swap 3 and 1: at CURRENT 3 the prune keeps 2 and 3, the newest two up to it, and only PREVIOUS
    # keeps 1 (at CURRENT 1, 2 and 3 are newer than the live version).
    seen = set()
    with moving(registry, 1, 3):
        deadline = time.monotonic() + READ_S
        while time.monotonic() < deadline:
            assert registry.prune(keep=2) == [], f"pruned a version the pointers name (seen CURRENT {seen})"
            seen.add(registry.current_version())
    assert seen == {1, 3}, "the prunes did not overlap the moves"
    assert registry.versions() == [1, 2, 3]


def test_pointers_of_a_move_cut_off_are_the_pair_before_it(tmp_path, monkeypatch):
    registry, _, _ = two_live(tmp_path)
    cut_between_the_pointers(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        registry.set_current(3)
    assert registry.pointers() == (2, 1)  # from MOVING, left behind by the cut: PREVIOUS is already written as 2


def test_a_broken_previous_fails_a_pair_read_unless_the_reader_can_do_without_it(tmp_path):
    registry, _, _ = two_live(tmp_path)
    (registry.model_dir / "PREVIOUS").write_text("7\n")  # a version that was never published
    with pytest.raises(VersionError, match="PREVIOUS names '7'"):
        registry.pointers()
    assert registry.pointers(broken_previous_ok=True) == (2, None)
