"""The training loop: early stopping on a validation share, then a refit.

For history towers, the query of a training interaction (u, i) is u's other
training items (i excluded), so the model learns to predict a new item from a
history instead of copying it; histories are built per batch inside tf.data.
Training stops early on a validation hit rate carved out of the training data,
where the popularity prior's weight is also chosen; a fresh model is then
trained on all the training data for the epoch count that won
(``TrainConfig.refit``), or the best epoch's weights are kept.

Inside a multi-worker ``strategy.scope()`` (``trainer.distribute``) the same
functions train one model across the workers, each taking its share of every
global batch; every worker runs this loop and stops at the chief's epoch.
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
from trainer import distribute, interrupts
from trainer.config import VALIDATION_KS, TrainConfig, informative_monitor
from trainer.data import Interactions
from trainer.evaluation import metrics
from trainer.evaluation.validation import Validation, lift
from trainer.model import TwoTowerModel, customer_store, embed, query_embeddings
from trainer.towers.prior import PRIOR_WEIGHTS, PopularityPrior, choose_prior


@dataclasses.dataclass
class TrainResult:
    """A trained model and facts about its training run."""

    model: "TwoTowerModel"
    epochs_run: int
    best_epoch: int
    train_seconds: float  # time spent in Keras's fit: gradient steps, the input pipeline, the first epoch's tracing
    examples_per_second: float  # of the whole run: with several workers, all of theirs together
    history: list[dict[str, float]]
    refit_epochs: int = 0  # epochs of the final model's refit on all the data (0: no refit)
    prior: PopularityPrior = PopularityPrior()
    workers: int = 1  # replicas trained in sync (tf.distribute); 1: this process alone


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
    built per batch), the candidate id, its catalog index and its logQ sampling probability."""
    tower = model.query_tower
    # Each event's own inputs: its customer's stored features, its own time. The
    # history is built per batch (``TrainingHistories``), without the event itself.
    inputs = tower_inputs(tower.takes, customer_store(tower, data) if tower.feature_names else None,
                          data.customer_ids, request_time=data.timestamps, with_history=False)
    inputs["candidate_id"] = data.candidate_ids
    inputs["sampling_probability"] = candidate_frequencies(data.candidate_ids)(data.candidate_ids).astype(np.float32)
    index = index_of(np.asarray(data.catalog), data.candidate_ids)
    if (index < 0).any():
        raise ValueError("every training candidate must be in the catalog")
    # Integer ids for the in-batch accidental-hit mask: comparing B x B strings took
    # half of an id tower's step.
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
    # Under a multi-worker strategy every worker builds this same seeded stream and
    # takes its share of each global batch. The default policy (AUTO) would look for
    # files to shard first, and there are none: the data is in-memory tensors.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


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
    model_class = distribute.ReplicatedTwoTowerModel if distribute.replicas() > 1 else TwoTowerModel
    model = model_class(customers, train_data.catalog, config, customer_features,
                        getattr(train_data, "candidate_features", None), train_data.timestamps)
    model.compile(optimizer=_optimizer(config))
    return model


@dataclasses.dataclass
class EarlyStopped:
    """A model trained with early stopping on a validation split, at its best
    epoch's weights, with the popularity prior chosen on the same split."""

    model: "TwoTowerModel"
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    seconds: float
    examples: int
    prior: PopularityPrior
    validation_rates: dict[str, float]  # with the prior
    lift: float  # ``validation.lift`` of those rates: the run's figure of merit
    prior_grid: list[dict[str, float]]
    cut_by_deadline: bool = False  # stopped by the search's time budget, not by early stopping


