"""scripts/demo.sh's clean-up, run on a copy whose slow steps are stubbed (no install, no training)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_demo_that_fails_early_kills_no_process_of_an_old_pid_file(tmp_path):
    """demo-run/redis.pid names the Redis a run started. One left by a run that was killed (or
    from before a reboot) names whatever process has that pid now: a run that stops before it
    starts a Redis (here: the virtual environment fails) must leave that process alone."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "venv.sh").write_text("ensure_venv() { return 1; }\n")
    (tmp_path / "demo-run").mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "demo-run" / "redis.pid").write_text(f"{bystander.pid}\n")
        result = subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh")], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode != 0, result.stdout
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=0.5)
    finally:
        bystander.kill()
        bystander.wait()
