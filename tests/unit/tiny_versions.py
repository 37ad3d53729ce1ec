"""Tiny but real model versions for in-process tests of the serving cores: a
SavedModel query tower (a fixed embedding per known customer id), a customer
store, candidate embeddings, a brute-force ScaNN searcher built by the
trainer's builder, probe queries and the popularity list, published through
``Registry.publish``. No training, so a version takes a fraction of a second;
each seed gives a different embedding space."""

from __future__ import annotations

import datetime

import numpy as np

import settings.tf_env  # noqa: F401
import tensorflow as tf

from model_registry import Manifest, Registry
from model_registry import manifest as files
from model_registry.customers import CustomerStore
from trainer.export import index as index_builder

MODEL = "tiny"
CUSTOMERS = np.array([f"c{i:03d}" for i in range(20)])
CANDIDATES = np.array([f"i{i:03d}" for i in range(50)])
DIM = 4


class IdTower(tf.Module):
    """customer id -> its row of ``table`` (zeros and known=False for unknown ids)."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.lookup = tf.keras.layers.StringLookup(vocabulary=CUSTOMERS.tolist(), num_oov_indices=1)
        self.table = tf.Variable(np.concatenate([np.zeros((1, DIM), np.float32), table]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id")])
    def serve(self, customer_id):
        index = self.lookup(customer_id)
        return {"embedding": tf.gather(self.table, index), "known": index > 0}


def embeddings(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(customer vectors [20, DIM], candidate vectors [50, DIM]) of version ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(CUSTOMERS), DIM)).astype(np.float32), \
        rng.normal(size=(len(CANDIDATES), DIM)).astype(np.float32)


def exact_top_k(seed: int, customer: str, k: int, excluded: frozenset[str] = frozenset()) -> list[str]:
    """What version ``seed`` must answer for ``customer``: exact top-k over its candidates."""
    queries, candidates = embeddings(seed)
    scores = candidates @ queries[list(CUSTOMERS).index(customer)]
    return [c for c in CANDIDATES[np.argsort(-scores, kind="stable")].tolist() if c not in excluded][:k]


def publish(registry: Registry, seed: int, probe_dim: int = DIM, shards: int = 1) -> Manifest:
    """Publishes a version with the embedding space of ``seed`` (``probe_dim``
    other than DIM makes its index self-test fail), its candidates in ``shards``."""
    queries, candidates = embeddings(seed)
    built, spec = index_builder.build_shards(candidates, queries, CANDIDATES, shards)
    store = CustomerStore.build(CUSTOMERS, CANDIDATES[np.arange(len(CUSTOMERS)) % len(CANDIDATES)],
                                np.zeros(len(CUSTOMERS), np.int64))

    def write(staging):
        tower = IdTower(queries)
        tf.saved_model.save(tower, str(staging / files.QUERY_TOWER_DIR), signatures={"serving_default": tower.serve})
        store.save(staging / files.CUSTOMER_STORE_FILE)
        sharded = index_builder.save_candidates(staging, CANDIDATES, candidates, built)
        files.write_popular(staging, CANDIDATES[:10], np.linspace(1, 0.1, 10))
        np.save(staging / files.PROBE_QUERIES_FILE, np.ones((5, probe_dim), np.float32))
        return lambda version, checksums: Manifest(
            model=MODEL, version=version, embedding_dim=DIM, num_candidates=len(CANDIDATES), tower="id",
            dataset=f"tiny-{seed}", created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            index=spec, files=checksums, shards=sharded)

    return registry.publish(write)