def fit_early_stopped(train_data: Interactions, validation: Validation, config: TrainConfig,
                      log: Callable[[str], None] = lambda msg: None,
                      on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                      deadline: float | None = None) -> EarlyStopped:
    """Trains on ``validation.fit`` until ``config.monitor`` on the held-out part
    (at a K below the catalogue's size: ``informative_monitor``) stops improving
    (``config.patience``), or ``deadline`` (``time.monotonic()``) passes, and
    chooses the popularity prior at the best epoch.

    ``on_epoch(epoch, validation row)`` runs after each epoch and may raise to
    abandon the run (the search prunes trials this way). The model's
    vocabularies cover all of ``train_data``, as the refit's will.
    """
    model = _new_model(train_data, config)
    ds = _dataset(validation.fit, model, config)
    val_set = validation.eval_set
    fit_store = customer_store(model.query_tower, validation.fit)
    history: list[dict[str, float]] = []
    monitor = informative_monitor(config.monitor, len(val_set.catalog))
    if monitor != config.monitor:
        log(f"early stopping watches {monitor}: {config.monitor} hits every time over "
            f"{len(val_set.catalog)} candidates")
    best, best_epoch, best_weights, bad_epochs, cut = -np.inf, 0, None, 0, False
    seconds, examples, epoch = 0.0, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        took, loss = _fit(model, ds, 1)
        seconds += took
        # With several workers each counts the whole epoch, which they shared in the
        # same seconds: examples / seconds is the run's global rate.
        examples += len(validation.fit)
        scores = metrics.embedding_scores(query_embeddings(model, fit_store, val_set.customers),
                                           embed(model.candidate_tower, val_set.catalog))
        row = {"epoch": epoch, "loss": loss, **metrics.hit_rates(scores, val_set, VALIDATION_KS)}
        interrupts.check()  # a stop during the validation scoring (long at a million interactions)
        history.append(row)
        value = distribute.chief_value(row[monitor])
        also = "hit_rate_excluding_seen@10"  # the headline rate, beside the one early stopping watches
        log(f"epoch {epoch}: loss={row['loss']:.1f} val {monitor}={value:.4f}"
            + ("" if monitor == also else f" val {also}={row[also]:.4f}"))
        if value > best:
            best, best_epoch, best_weights, bad_epochs = value, epoch, model.get_weights(), 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                log(f"early stop after epoch {epoch}; best epoch {best_epoch} ({monitor}={best:.4f})")
                break
        if on_epoch is not None:
            on_epoch(epoch, row)
        if deadline is not None and time.monotonic() > deadline and epoch < config.max_epochs:
            log(f"time budget reached after epoch {epoch}; best epoch {best_epoch}")
            cut = True
            break
    model.set_weights(best_weights)
    # Only the chief publishes a prior, and only it holds the baselines' bars (``Validation.references``) the
    # prior and the lift are judged against: another worker takes the chief's weight and lift, without a grid of
    # its own, so every worker's search decides alike and only the chief's choice is logged.
    prior, rates, grid, score = PopularityPrior(temperature=config.temperature), {}, [], 0.0
    if distribute.is_chief(tf.distribute.get_strategy()):
        weights = PRIOR_WEIGHTS if config.prior_weight is None else (config.prior_weight,)
        prior, rates, grid = choose_prior(query_embeddings(model, fit_store, val_set.customers),
                                          embed(model.candidate_tower, val_set.catalog), config.temperature,
                                          validation, weights)
        score = lift(rates, validation.references)
        log(f"popularity prior weight {prior.weight}: validation lift {score:.4f}")
    prior = dataclasses.replace(prior, weight=distribute.chief_value(prior.weight))
    score = distribute.chief_value(score)
    return EarlyStopped(model, best_epoch, epoch, history, seconds, examples, prior, rates, score, grid, cut)


def refit(train_data: Interactions, config: TrainConfig, stopped: EarlyStopped,
          log: Callable[[str], None] = lambda msg: None) -> TrainResult:
    """The final model of a run: with ``config.refit``, a fresh model trained on
    all of ``train_data`` for the early-stopped epoch count (+ ``refit_extra_epochs``);
    otherwise the early-stopped model itself. Keeps the chosen prior."""
    model, seconds, examples, refit_epochs = stopped.model, stopped.seconds, stopped.examples, 0
    if config.refit:
        refit_epochs = stopped.best_epoch + config.refit_extra_epochs
        log(f"refit on all {len(train_data)} training interactions for {refit_epochs} epochs")
        model = _new_model(train_data, config)
        seconds += _fit(model, _dataset(train_data, model, config), refit_epochs)[0]
        examples += refit_epochs * len(train_data)
    return TrainResult(model, stopped.epochs_run, stopped.best_epoch, seconds, examples / max(seconds, 1e-9),
                       stopped.history, refit_epochs, stopped.prior, distribute.replicas())


def train(train_data: Interactions, config: TrainConfig | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Trains one configuration: early stopping on a validation split, then the
    refit (see ``fit_early_stopped`` and ``refit``).

    The validation split is a seeded ``config.validation_fraction`` of
    ``train_data``; with none (fraction 0) the model trains ``max_epochs`` on
    everything and serves without a prior, unless ``config.prior_weight`` pins
    one. The customer vocabulary is every
    training customer; the candidate vocabulary is the catalog, so every
    catalog item gets an index entry.
    """
    config = config or TrainConfig()
    log = log or (lambda msg: None)
    if len(train_data) < 2:
        raise ValueError("need at least 2 training interactions")
    validation = Validation.carve(train_data, config.validation_fraction, config.seed,
                                  config.max_validation_interactions)
    if validation is None:
        model = _new_model(train_data, config)
        seconds, _ = _fit(model, _dataset(train_data, model, config), config.max_epochs)
        # A pinned weight needs no validation to choose it: dropping it would serve another model than asked for.
        prior = PopularityPrior(config.prior_weight, config.temperature) if config.prior_weight else PopularityPrior()
        return TrainResult(model, config.max_epochs, config.max_epochs, seconds,
                           config.max_epochs * len(train_data) / max(seconds, 1e-9), [],
                           prior=prior, workers=distribute.replicas())
    return refit(train_data, config, fit_early_stopped(train_data, validation, config, log), log)


class _StopAtBatchEnd(tf.keras.callbacks.Callback):
    """Ends training at the end of the batch a stop came in (``interrupts.deferred``), not an epoch later."""

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True  # it reads no logs: Keras need not copy them to numpy each batch for it

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()


def _fit(model: TwoTowerModel, ds: tf.data.Dataset, epochs: int) -> tuple[float, float]:
    """Runs ``epochs`` epochs of ``ds``; returns (seconds spent, last epoch's loss)."""
    t0 = time.perf_counter()
    fit = model.fit(ds, epochs=epochs, verbose=0, callbacks=[_StopAtBatchEnd()])
    loss = float(fit.history["loss"][-1])
    if not np.isfinite(loss):  # else its NaN weights were scored, published, and blamed on the index's recall
        raise FloatingPointError(f"training diverged (loss {loss}): lower --learning-rate, or look for extreme "
                                 "values in the data (a catalogue number, a rating)")
    return time.perf_counter() - t0, loss
