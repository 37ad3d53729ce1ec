"""A ``recsys-train --workers 2`` launcher killed outright (SIGKILL: the OOM killer, ``kill -9``, a CI
timeout) runs no handler to stop its workers: the kernel stops them (their parent-death signal), and
neither trains on nor publishes (the run of tests/integration/test_training_signals.py)."""

from __future__ import annotations

import pytest

from model_registry import Registry
from tests.integration.conftest import MODEL
from tests.integration.test_training_signals import two_workers_mid_training
from tests.processes import alive, wait_until

pytestmark = pytest.mark.integration


def test_a_killed_launcher_takes_its_workers_with_it_and_nothing_is_published(tmp_path):
    with two_workers_mid_training(tmp_path) as (launcher, workers, log):
        launcher.kill()
        launcher.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in workers), 5, "the workers to end after the launcher's SIGKILL")
    text = log.read_text()
    assert text.count("recsys-train: interrupted; nothing was published") == 2, text[-3000:]  # each by its handler
    assert Registry(tmp_path / "reg", MODEL).versions() == []
    assert "Traceback" not in text, text[-5000:]
