"""Real processes for integration tests: a tiny model trained by ``recsys-train``,
``recsys-index-service`` and ``recsys-query-service`` on free loopback ports,
and a private Redis. Each fixture stops what it started, by pid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from recsys_client.local import ServiceProcess, console_script

MODEL = "itest"


def train(registry: Path, *extra: str) -> str:
    """Runs recsys-train on a small synthetic data set; returns its stdout."""
    result = subprocess.run(
        [console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry), "--model", MODEL,
         "--synthetic-customers", "300", "--synthetic-candidates", "200", "--synthetic-interactions", "6000",
         "--epochs", "2", "--embedding-dim", "16", *extra],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"recsys-train failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory) -> Path:
    registry = tmp_path_factory.mktemp("registry")
    train(registry)
    return registry


@pytest.fixture(scope="module")
def index_service(trained_registry, tmp_path_factory):
    service = ServiceProcess("recsys-index-service", ["--registry", str(trained_registry), "--model", MODEL],
                             tmp_path_factory.mktemp("logs") / "index.log").start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def query_service(trained_registry, index_service, redis_server, tmp_path_factory):
    service = ServiceProcess(
        "recsys-query-service",
        ["--registry", str(trained_registry), "--model", MODEL, "--index-address", index_service.address,
         "--redis-url", redis_server.url],
        tmp_path_factory.mktemp("logs") / "query.log").start()
    yield service
    service.stop()
