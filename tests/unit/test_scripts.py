"""scripts/demo.sh's clean-up, run on a copy whose slow steps are stubbed (no install, no training)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
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


def test_a_kill_during_training_stops_the_training_and_cleans_up_at_once(tmp_path):
    """A kill of the script (not the terminal's Ctrl-C, which reaches every process) waited for the training to
    end: bash runs a trap only after its foreground command, and the demo exited 116 s after SIGINT, having
    published. Its stop was also reported as "failed". An earlier run's pid files stayed beside the new ones."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "venv.sh").write_text("ensure_venv() { return 0; }\n")
    (tmp_path / "scripts" / "ensure_redis.sh").write_text('echo "redis://127.0.0.1:1/0"\n')
    (tmp_path / "demo-run").mkdir()
    (tmp_path / "demo-run" / "query-service.pid").write_text("1\n")  # an earlier run's
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    started = tmp_path / "training"
    (bin_dir / "recsys-train").write_text(
        "#!/usr/bin/env bash\n"
        "trap 'kill $!; echo \"recsys-train: stopped by SIGTERM\"; exit 143' TERM\n"
        "sleep 60 &\n"
        f"echo $$ > {started}\n"
        "wait $!\n")
    (bin_dir / "recsys-train").chmod(0o755)
    demo = subprocess.Popen(["bash", str(tmp_path / "scripts" / "demo.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if started.exists() and started.read_text().strip():
                break
            time.sleep(0.05)
        training = int(started.read_text())
        assert not (tmp_path / "demo-run" / "query-service.pid").exists()
        demo.send_signal(signal.SIGTERM)  # to the script alone
        out, err = demo.communicate(timeout=15)
        assert demo.returncode == 130, err
        assert "recsys-train: stopped by SIGTERM" in out  # the training's own stop line, through the step's tee
        assert err.strip().splitlines()[-1] == "demo: stopped by a signal; stopped what it started (logs in demo-run)"
        assert not Path(f"/proc/{training}").exists()
    finally:
        demo.kill()
        demo.wait()
