"""Stopping ``recsys-train`` by a signal: a multi-worker run (``--workers 2``) whose launcher gets SIGTERM or
SIGINT before the chief publishes ends every worker and publishes nothing; a single process interrupted in its
search says so in one line, exit status 130."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from model_registry import Registry
from tests.integration.conftest import MODEL
from tests.processes import alive, children, console_script, wait_until

pytestmark = pytest.mark.integration

SMALL = ["--dataset", "synthetic", "--model", MODEL, "--synthetic-customers", "300", "--synthetic-candidates", "200",
         "--synthetic-interactions", "6000", "--embedding-dim", "16"]


def start(log: Path, *argv: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([console_script("recsys-train"), *argv], stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def two_workers_mid_training(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, list[int], Path]]:
    """A ``--workers 2`` launcher whose chief finished its first epoch (the rest of its epochs, the refit and the
    evaluation to go): (launcher, its workers' pids, the run's log). Kills what is left after the block."""
    log = tmp_path / "train.log"
    launcher = start(log, *SMALL, "--registry", str(tmp_path / "reg"), "--tune-budget-s", "0", "--epochs", "4",
                     "--workers", "2")
    workers: list[int] = []
    try:
        wait_until(lambda: "[worker 0] epoch 1:" in log.read_text(), 120, "the chief's first epoch")
        workers = children(launcher.pid)
        assert len(workers) == 2, workers
        yield launcher, workers, log
    finally:
        for pid in [launcher.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_every_worker_and_nothing_is_published(tmp_path, signum):
    with two_workers_mid_training(tmp_path) as (launcher, workers, log):
        launcher.send_signal(signum)
        status = launcher.wait(60)
        wait_until(lambda: not any(alive(pid) for pid in workers), 5, "the workers to end")
    text = log.read_text()
    assert status == 128 + signum, text[-3000:]
    assert f"recsys-train: stopped by {signal.Signals(signum).name}" in text, text[-3000:]
    assert Registry(tmp_path / "reg", MODEL).versions() == []
    assert "Traceback" not in text, text[-5000:]


def test_ctrl_c_in_the_search_is_one_line_and_publishes_nothing(tmp_path):
    log = tmp_path / "train.log"
    run = start(log, *SMALL, "--registry", str(tmp_path / "reg"), "--tune-budget-s", "60")
    try:
        wait_until(lambda: "trial 1:" in log.read_text(), 120, "the search's second trial")
        run.send_signal(signal.SIGINT)
        try:
            status = run.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGINT:\n{log.read_text()[-3000:]}")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    assert status == 130, text[-3000:]
    assert text.strip().splitlines()[-1] == "recsys-train: interrupted; nothing was published", text[-3000:]
    assert "Traceback" not in text, text[-5000:]
    assert Registry(tmp_path / "reg", MODEL).versions() == []
