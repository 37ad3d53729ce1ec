"""Real processes for integration tests: a tiny model trained by ``recsys-train``,
``recsys-index-service`` slots and ``recsys-query-service`` on free loopback
ports, and a private Redis. Each fixture stops what it started, by pid."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from model_registry.deltas import Delta, write_delta
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from serving import validation
from tests.processes import ServiceProcess, console_script, start_all

MODEL = "itest"


def train(registry: Path, *extra: str) -> str:
    """Runs recsys-train on a small synthetic data set (publishes, does not make
    the version live); returns its stdout."""
    return train_run(registry, *extra).stdout


def train_run(registry: Path, *extra: str) -> subprocess.CompletedProcess:
    """``train``'s run, its stdout and stderr (the training log) both kept."""
    result = subprocess.run(
        [console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry), "--model", MODEL,
         "--synthetic-customers", "300", "--synthetic-candidates", "200", "--synthetic-interactions", "6000",
         "--epochs", "2", "--embedding-dim", "16", "--tune-budget-s", "0", *extra],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"recsys-train failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def make_live(root: Path, version: int, slot: str = "blue") -> None:
    """The registry state a first rollout (``recsys-publish --initial``) leaves:
    ``slot`` holds ``version`` and CURRENT names it (test_rollout.py runs the
    real tool from empty slots)."""
    registry = Registry(root, MODEL)
    registry.set_slot_version(slot, version)
    registry.set_current(version)


def index_slot(root: Path, slot: str, log: Path, *extra: str) -> ServiceProcess:
    """An index slot process (not started) that rejoins on its slot record."""
    return ServiceProcess("recsys-index-service", ["--registry", str(root), "--model", MODEL, "--slot", slot, *extra],
                          log)


def query_replica(root: Path, index: list[ServiceProcess], log: Path, *extra: str) -> ServiceProcess:
    """A query replica (not started) routing over the given index slots."""
    return ServiceProcess("recsys-query-service",
                          ["--registry", str(root), "--model", MODEL,
                           "--index-address", ",".join(s.address for s in index), *extra], log)


@pytest.fixture(scope="session")
def long_ids_version(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A registry whose live version 1 (slot blue's) also holds, by its first catalogue delta, 1,000 candidates
    with ids of the most bytes an id may take, nearest to the query vector returned with it: answers of many
    results at their largest, for the message limits. Each slot takes them as it loads the version."""
    root = tmp_path_factory.mktemp("long-ids")
    train(root)
    make_live(root, 1)
    vector = np.full(Registry(root, MODEL).manifest(1).embedding_dim, 10.0, np.float32)
    ids = [f"{i:04d}".ljust(validation.MAX_ID_BYTES, "x") for i in range(1000)]
    write_delta(Registry(root, MODEL).model_dir, 1, Delta.make(ids, np.tile(vector, (len(ids), 1))))
    return root, vector


class VersionOracle:
    """Expected top-k of a customer from one version's own artifacts: its query
    tower's embedding, then exact dot-product search of its candidate embeddings."""

    def __init__(self, version_dir):
        import settings.tf_env  # noqa: F401 - must precede the TensorFlow import
        import tensorflow as tf

        self._tf = tf
        self._embed = tf.saved_model.load(str(version_dir / "query_tower")).signatures["serving_default"]
        self._ids = np.load(version_dir / files.CANDIDATE_IDS_FILE)
        self._embeddings = np.load(version_dir / files.CANDIDATE_EMBEDDINGS_FILE)
        with np.load(version_dir / files.POPULAR_FILE) as popular:
            self._popular = [str(i) for i in popular["ids"]]
        self._cache: dict[str, list[str]] = {}

    def top_k(self, customer_id: str, k: int = 10) -> list[str]:
        if customer_id not in self._cache:
            vector = self._embed(customer_id=self._tf.constant([customer_id]))["embedding"].numpy()[0]
            scores = self._embeddings @ vector.astype(np.float32)
            self._cache[customer_id] = [str(self._ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]
        return self._cache[customer_id]

    def popular(self, k: int = 10) -> list[str]:
        return self._popular[:k]


def overlap(got: list[str], expected: list[str]) -> float:
    return len(set(got) & set(expected)) / len(expected)


def live_versions(*addresses: str) -> list[int]:
    """The live version each service says it has (its admin plane's GetStatus)."""
    out = []
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
        out.append(status.live_version)
    return out


@contextmanager
def blue_and_query(root: Path, logs: Path, redis_url: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Index slot blue and one query replica over it with Redis at ``redis_url``, started; stopped after."""
    index = index_slot(root, "blue", logs / "index.log")
    query = query_replica(root, [index], logs / "query.log", "--redis-url", redis_url)
    start_all(index, query)
    try:
        yield index, query
    finally:
        query.stop()
        index.stop()


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory) -> Path:
    registry = tmp_path_factory.mktemp("registry")
    train(registry)
    make_live(registry, 1)
    return registry


@pytest.fixture(scope="module")
def index_service(trained_registry, tmp_path_factory):
    service = index_slot(trained_registry, "blue", tmp_path_factory.mktemp("logs") / "index.log").start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def query_service(trained_registry, index_service, redis_server, tmp_path_factory):
    service = query_replica(trained_registry, [index_service], tmp_path_factory.mktemp("logs") / "query.log",
                            "--redis-url", redis_server.url).start()
    yield service
    service.stop()
