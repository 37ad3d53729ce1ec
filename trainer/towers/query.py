"""Query and candidate towers of the two-tower model, chosen by name.

Every query tower takes a dict of raw inputs (``customer_id`` always, plus
``history`` for the history-aware towers and one entry per customer feature
for the ``features`` tower) and does all of its preprocessing itself, so the
exported SavedModel needs raw values only. Every query tower also answers
``known(inputs)``: whether it has a personal signal for the row (the id is in
its vocabulary, or, for history towers, at least one history item is).

Families (``TOWERS``):

* ``id``: StringLookup + Embedding of the customer id (unknown ids share the
  OOV row).
* ``features``: customer id embedding plus categorical lookups of the string
  customer features (a zip code keeps a prefix), normalised and bucketised
  numeric features, and the request time (``request_time``, unix seconds:
  the event's time in training, the serving time in production, clipped to the
  training period) bucketised by quantiles and normalised; optional deep
  layers. Its candidate tower adds the catalogue's columns to the id
  (``blocks.ItemEncoder``: free text as a bag of words, categories multi-hot,
  numbers normalised).
* ``history``: a bag of the customer's recent items (pooled item embeddings,
  optionally shared with the candidate tower), plus a projection and optionally
  the id embedding. A customer the tower never saw still gets a personal
  vector from a history.
* ``sequence``: a GRU over the recent items (most recent last in time).

Which inputs a tower takes is its ``inputs`` (a ``TowerInputs``); how a
customer's inputs are filled is ``model_registry.tower_inputs``, the rule the
query service serves with too.
"""

from __future__ import annotations

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf

from model_registry.tower_inputs import CUSTOMER_ID, FLOAT, HISTORY, REQUEST_TIME, STRING, TowerInputs
from trainer.towers.blocks import (IdTower, ItemEncoder, ServedModel, initializer, normalize, regularizer,
                                   standardisation)
from trainer.towers.config import TowerConfig

ZIP_PREFIX_LENGTH = 2
NUM_BUCKETS = 10
FEATURE_EMBEDDING_DIM = 16
TIME_BUCKETS = 20


class QueryTower(ServedModel):
    """Base: ``call(inputs dict) -> [B, D]``, ``known(inputs) -> bool [B]``;
    ``inputs`` says which inputs it takes, ``input_specs()`` is the serving
    signature made from it."""

    kind = "base"
    feature_names: tuple[str, ...] = ()
    feature_kinds: dict[str, str] = {}  # name -> STRING or FLOAT
    history_length = 0
    time_range: tuple[float, float] | None = None  # (first, last) training time, if it takes REQUEST_TIME

    @property
    def takes(self) -> TowerInputs:
        return TowerInputs(self.history_length, tuple((n, self.feature_kinds[n]) for n in self.feature_names),
                           self.time_range is not None)

    def input_specs(self) -> dict[str, tf.TensorSpec]:
        spec = self.takes
        specs = {CUSTOMER_ID: tf.TensorSpec([None], tf.string, name=CUSTOMER_ID)}
        if spec.history_length:
            specs[HISTORY] = tf.TensorSpec([None, spec.history_length], tf.string, name=HISTORY)
        for name, kind in spec.features:
            specs[name] = tf.TensorSpec([None], tf.string if kind == STRING else tf.float32, name=name)
        if spec.request_time:
            specs[REQUEST_TIME] = tf.TensorSpec([None], tf.float64, name=REQUEST_TIME)
        return specs


