"""Real processes for integration tests: a tiny model trained by ``recsys-train``,
``recsys-index-service`` and ``recsys-query-service`` on free loopback ports,
and a private Redis. Each fixture stops what it started, by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port, wait_until

BIN = Path(sys.executable).parent
MODEL = "itest"


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install the package with pip install -e '.[dev]'")
    return str(path)


def train(registry: Path, *extra: str) -> str:
    """Runs recsys-train on a small synthetic data set; returns its stdout."""
    result = subprocess.run(
        [console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry), "--model", MODEL,
         "--synthetic-customers", "300", "--synthetic-candidates", "200", "--synthetic-interactions", "6000",
         "--epochs", "2", "--embedding-dim", "16", *extra],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"recsys-train failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def is_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


class ServiceProcess:
    """One service started as its console script, logging to a file."""

    def __init__(self, script: str, args: list[str], log_path: Path, port: int | None = None):
        self.script = script
        self.args = args
        self.port = port or free_port()
        self.admin_port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def start(self, timeout_s: float = 120) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([console_script(self.script), "--port", str(self.port), "--admin-port", str(self.admin_port), *self.args],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(lambda: self.proc.poll() is not None or is_serving(self.address), timeout_s,
                       f"{self.script} to report SERVING")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.script} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


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
