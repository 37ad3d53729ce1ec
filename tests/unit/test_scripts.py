"""scripts/demo.sh's clean-up, run on a copy whose slow steps are stubbed (no install, no training)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
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


TRAINING_STUB = """import pathlib, signal, sys, time
signals = pathlib.Path(sys.argv[0]).with_name("signals")
def stop(signum, frame):  # as recsys-train: a handler of its own, whatever it inherited
    with signals.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[0]).with_name("started").write_text("yes")
while not signals.exists():
    time.sleep(0.05)
time.sleep(1.0)  # a second signal would land here, as in a step under way
print("recsys-train: stopped by " + signals.read_text().split()[0], flush=True)
sys.exit(143)
"""


@pytest.mark.parametrize("group", [False, True], ids=["kill-of-the-script", "ctrl-c-to-the-terminals-group"])
def test_a_stop_during_training_stops_it_with_one_signal_and_cleans_up_at_once(tmp_path, group):
    """A kill of the script waited for the training to end: bash runs a trap only after its foreground command, and
    the demo exited 116 s after SIGINT, having published, saying "failed". Run in the background instead, a
    terminal's Ctrl-C (to the whole group) then reached the training and the clean-up's signal after it: a second
    signal ends recsys-train at once, mid-step. An earlier run's pid files stayed beside the new ones."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "venv.sh").write_text("ensure_venv() { return 0; }\n")
    (tmp_path / "scripts" / "ensure_redis.sh").write_text('echo "redis://127.0.0.1:1/0"\n')
    (tmp_path / "demo-run").mkdir()
    (tmp_path / "demo-run" / "query-service.pid").write_text("1\n")  # an earlier run's
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "recsys-train").write_text(f"#!{sys.executable}\n{TRAINING_STUB}")
    (bin_dir / "recsys-train").chmod(0o755)
    # As a shell starts a command: SIGINT not ignored (a background job of a script would inherit it ignored).
    demo = subprocess.Popen(["bash", str(tmp_path / "scripts" / "demo.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(400):
            if (bin_dir / "started").exists():
                break
            time.sleep(0.05)
        assert (bin_dir / "started").exists(), demo.stderr.read() if demo.poll() is not None else "not started"
        assert not (tmp_path / "demo-run" / "query-service.pid").exists()
        if group:
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=15)
        assert demo.returncode == 130, err
        assert (bin_dir / "signals").read_text() == "SIGTERM\n"  # the clean-up's, alone
        assert "recsys-train: stopped by SIGTERM" in out  # the training's own stop line, through the step's tee
        assert err.strip().splitlines()[-1] == "demo: stopped by a signal; stopped what it started (logs in demo-run)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux's script for a terminal")
def test_a_terminal_set_to_stop_background_writers_does_not_stop_the_training_step(tmp_path):
    """The step's own process group is a background one: on a terminal with `stty tostop` its tee was stopped
    (SIGTTOU) at its first write, the training with it once the pipe filled, and the demo waited for ever."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "venv.sh").write_text("ensure_venv() { return 0; }\n")
    (tmp_path / "scripts" / "ensure_redis.sh").write_text('echo "redis://127.0.0.1:1/0"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "recsys-train").write_text("#!/usr/bin/env bash\necho 'trial 0: trained'\nexit 3\n")
    (bin_dir / "recsys-train").chmod(0o755)
    demo = subprocess.Popen(["script", "-qec", f"stty tostop; bash {tmp_path / 'scripts' / 'demo.sh'}", "/dev/null"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = demo.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
        # script runs the demo in a session of its own: what a hang left there is found by its path.
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and str(tmp_path).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
    assert "trial 0: trained" in out and demo.returncode == 3, out  # the training's own status, not a hang
