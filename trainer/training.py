"""The training loop: early stopping on a validation share, then a refit.

For history towers, the query of a training interaction (u, i) is u's other
training items (i excluded), so the model learns to predict a new item from a
history instead of copying it; histories are built per batch inside tf.data.
Training stops early on a validation hit rate carved out of the training data;
a fresh model is then trained on all the training data for the epoch count
that won (``TrainConfig.refit``), or the best epoch's weights are kept.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf

from model_registry.customers import CustomerStore, recency_groups
from model_registry.ids import index_of
from model_registry.tower_inputs import tower_inputs
from trainer.config import VALIDATION_KS, TrainConfig
from trainer.data import Interactions
from trainer.evaluation import metrics
from trainer.model import TwoTowerModel, customer_store, embed, query_embeddings


@dataclasses.dataclass
class TrainResult:
    """A trained model and facts about its training run."""

    model: "TwoTowerModel"
    epochs_run: int
    best_epoch: int
    train_seconds: float  # time spent in gradient steps only
    examples_per_second: float
    history: list[dict[str, float]]
    refit_epochs: int = 0  # epochs of the final model's refit on all the data (0: no refit)


@dataclasses.dataclass
class TrainingHistories:
    """The history input of every training event, built per batch inside tf.data.

    For event (u, i) the history is u's other events' items, most recent first,
    at most ``length``, "" padded; excluding i itself keeps the model from
    learning to copy the target. Only integer arrays are kept (a few bytes per
    event): materialising [n, L] strings up front needs ~10 GB at 10M events.
    """

    length: int
    vocabulary: tf.Tensor  # str [V + 1]: "" then the distinct items
    items: tf.Tensor  # int32 [n]: vocabulary index of each event's item, grouped by customer, recent first
    start: tf.Tensor  # int64 [n]: per event (original order), where its customer's group starts
    end: tf.Tensor  # int64 [n]: ... and ends
    position: tf.Tensor  # int64 [n]: ... and the event's own place in it

    @classmethod
    def build(cls, data: Interactions, length: int) -> "TrainingHistories":
        n = len(data)
        customers, bounds, order = recency_groups(data.customer_ids, data.candidate_ids, data.timestamps)
        vocab, item_index = np.unique(data.candidate_ids[order], return_inverse=True)
        group = np.repeat(np.arange(len(customers)), np.diff(bounds))
        start, end, position = (np.empty(n, np.int64) for _ in range(3))
        start[order] = bounds[:-1][group]
        end[order] = bounds[1:][group]
        position[order] = np.arange(n) - bounds[:-1][group]
        return cls(length, tf.constant(np.concatenate([[""], vocab.astype(str)])),
                   tf.constant(item_index.astype(np.int32) + 1), tf.constant(start), tf.constant(end),
                   tf.constant(position))

    def lookup(self, events: tf.Tensor) -> tf.Tensor:
        """str [B, length]: the histories of the events at ``events`` (int64 [B])."""
        start = tf.gather(self.start, events)[:, None]
        position = tf.gather(self.position, events)[:, None]
        offset = tf.range(self.length, dtype=tf.int64)[None, :]
        src = start + offset + tf.cast(offset >= position, tf.int64)  # skip the event itself
        valid = src < tf.gather(self.end, events)[:, None]
        last = tf.maximum(tf.size(self.items, out_type=tf.int64) - 1, 0)
        index = tf.where(valid, tf.gather(self.items, tf.minimum(src, last)), 0)
        return tf.gather(self.vocabulary, index)



def _optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    name = config.optimizer.lower()
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=config.learning_rate)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=config.learning_rate)
    raise AssertionError(config.optimizer)  # TrainConfig admits no other


def _dataset(data: Interactions, model: TwoTowerModel, config: TrainConfig) -> tf.data.Dataset:
    """Shuffled training batches of ``data``: the query tower's raw inputs (histories
    built per batch), the candidate id, its logQ sampling probability and, for catalog
    negatives, its catalog index."""
    tower = model.query_tower
    # Each event's own inputs: its customer's stored features, its own time. The
    # history is built per batch (``TrainingHistories``), without the event itself.
    inputs = tower_inputs(tower.takes, customer_store(tower, data) if tower.feature_names else None,
                          data.customer_ids, request_time=data.timestamps, with_history=False)
    inputs["candidate_id"] = data.candidate_ids
    inputs["sampling_probability"] = candidate_frequencies(data.candidate_ids)(data.candidate_ids).astype(np.float32)
    if config.negatives == "catalog":
        index = index_of(np.asarray(data.catalog), data.candidate_ids)
        if (index < 0).any():
            raise ValueError("negatives='catalog' needs every training candidate in the catalog")
        inputs["candidate_index"] = index.astype(np.int32)
    histories = None
    if tower.history_length:
        histories = TrainingHistories.build(data, tower.history_length)
        inputs["event"] = np.arange(len(data), dtype=np.int64)
    # Shuffling the full set each epoch matters: in-batch negatives should be random.
    ds = (tf.data.Dataset.from_tensor_slices(inputs)
          .shuffle(min(len(data), 1_000_000), seed=config.seed, reshuffle_each_iteration=True)
          .batch(config.batch_size))
    if histories is not None:
        ds = ds.map(lambda b: {**{k: v for k, v in b.items() if k != "event"}, "history": histories.lookup(b["event"])},
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def candidate_frequencies(candidate_ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Returns id -> share of interactions, the logQ sampling probability estimate."""
    uniq, counts = np.unique(candidate_ids, return_counts=True)
    share = counts / counts.sum()
    return lambda ids: share[np.searchsorted(uniq, ids)]


