"""A publisher killed (SIGKILL) at any moment leaves the registry usable: every
version it lists verifies, CURRENT and PREVIOUS name versions of them, and
leftovers of the interrupted publish are ignored. Kills land at spread-out
moments of a publisher that publishes and rolls out in a loop (as recsys-train
then recsys-publish do), so they hit every step (writing files, checksums,
manifest, fsync, rename, PREVIOUS and CURRENT updates)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from model_registry import Registry, verify_version

PUBLISHER = textwrap.dedent("""
    import sys, time
    from model_registry import IndexSpec, Manifest, Registry

    registry = Registry(sys.argv[1], "m")

    def write(staging):
        for name in ("a.bin", "b.bin", "c.bin"):
            (staging / name).write_bytes(b"x" * 200_000)
            time.sleep(0.002)
        return lambda version, files: Manifest(
            model="m", version=version, embedding_dim=1, num_candidates=1, tower="id", dataset="crash-test",
            created_at="2026-01-01T00:00:00Z", index=IndexSpec(kind="brute_force"), files=files)

    print("ready", flush=True)
    while True:
        registry.set_current(registry.publish(write).version)
""")


def test_kill_at_any_moment_leaves_a_usable_registry(tmp_path):
    registry = Registry(tmp_path, "m")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(25):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.003 + 0.004 * attempt)  # a different moment of the publish loop each time
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        versions = registry.versions()
        for version in versions:
            assert verify_version(registry.version_dir(version)).version == version
        # Readable pointers naming published versions (None only before the first rollout completed).
        assert registry.current_version() in (None, *versions)
        assert registry.previous_version() in (None, *versions)
    assert registry.current_version() is not None, "no rollout ever completed: the kills came too early"
    leftovers = [p.name for p in registry.model_dir.iterdir() if p.name.startswith(".")]
    assert all(name.startswith((".staging-", ".current-")) for name in leftovers)
