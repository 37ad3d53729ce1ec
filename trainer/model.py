"""The TFRS two-tower retrieval model, and running its towers over numpy data.

Training uses in-batch softmax (``tfrs.tasks.Retrieval``) with logQ sampling-bias
correction: popular candidates appear as in-batch negatives far more often than
rare ones, so without the correction the loss pushes them down and the scores
learn popularity out; with it they estimate the full softmax's, popularity in.
``negatives="catalog"`` is an exact softmax over the whole catalogue instead.
"""

from __future__ import annotations

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from model_registry.customers import CustomerStore
from model_registry.tower_inputs import tower_inputs
from trainer.config import TrainConfig
from trainer.data import Interactions
from trainer.towers.build import build_towers
from trainer.towers.query import QueryTower


class TwoTowerModel(tfrs.Model):
    """Query (customer) tower and candidate tower trained with in-batch softmax."""

    def __init__(self, customer_vocabulary: np.ndarray, candidate_vocabulary: np.ndarray,
                 config: TrainConfig, customer_features: dict[str, np.ndarray] | None = None,
                 candidate_features: dict[str, np.ndarray] | None = None, timestamps: np.ndarray | None = None):
        super().__init__()
        self.config = config
        self.query_tower, self.candidate_tower = build_towers(
            config.towers, config.seed, customer_vocabulary, candidate_vocabulary, customer_features,
            candidate_features, timestamps)
        self.catalog_ids = tf.constant(np.asarray(candidate_vocabulary).astype(str))
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
        )

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        query = self.query_tower(features, training=training)
        if self.config.negatives == "catalog":
            return self._catalog_softmax_loss(query, features)
        candidate = self.candidate_tower(features["candidate_id"])
        return self.task(
            query, candidate,
            candidate_sampling_probability=(
                features["sampling_probability"] if self.config.logq_correction else None),
            candidate_ids=features["candidate_index"],
            compute_metrics=False,  # metrics are computed exactly in numpy, per epoch
            compute_batch_metrics=False,
        )

    def _catalog_softmax_loss(self, query: tf.Tensor, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Exact softmax over the whole catalog, summed over the batch."""
        catalog = self.candidate_tower(self.catalog_ids)  # [N, D]
        logits = tf.matmul(query, catalog, transpose_b=True) / self.config.temperature
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=features["candidate_index"], logits=logits))


def embed(tower: tf.keras.Model, ids: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Runs a candidate (or id) tower over string ids in batches; float32 [len(ids), D]."""
    out = [tower(tf.constant(ids[a:a + batch_size])).numpy() for a in range(0, len(ids), batch_size)]
    if not out:
        return np.zeros((0, tower(tf.constant(["x"])).shape[-1]), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def call_query_tower(tower: QueryTower, inputs: dict[str, np.ndarray],
                     batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Runs a query tower over numpy inputs in batches; (float32 [n, D], known bool [n])."""
    n = len(inputs["customer_id"])
    embs, known = [], []
    for a in range(0, n, batch_size):
        batch = {k: tf.constant(v[a:a + batch_size]) for k, v in inputs.items()}
        embs.append(tower(batch).numpy())
        known.append(tower.known(batch).numpy())
    if not embs:
        return np.zeros((0, tower.embedding_dim), np.float32), np.zeros(0, bool)
    return np.concatenate(embs).astype(np.float32, copy=False), np.concatenate(known)


def customer_store(tower: QueryTower, data: Interactions) -> CustomerStore:
    """The customer store of ``data`` holding what ``tower`` reads (its history
    length, its feature columns)."""
    store = CustomerStore.build(data.customer_ids, data.candidate_ids, data.timestamps,
                                **({"history_length": tower.history_length} if tower.history_length else {}),
                                feature_ids=data.customer_feature_ids, feature_columns=data.customer_features)
    return store.only_features(tower.feature_names)


def query_embeddings(model: TwoTowerModel, store: CustomerStore, customers: np.ndarray) -> np.ndarray:
    """Query vectors of ``customers`` from their stored inputs, as the query
    service would compute them at the end of the training period; float32 [n, D]."""
    tower = model.query_tower
    end = tower.time_range[1] if tower.time_range is not None else None
    return call_query_tower(tower, tower_inputs(tower.takes, store, customers, request_time=end))[0]