def _new_model(train_data: Interactions, config: TrainConfig) -> TwoTowerModel:
    """A compiled, untrained model whose vocabularies cover ``train_data`` and its catalog."""
    tf.keras.utils.set_random_seed(config.seed)
    customers = np.unique(train_data.customer_ids)
    customer_features = None
    if config.towers.kind == "features":
        customer_features = CustomerStore.build(train_data.customer_ids, train_data.candidate_ids,
                                                train_data.timestamps, 1, train_data.customer_feature_ids,
                                                train_data.customer_features).features
    model = TwoTowerModel(customers, train_data.catalog, config, customer_features,
                          getattr(train_data, "candidate_features", None), train_data.timestamps)
    model.compile(optimizer=_optimizer(config))
    return model


def train(train_data: Interactions, config: TrainConfig | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Trains a two-tower model on ``train_data`` with early stopping.

    A seeded ``validation_fraction`` of the training interactions is held out
    to pick the epoch (``config.monitor``). With ``config.refit`` a fresh model
    is then trained on all of ``train_data`` for that many epochs; otherwise the
    best epoch's weights are kept. The customer vocabulary is every training
    customer; the candidate vocabulary is the catalog, so every catalog item
    gets an index entry.
    """
    config = config or TrainConfig()
    log = log or (lambda msg: None)
    if len(train_data) < 2:
        raise ValueError("need at least 2 training interactions")
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(train_data))
    num_val = int(len(train_data) * config.validation_fraction)
    if num_val == 0:
        model = _new_model(train_data, config)
        seconds, _ = _fit(model, _dataset(train_data, model, config), config.max_epochs)
        return TrainResult(model, config.max_epochs, config.max_epochs, seconds,
                           config.max_epochs * len(train_data) / max(seconds, 1e-9), [])

    fit_part = train_data.take(np.sort(perm[num_val:]))
    val_part = train_data.take(np.sort(perm[:num_val]))
    model = _new_model(train_data, config)
    ds = _dataset(fit_part, model, config)
    val_set = metrics.prepare(fit_part, val_part, train_data.catalog,
                               max_test_interactions=config.max_validation_interactions, seed=config.seed)
    fit_store = customer_store(model.query_tower, fit_part)
    history: list[dict[str, float]] = []
    best, best_epoch, best_weights, bad_epochs = -np.inf, 0, None, 0
    train_seconds = 0.0
    examples = 0
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        seconds, loss = _fit(model, ds, 1)
        train_seconds += seconds
        examples += len(fit_part)
        scores = metrics.embedding_scores(query_embeddings(model, fit_store, val_set.customers),
                                           embed(model.candidate_tower, val_set.catalog))
        row = {"epoch": epoch, "loss": loss,
               **metrics.hit_rates(scores, val_set, VALIDATION_KS)}
        history.append(row)
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
    refit_epochs = 0
    if config.refit:
        refit_epochs = best_epoch + config.refit_extra_epochs
        log(f"refit on all {len(train_data)} training interactions for {refit_epochs} epochs")
        model = _new_model(train_data, config)
        train_seconds += _fit(model, _dataset(train_data, model, config), refit_epochs)[0]
        examples += refit_epochs * len(train_data)
    else:
        model.set_weights(best_weights)
    return TrainResult(model, epoch, best_epoch, train_seconds, examples / max(train_seconds, 1e-9), history,
                       refit_epochs)


def _fit(model: TwoTowerModel, ds: tf.data.Dataset, epochs: int) -> tuple[float, float]:
    """Runs ``epochs`` epochs of ``ds``; returns (seconds spent, last epoch's loss)."""
    t0 = time.perf_counter()
    fit = model.fit(ds, epochs=epochs, verbose=0)
    return time.perf_counter() - t0, float(fit.history["loss"][-1])
