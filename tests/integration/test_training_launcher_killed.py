"""A ``recsys-train --workers 2`` launcher killed outright (SIGKILL: the OOM killer, ``kill -9``, a CI
timeout) runs no handler to stop its workers: the kernel stops them (their parent-death signal), and
neither trains on nor publishes (the run of tests/integration/test_training_signals.py)."""

from __future__ import annotations

import os
import signal

import pytest

from model_registry import Registry
from tests.integration.conftest import MODEL
from tests.integration.test_training_signals import SMALL, start
from tests.processes import alive, children, wait_until

pytestmark = pytest.mark.integration


def test_a_killed_launcher_takes_its_workers_with_it_and_nothing_is_published(tmp_path):
    log = tmp_path / "train.log"
    launcher = start(log, *SMALL, "--registry", str(tmp_path / "reg"), "--tune-budget-s", "0", "--epochs", "4",
                     "--workers", "2")
    workers: list[int] = []
    try:
        # Mid-training, as for the signals the launcher passes on: the chief has its publish to come.
        wait_until(lambda: "[worker 0] epoch 1:" in log.read_text(), 120, "the chief's first epoch")
        workers = children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.kill()
        launcher.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in workers), 5, "the workers to end after the launcher's SIGKILL")
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
    text = log.read_text()
    assert text.count("recsys-train: interrupted; nothing was published") == 2, text[-3000:]  # each by its handler
    assert Registry(tmp_path / "reg", MODEL).versions() == []
    assert "Traceback" not in text, text[-5000:]
