"""Fixtures shared by all test layers: free ports and a private Redis server.

Everything a fixture starts it stops, by pid. Tests never touch the machine's
own Redis on 6379: they start ``redis-server`` on a free port."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import processes as local

REPO = Path(__file__).resolve().parent.parent
ML100K_DIR = Path(os.environ.get("RECSYS_ML100K_DIR", REPO.parent / "shared" / "data" / "ml-100k"))


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
