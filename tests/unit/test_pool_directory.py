"""A ``--workers`` supervisor's private directory (the workers' sockets and the
pool's secret): one a killed supervisor left is removed when the next one
starts; a live supervisor's, or a directory that is no supervisor's, is kept.
The supervisors are real processes, one of them killed with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from serving.rpc.pool_directory import POOL_SECRET_FILE, private_directory

ROOT = Path(__file__).resolve().parents[2]
PROG = "recsys-test-supervisor"


def supervisor(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A process that makes its private directory and secret as a supervisor does, then waits; and that directory."""
    code = ("import time; from serving.rpc.pool_directory import private_directory, write_pool_secret; "
            f"d, _ = private_directory({PROG!r}); write_pool_secret(d); print(d, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_supervisors_directory_is_removed_when_the_next_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed, abandoned = supervisor(tmp_path)
    live, kept = supervisor(tmp_path)
    not_a_supervisors = tmp_path / f"{PROG}-by-hand"
    not_a_supervisors.mkdir()
    killed.kill()
    killed.wait()
    assert (abandoned / POOL_SECRET_FILE).exists()  # SIGKILL: nothing of the supervisor's ran
    try:
        mine, lock = private_directory(PROG)
        os.close(lock)
        assert not abandoned.exists()
        assert (kept / POOL_SECRET_FILE).exists() and not_a_supervisors.exists() and Path(mine).exists()
    finally:
        live.kill()
        live.wait()
        killed.stdout.close()
        live.stdout.close()
