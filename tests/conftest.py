"""Fixtures shared by all test layers: free ports and a private Redis server.

Everything a fixture starts it stops, by pid. Tests never touch the machine's
own Redis on 6379: they start ``redis-server`` on a free port."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import settings.grpc_env  # noqa: F401  (before gRPC loads: tests fork workers and launchers in this process)
from tests import processes as local
from tests.exclusive import RunLock

REPO = Path(__file__).resolve().parent.parent
ML100K_DIR = Path(os.environ.get("RECSYS_ML100K_DIR", REPO.parent / "shared" / "data" / "ml-100k"))


_RUN_LOCK = pytest.StashKey[RunLock]()

# The longest files, longest first (seconds on two workers, 2026-12-06). scripts/test.sh has pytest-xdist hand a
# run's files to its workers in collection order: a long file handed out last runs on at the end while the other
# worker idles (the ml-100k test, last in its folder, left a 50 s tail). Started first, the short files fill the end.
STARTED_FIRST = (
    "tests/unit/test_bench_smoke.py",  # 261 s
    "tests/integration/test_movielens_quality.py",  # 58-110 s
    "tests/integration/test_rollout.py",  # 77 s
    "tests/integration/test_data_shapes.py",  # 71 s
    "tests/integration/test_catalogue.py",  # 58 s
    "tests/integration/test_services.py",  # 57 s
    "tests/integration/test_training_signals.py",  # 48 s
    "tests/integration/test_swap.py",  # 42 s
    "tests/integration/test_workers.py",  # 41 s
)


def pytest_collection_modifyitems(config, items):
    """Puts the files of ``STARTED_FIRST`` first, in its order; the rest keep theirs."""
    rank = {path: i for i, path in enumerate(STARTED_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_configure(config):
    worker = getattr(config, "workerinput", None)  # set on pytest-xdist's workers only
    if worker is not None:
        config.stash[_RUN_LOCK] = RunLock(worker["testrunuid"])


def pytest_unconfigure(config):
    if _RUN_LOCK in config.stash:
        config.stash[_RUN_LOCK].close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Runs a test (setup, call, teardown) under the run's lock (tests/exclusive.py), where there is one."""
    if _RUN_LOCK not in item.config.stash:
        return (yield)
    with item.config.stash[_RUN_LOCK].shared():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Runs the call of a test marked ``alone`` with nothing beside it; its fixtures start beside other tests."""
    if _RUN_LOCK not in item.config.stash or item.get_closest_marker("alone") is None:
        return (yield)
    with item.config.stash[_RUN_LOCK].exclusive():
        return (yield)


class RedisProcess(local.RedisProcess):
    """The package's private redis-server; a test skips where none is installed."""

    def start(self) -> "RedisProcess":
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        return super().start()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisProcess().start()
    yield server
    server.stop()
