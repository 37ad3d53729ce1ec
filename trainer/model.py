"""The TFRS two-tower retrieval model (id towers) and its training loop.

Training uses in-batch softmax (``tfrs.tasks.Retrieval``) with logQ sampling-bias
correction: popular candidates appear as in-batch negatives far more often than
rare ones, so without the correction the model learns mostly popularity.
Training stops early on a validation hit rate carved out of the training data
and keeps the best epoch's weights.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

import model_registry.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import evaluate
from trainer.data import Interactions


@dataclasses.dataclass
class TrainConfig:
    """Model and training hyper-parameters."""

    embedding_dim: int = 64
    max_epochs: int = 30  # early stopping usually stops sooner
    batch_size: int = 512
    optimizer: str = "adagrad"  # "adagrad" or "adam"
    learning_rate: float = 0.1
    temperature: float = 1.0
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    validation_fraction: float = 0.1  # of the training interactions
    patience: int = 2  # epochs without improvement before stopping
    monitor: str = "hit_rate_excluding_seen@100"
    max_validation_interactions: int = 20_000  # keeps per-epoch validation cheap at scale
    seed: int = 42
    verbose: bool = True


@dataclasses.dataclass
class TrainResult:
    """A trained model and facts about its training run."""

    model: "TwoTowerModel"
    epochs_run: int
    best_epoch: int
    train_seconds: float  # time spent in gradient steps only
    examples_per_second: float
    history: list[dict[str, float]]


class IdTower(tf.keras.Model):
    """String id -> embedding. Ids outside the vocabulary share one OOV row."""

    def __init__(self, vocabulary: np.ndarray, embedding_dim: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(v) for v in vocabulary], mask_token=None, num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(
            len(vocabulary) + 1, embedding_dim,
            embeddings_initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(ids))

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """True where the id is in the vocabulary (StringLookup puts OOV at index 0)."""
        return self.lookup(ids) > 0


class TwoTowerModel(tfrs.Model):
    """Query (customer) tower and candidate tower trained with in-batch softmax."""

    def __init__(self, customer_vocabulary: np.ndarray, candidate_vocabulary: np.ndarray,
                 config: TrainConfig):
        super().__init__()
        self.config = config
        self.query_tower = IdTower(customer_vocabulary, config.embedding_dim, config.seed, name="query_tower")
        self.candidate_tower = IdTower(candidate_vocabulary, config.embedding_dim, config.seed + 1,
                                       name="candidate_tower")
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
        )

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        query = self.query_tower(features["customer_id"])
        candidate = self.candidate_tower(features["candidate_id"])
        return self.task(
            query, candidate,
            candidate_sampling_probability=(
                features["sampling_probability"] if self.config.logq_correction else None),
            candidate_ids=features["candidate_id"],
            compute_metrics=False,  # metrics are computed exactly in numpy, per epoch
            compute_batch_metrics=False,
        )


def embed(tower: IdTower, ids: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Runs a tower over string ids in batches; float32 [len(ids), D]."""
    out = [tower(tf.constant(ids[a:a + batch_size])).numpy() for a in range(0, len(ids), batch_size)]
    if not out:
        return np.zeros((0, tower.embedding.output_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    name = config.optimizer.lower()
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=config.learning_rate)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=config.learning_rate)
    raise ValueError(f"optimizer must be 'adagrad' or 'adam', got {config.optimizer!r}")


def _dataset(data: Interactions, sampling_probability: np.ndarray, config: TrainConfig) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices({
        "customer_id": data.customer_ids,
        "candidate_id": data.candidate_ids,
        "sampling_probability": sampling_probability.astype(np.float32),
    })
    # Shuffling the full set each epoch matters: in-batch negatives should be random.
    return (ds.shuffle(min(len(data), 1_000_000), seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size).prefetch(tf.data.AUTOTUNE))


def candidate_frequencies(candidate_ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Returns id -> share of interactions, the logQ sampling probability estimate."""
    uniq, counts = np.unique(candidate_ids, return_counts=True)
    share = counts / counts.sum()
    return lambda ids: share[np.searchsorted(uniq, ids)]


def train(train_data: Interactions, config: TrainConfig | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Trains a two-tower model on ``train_data`` with early stopping.

    A seeded ``validation_fraction`` of the training interactions is held out
    to pick the epoch (``config.monitor``, best weights restored). The customer
    vocabulary is every training customer; the candidate vocabulary is the
    catalog, so every catalog item gets an index entry.
    """
    config = config or TrainConfig()
    if log is None:
        log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if config.verbose else (lambda msg: None)
    if len(train_data) < 2:
        raise ValueError("need at least 2 training interactions")
    tf.keras.utils.set_random_seed(config.seed)

    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(train_data))
    num_val = int(len(train_data) * config.validation_fraction)
    fit_part = train_data.take(np.sort(perm[num_val:]))
    val_part = train_data.take(np.sort(perm[:num_val])) if num_val > 0 else None

    model = TwoTowerModel(np.unique(train_data.customer_ids), train_data.catalog, config)
    model.compile(optimizer=_optimizer(config))
    freq = candidate_frequencies(fit_part.candidate_ids)
    ds = _dataset(fit_part, freq(fit_part.candidate_ids), config)

    val_set = None
    if val_part is not None:
        val_set = evaluate.prepare(fit_part, val_part, train_data.catalog,
                                   max_test_interactions=config.max_validation_interactions, seed=config.seed)
    history: list[dict[str, float]] = []
    best, best_epoch, best_weights, bad_epochs = -np.inf, 0, None, 0
    train_seconds = 0.0
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        fit = model.fit(ds, epochs=1, verbose=0)
        train_seconds += time.perf_counter() - t0
        row = {"epoch": epoch, "loss": float(fit.history["loss"][-1])}
        if val_set is not None:
            scores = evaluate.embedding_scores(embed(model.query_tower, val_set.customers),
                                               embed(model.candidate_tower, val_set.catalog))
            row.update(evaluate.hit_rates(scores, val_set, (10, 100)))
        history.append(row)
        if val_set is None:
            best_epoch = epoch
            continue
        value = row[config.monitor]
        log(f"epoch {epoch}: loss={row['loss']:.1f} val {config.monitor}={value:.4f} "
            f"val hit_rate_excluding_seen@10={row['hit_rate_excluding_seen@10']:.4f}")
        if value > best:
            best, best_epoch, best_weights, bad_epochs = value, epoch, model.get_weights(), 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                log(f"early stop after epoch {epoch}; best epoch {best_epoch} ({config.monitor}={best:.4f})")
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return TrainResult(model, epoch, best_epoch, train_seconds,
                       epoch * len(fit_part) / max(train_seconds, 1e-9), history)