class IdQueryTower(QueryTower):
    kind = "id"

    def __init__(self, customers: np.ndarray, config: TowerConfig, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.ids = IdTower(customers, config.embedding_dim, seed, config.l2, name="customer_id_tower")
        self.normalize = config.normalize
        self.embedding_dim = config.embedding_dim

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return normalize(self.ids(inputs[CUSTOMER_ID]), self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.ids.known(inputs[CUSTOMER_ID])


class FeatureQueryTower(QueryTower):
    """Customer id + categorical / numeric customer features -> embedding."""

    kind = "features"

    def __init__(self, customers: np.ndarray, features: dict[str, np.ndarray], config: TowerConfig, seed: int,
                 timestamps: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.ids = IdTower(customers, config.embedding_dim, seed, config.l2, name="customer_id_tower")
        self.normalize = config.normalize
        self.embedding_dim = config.embedding_dim
        self.feature_names = tuple(sorted(features))
        self.feature_kinds = {}
        self.string_lookups: dict[str, tf.keras.layers.Layer] = {}
        self.feature_embeddings: dict[str, tf.keras.layers.Layer] = {}
        self.numeric_stats: dict[str, tuple[float, float]] = {}
        self.numeric_boundaries: dict[str, list[float]] = {}
        for i, name in enumerate(self.feature_names):
            col = features[name]
            if col.dtype.kind in "US":
                self.feature_kinds[name] = STRING
                values = self._prepare_string(name, tf.constant(col.astype(str))).numpy()
                vocab = sorted({v.decode() for v in values} - {""})
                self.string_lookups[name] = tf.keras.layers.StringLookup(
                    vocabulary=vocab or ["?"], mask_token=None, num_oov_indices=1, name=f"lookup_{name}")
                self.feature_embeddings[name] = tf.keras.layers.Embedding(
                    len(vocab or ["?"]) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=initializer(seed + 20 + i),
                    embeddings_regularizer=regularizer(config.l2), name=f"embedding_{name}")
            else:
                self.feature_kinds[name] = FLOAT
                finite, self.numeric_stats[name] = standardisation(col)
                qs = np.unique(np.quantile(finite, np.linspace(0, 1, NUM_BUCKETS + 1)[1:-1])) if len(finite) else []
                self.numeric_boundaries[name] = [float(q) for q in qs]
                self.feature_embeddings[name] = tf.keras.layers.Embedding(
                    len(qs) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=initializer(seed + 20 + i),
                    embeddings_regularizer=regularizer(config.l2), name=f"embedding_{name}")
        if config.time_features and timestamps is not None and len(timestamps) and np.ptp(timestamps) > 0:
            t = timestamps.astype(np.float64)
            self.time_range = (float(t.min()), float(t.max()))
            self.time_stats = (float(t.mean()), float(t.std()) or 1.0)
            quantiles = np.quantile(t, np.linspace(0, 1, TIME_BUCKETS + 1)[1:-1])
            self.time_boundaries = [float(q) for q in np.unique(quantiles)]
            self.time_embedding = tf.keras.layers.Embedding(
                len(self.time_boundaries) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=initializer(seed + 30),
                embeddings_regularizer=regularizer(config.l2), name="embedding_request_time")
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", kernel_regularizer=regularizer(config.l2),
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 40 + j))
                       for j, u in enumerate(config.deep_layers)]
        self.feature_projection = tf.keras.layers.Dense(
            config.embedding_dim, use_bias=False, kernel_regularizer=regularizer(config.l2),
            kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 50))

    @staticmethod
    def _prepare_string(name: str, x: tf.Tensor) -> tf.Tensor:
        x = tf.strings.strip(tf.strings.lower(x))
        if "zip" in name or "postcode" in name:
            x = tf.strings.substr(x, 0, ZIP_PREFIX_LENGTH)
        return x

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        parts = []
        for name in self.feature_names:
            x = inputs[name]
            if name in self.string_lookups:
                parts.append(self.feature_embeddings[name](self.string_lookups[name](self._prepare_string(name, x))))
            else:
                x = tf.cast(x, tf.float32)
                mean, std = self.numeric_stats[name]
                missing = tf.math.is_nan(x)
                x = tf.where(missing, tf.constant(mean, tf.float32), x)
                bucket = tf.raw_ops.Bucketize(input=x, boundaries=self.numeric_boundaries[name])
                parts.append(self.feature_embeddings[name](bucket))
                parts.append(tf.stack([(x - mean) / std, tf.cast(missing, tf.float32)], axis=1))
        if self.time_range is not None:
            # A serving time past the training period looks like its last moments.
            t = tf.clip_by_value(tf.cast(inputs[REQUEST_TIME], tf.float64), *self.time_range)
            parts.append(self.time_embedding(tf.raw_ops.Bucketize(input=t, boundaries=self.time_boundaries)))
            mean, std = self.time_stats
            parts.append(tf.cast((t - mean) / std, tf.float32)[:, None])
        out = self.ids(inputs[CUSTOMER_ID])
        if parts:  # a data set without customer features leaves just the id
            h = tf.concat(parts, axis=1)
            for layer in self.hidden:
                h = layer(h)
            out += self.feature_projection(h)
        return normalize(out, self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.ids.known(inputs[CUSTOMER_ID])


class HistoryQueryTower(QueryTower):
    """Recent items (bag or GRU) [+ customer id] -> embedding."""

    def __init__(self, customers: np.ndarray, encoder: ItemEncoder, config: TowerConfig, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.kind = config.kind
        self.encoder = encoder
        self.history_length = config.history_length
        self.embedding_dim = config.embedding_dim
        self.normalize = config.normalize
        self.pooling = config.pooling
        self.sequence_length = config.sequence_length
        self.history_dropout = config.history_dropout
        self.ids = (IdTower(customers, config.embedding_dim, seed, config.l2, name="customer_id_tower")
                    if config.use_customer_id else None)
        self.gru = (tf.keras.layers.GRU(config.embedding_dim, go_backwards=True,
                                        kernel_regularizer=regularizer(config.l2),
                                        kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 60),
                                        recurrent_initializer=tf.keras.initializers.Orthogonal(seed=seed + 61))
                    if config.kind == "sequence" else None)
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", kernel_regularizer=regularizer(config.l2),
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 40 + j))
                       for j, u in enumerate(config.deep_layers)]
        self.projection = (tf.keras.layers.Dense(
            config.embedding_dim, kernel_regularizer=regularizer(config.l2), kernel_initializer="zeros")
            if config.projection or config.deep_layers or config.kind == "sequence" else None)

    def _valid(self, idx: tf.Tensor) -> tf.Tensor:
        return idx >= 2  # 0 = padding "", 1 = unknown item

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        idx = self.encoder.indices(inputs[HISTORY])
        valid = self._valid(idx)
        if training and self.history_dropout > 0:
            # Denoising: each training query sees a random subset of its history.
            valid = tf.logical_and(valid, tf.random.uniform(tf.shape(idx)) >= self.history_dropout)
        emb = self.encoder.embed_indices(idx)  # [B, L, D]
        mask = tf.cast(valid, emb.dtype)[..., None]
        total = tf.reduce_sum(emb * mask, axis=1)
        n = tf.reduce_sum(mask, axis=1)
        if self.pooling == "mean":
            pooled = total / tf.maximum(n, 1.0)
        elif self.pooling == "sqrtn":
            pooled = total / tf.sqrt(tf.maximum(n, 1.0))
        else:
            pooled = total
        out = pooled
        h = pooled
        if self.gru is not None:
            # Items are most recent first; go_backwards reads the oldest first and ends on
            # the most recent; masked steps carry the state through. The GRU state is
            # added to the bag of items through the (zero-initialised) projection.
            steps = self.sequence_length
            h = self.gru(emb[:, :steps], mask=valid[:, :steps])
        if self.projection is not None:
            for layer in self.hidden:
                h = layer(h)
            out = pooled + self.projection(h)  # residual; the projection starts at zero
        if self.ids is not None:
            cid = inputs[CUSTOMER_ID]
            known_id = tf.cast(self.ids.known(cid), out.dtype)[:, None]
            out = out + self.ids(cid) * known_id  # unknown ids add nothing
        return normalize(out, self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        has_history = tf.reduce_any(self._valid(self.encoder.indices(inputs[HISTORY])), axis=1)
        if self.ids is None:
            return has_history
        return tf.logical_or(has_history, self.ids.known(inputs[CUSTOMER_ID]))
