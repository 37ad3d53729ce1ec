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
  layers. Its candidate tower adds the title text (TextVectorization, bag of
  words), genres and release year to the id.
* ``history``: a bag of the customer's recent items (pooled item embeddings,
  optionally shared with the candidate tower), plus a projection and optionally
  the id embedding. A customer the tower never saw still gets a personal
  vector from a history.
* ``sequence``: a GRU over the recent items (most recent last in time).

``CustomerData`` holds the per-customer serving inputs (ids, recent history,
seen items, features) that the trainer evaluates with and exports as
``customer_store.npz``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import model_registry.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from model_registry.manifest import CUSTOMER_FEATURE_PREFIX, REQUEST_TIME_INPUT

import numpy as np
import tensorflow as tf

from trainer.data import Interactions

TOWERS = ("id", "features", "history", "sequence")
HISTORY_TOWERS = ("history", "sequence")
DEFAULT_HISTORY_LENGTH = 50  # also the stored history length of towers without a history input
ZIP_PREFIX_LENGTH = 2
NUM_BUCKETS = 10
FEATURE_EMBEDDING_DIM = 16
FEATURE_PREFIX = CUSTOMER_FEATURE_PREFIX
REQUEST_TIME = REQUEST_TIME_INPUT
TIME_BUCKETS = 20


@dataclasses.dataclass
class TowerConfig:
    """Architecture knobs; ``kind`` picks the family (``TOWERS``)."""

    kind: str = "id"
    embedding_dim: int = 64
    history_length: int = DEFAULT_HISTORY_LENGTH
    pooling: str = "mean"  # history towers: "mean", "sqrtn" or "sum" over the history
    sequence_length: int = 20  # sequence tower: the GRU reads this many most recent items
    history_dropout: float = 0.0  # history towers: share of history items dropped per training query
    share_item_embeddings: bool = True  # history towers: one item table for history and candidates
    use_customer_id: bool = False  # history towers: add the customer id embedding
    projection: bool = True  # history towers: residual dense layer after pooling
    deep_layers: tuple[int, ...] = ()  # hidden ReLU layers before the final projection
    candidate_features: bool = False  # candidate tower: add title text / genres / year
    time_features: bool = False  # features tower: take the request time (when the data has time spread)
    normalize: bool = False  # L2-normalise both towers' outputs (use a temperature < 1)
    l2: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in TOWERS:
            raise ValueError(f"tower must be one of {', '.join(TOWERS)}, got {self.kind!r}")
        if self.pooling not in ("mean", "sqrtn", "sum"):
            raise ValueError(f"pooling must be 'mean', 'sqrtn' or 'sum', got {self.pooling!r}")
        self.deep_layers = tuple(int(u) for u in self.deep_layers)
        if self.history_length < 1 or self.embedding_dim < 1:
            raise ValueError("history_length and embedding_dim must be positive")

    @property
    def takes_history(self) -> bool:
        return self.kind in HISTORY_TOWERS


def _init(seed: int) -> tf.keras.initializers.Initializer:
    return tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)


def _reg(l2: float):
    return tf.keras.regularizers.L2(l2) if l2 > 0 else None


def _normalize(x: tf.Tensor, on: bool) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1) if on else x


# ---------------------------------------------------------------- building blocks


class IdTower(tf.keras.Model):
    """String id -> embedding. Ids outside the vocabulary share one OOV row."""

    def __init__(self, vocabulary: np.ndarray, embedding_dim: int, seed: int, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(v) for v in vocabulary], mask_token=None, num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(
            len(vocabulary) + 1, embedding_dim, embeddings_initializer=_init(seed),
            embeddings_regularizer=_reg(l2))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(ids))

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """True where the id is in the vocabulary (StringLookup puts OOV at index 0)."""
        return self.lookup(ids) > 0


class ItemEncoder(tf.keras.layers.Layer):
    """Candidate id (and optionally its catalog features) -> embedding.

    The lookup reserves index 0 for the padding id "" and 1 for unknown ids,
    so the same encoder embeds history items ([B, L]) and candidates ([B]).
    Catalog features are precomputed per catalog row (title tokens, genre
    multi-hot, normalised year) and gathered by the lookup index.
    """

    def __init__(self, catalog: np.ndarray, embedding_dim: int, seed: int, l2: float = 0.0,
                 features: dict[str, np.ndarray] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(v) for v in catalog], mask_token="", num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(
            len(catalog) + 2, embedding_dim, embeddings_initializer=_init(seed),
            embeddings_regularizer=_reg(l2))
        self.dim = embedding_dim
        self.has_features = False
        if features:
            self._build_features(catalog, features, embedding_dim, seed, l2)

    def _build_features(self, catalog: np.ndarray, features: dict[str, np.ndarray], dim: int, seed: int,
                        l2: float) -> None:
        dense_parts: list[np.ndarray] = []
        self.title_tokens = None
        title = features.get("title")
        if title is not None:
            # Drop the "(1995)" year suffix: the year is its own feature.
            text = np.char.strip(np.array([t.rsplit(" (", 1)[0] if t.endswith(")") else t for t in title.tolist()]))
            vectorizer = tf.keras.layers.TextVectorization(max_tokens=10_000, output_sequence_length=12)
            vectorizer.adapt(tf.constant(text[text != ""] if (text != "").any() else np.array(["none"])))
            tokens = vectorizer(tf.constant(text)).numpy()
            self.title_tokens = tf.constant(np.concatenate([np.zeros((2, tokens.shape[1]), tokens.dtype), tokens]))
            self.title_embedding = tf.keras.layers.Embedding(
                vectorizer.vocabulary_size(), dim, mask_zero=True, embeddings_initializer=_init(seed + 11),
                embeddings_regularizer=_reg(l2))
        genres = features.get("genres")
        if genres is not None:
            split = [[g for g in str(v).split("|") if g] for v in genres.tolist()]
            vocab = sorted({g for row in split for g in row})
            if vocab:
                pos = {g: i for i, g in enumerate(vocab)}
                multi = np.zeros((len(catalog), len(vocab)), np.float32)
                for r, row in enumerate(split):
                    for g in row:
                        multi[r, pos[g]] = 1.0
                multi /= np.maximum(multi.sum(axis=1, keepdims=True), 1.0)
                dense_parts.append(multi)
        for name, col in features.items():
            if name in ("title", "genres") or col.dtype.kind not in "fiu":
                continue
            x = col.astype(np.float64)
            ok = np.isfinite(x)
            mean = x[ok].mean() if ok.any() else 0.0
            std = x[ok].std() if ok.sum() > 1 else 1.0
            z = np.where(ok, (x - mean) / (std or 1.0), 0.0)
            dense_parts.append(np.stack([z, (~ok).astype(np.float64)], axis=1).astype(np.float32))
        self.dense_features = None
        if dense_parts:
            block = np.concatenate(dense_parts, axis=1).astype(np.float32)
            self.dense_features = tf.constant(np.concatenate([np.zeros((2, block.shape[1]), np.float32), block]))
            self.dense_projection = tf.keras.layers.Dense(
                dim, use_bias=False, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 12),
                kernel_regularizer=_reg(l2))
        self.has_features = self.title_tokens is not None or self.dense_features is not None

    def indices(self, ids: tf.Tensor) -> tf.Tensor:
        return self.lookup(ids)

    def embed_indices(self, idx: tf.Tensor) -> tf.Tensor:
        out = self.embedding(idx)
        if self.has_features:
            if self.title_tokens is not None:
                tok = tf.gather(self.title_tokens, idx)
                emb = self.title_embedding(tok)
                mask = tf.cast(tok > 0, emb.dtype)[..., None]
                out += tf.reduce_sum(emb * mask, axis=-2) / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
            if self.dense_features is not None:
                out += self.dense_projection(tf.gather(self.dense_features, idx))
        return out

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embed_indices(self.lookup(ids))


class CandidateTower(tf.keras.Model):
    """Candidate id -> embedding, through an ``ItemEncoder`` (possibly shared with a history tower)."""

    def __init__(self, encoder: ItemEncoder, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.normalize = normalize

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return _normalize(self.encoder(ids), self.normalize)


# ---------------------------------------------------------------- query towers


class QueryTower(tf.keras.Model):
    """Base: ``call(inputs dict) -> [B, D]``, ``known(inputs) -> bool [B]``,
    ``input_specs()`` -> the serving signature's inputs."""

    kind = "base"
    feature_names: tuple[str, ...] = ()
    history_length = 0
    time_range: tuple[float, float] | None = None  # (first, last) training time, if it takes REQUEST_TIME

    def input_specs(self) -> dict[str, tf.TensorSpec]:
        specs = {"customer_id": tf.TensorSpec([None], tf.string, name="customer_id")}
        if self.history_length:
            specs["history"] = tf.TensorSpec([None, self.history_length], tf.string, name="history")
        for name in self.feature_names:
            specs[name] = tf.TensorSpec([None], self.feature_dtypes[name], name=name)
        if self.time_range is not None:
            specs[REQUEST_TIME] = tf.TensorSpec([None], tf.float64, name=REQUEST_TIME)
        return specs


class IdQueryTower(QueryTower):
    kind = "id"

    def __init__(self, customers: np.ndarray, config: TowerConfig, **kwargs):
        super().__init__(**kwargs)
        self.ids = IdTower(customers, config.embedding_dim, config.seed, config.l2, name="customer_id_tower")
        self.normalize = config.normalize
        self.embedding_dim = config.embedding_dim

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return _normalize(self.ids(inputs["customer_id"]), self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.ids.known(inputs["customer_id"])


class FeatureQueryTower(QueryTower):
    """Customer id + categorical / numeric customer features -> embedding."""

    kind = "features"

    def __init__(self, customers: np.ndarray, features: dict[str, np.ndarray], config: TowerConfig,
                 timestamps: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.ids = IdTower(customers, config.embedding_dim, config.seed, config.l2, name="customer_id_tower")
        self.normalize = config.normalize
        self.embedding_dim = config.embedding_dim
        self.feature_names = tuple(sorted(features))
        self.feature_dtypes = {}
        self.string_lookups: dict[str, tf.keras.layers.Layer] = {}
        self.feature_embeddings: dict[str, tf.keras.layers.Layer] = {}
        self.numeric_stats: dict[str, tuple[float, float]] = {}
        self.numeric_boundaries: dict[str, list[float]] = {}
        for i, name in enumerate(self.feature_names):
            col = features[name]
            if col.dtype.kind in "US":
                self.feature_dtypes[name] = tf.string
                values = self._prepare_string(name, tf.constant(col.astype(str))).numpy()
                vocab = sorted({v.decode() for v in values} - {""})
                self.string_lookups[name] = tf.keras.layers.StringLookup(
                    vocabulary=vocab or ["?"], mask_token=None, num_oov_indices=1, name=f"lookup_{name}")
                self.feature_embeddings[name] = tf.keras.layers.Embedding(
                    len(vocab or ["?"]) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=_init(config.seed + 20 + i),
                    embeddings_regularizer=_reg(config.l2), name=f"embedding_{name}")
            else:
                self.feature_dtypes[name] = tf.float32
                x = col.astype(np.float64)
                ok = np.isfinite(x)
                mean = float(x[ok].mean()) if ok.any() else 0.0
                std = float(x[ok].std()) if ok.sum() > 1 else 1.0
                self.numeric_stats[name] = (mean, std or 1.0)
                qs = np.unique(np.quantile(x[ok], np.linspace(0, 1, NUM_BUCKETS + 1)[1:-1])) if ok.any() else []
                self.numeric_boundaries[name] = [float(q) for q in qs]
                self.feature_embeddings[name] = tf.keras.layers.Embedding(
                    len(qs) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=_init(config.seed + 20 + i),
                    embeddings_regularizer=_reg(config.l2), name=f"embedding_{name}")
        if config.time_features and timestamps is not None and len(timestamps) and np.ptp(timestamps) > 0:
            t = timestamps.astype(np.float64)
            self.time_range = (float(t.min()), float(t.max()))
            self.time_stats = (float(t.mean()), float(t.std()) or 1.0)
            quantiles = np.quantile(t, np.linspace(0, 1, TIME_BUCKETS + 1)[1:-1])
            self.time_boundaries = [float(q) for q in np.unique(quantiles)]
            self.time_embedding = tf.keras.layers.Embedding(
                len(self.time_boundaries) + 1, FEATURE_EMBEDDING_DIM, embeddings_initializer=_init(config.seed + 30),
                embeddings_regularizer=_reg(config.l2), name="embedding_request_time")
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", kernel_regularizer=_reg(config.l2),
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(config.seed + 40 + j))
                       for j, u in enumerate(config.deep_layers)]
        self.feature_projection = tf.keras.layers.Dense(
            config.embedding_dim, use_bias=False, kernel_regularizer=_reg(config.l2),
            kernel_initializer=tf.keras.initializers.GlorotUniform(config.seed + 50))

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
        out = self.ids(inputs["customer_id"])
        if parts:  # a data set without customer features leaves just the id
            h = tf.concat(parts, axis=1)
            for layer in self.hidden:
                h = layer(h)
            out += self.feature_projection(h)
        return _normalize(out, self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.ids.known(inputs["customer_id"])


class HistoryQueryTower(QueryTower):
    """Recent items (bag or GRU) [+ customer id] -> embedding."""

    def __init__(self, customers: np.ndarray, encoder: ItemEncoder, config: TowerConfig, **kwargs):
        super().__init__(**kwargs)
        self.kind = config.kind
        self.encoder = encoder
        self.history_length = config.history_length
        self.embedding_dim = config.embedding_dim
        self.normalize = config.normalize
        self.pooling = config.pooling
        self.sequence_length = config.sequence_length
        self.history_dropout = config.history_dropout
        self.ids = (IdTower(customers, config.embedding_dim, config.seed, config.l2, name="customer_id_tower")
                    if config.use_customer_id else None)
        self.gru = (tf.keras.layers.GRU(config.embedding_dim, go_backwards=True,
                                        kernel_regularizer=_reg(config.l2),
                                        kernel_initializer=tf.keras.initializers.GlorotUniform(config.seed + 60),
                                        recurrent_initializer=tf.keras.initializers.Orthogonal(seed=config.seed + 61))
                    if config.kind == "sequence" else None)
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", kernel_regularizer=_reg(config.l2),
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(config.seed + 40 + j))
                       for j, u in enumerate(config.deep_layers)]
        self.projection = (tf.keras.layers.Dense(
            config.embedding_dim, kernel_regularizer=_reg(config.l2), kernel_initializer="zeros")
            if config.projection or config.deep_layers or config.kind == "sequence" else None)

    def _valid(self, idx: tf.Tensor) -> tf.Tensor:
        return idx >= 2  # 0 = padding "", 1 = unknown item

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        idx = self.encoder.indices(inputs["history"])
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
            cid = inputs["customer_id"]
            known_id = tf.cast(self.ids.known(cid), out.dtype)[:, None]
            out = out + self.ids(cid) * known_id  # unknown ids add nothing
        return _normalize(out, self.normalize)

    def known(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        has_history = tf.reduce_any(self._valid(self.encoder.indices(inputs["history"])), axis=1)
        if self.ids is None:
            return has_history
        return tf.logical_or(has_history, self.ids.known(inputs["customer_id"]))


def build_towers(config: TowerConfig, customers: np.ndarray, catalog: np.ndarray,
                 customer_features: dict[str, np.ndarray] | None = None,
                 candidate_features: dict[str, np.ndarray] | None = None,
                 timestamps: np.ndarray | None = None) -> tuple[QueryTower, CandidateTower]:
    """(query tower, candidate tower) of ``config.kind``.

    ``customer_features`` are aligned with ``customers`` (the features tower's
    inputs); ``candidate_features`` with ``catalog``; ``timestamps`` are the
    training events' times (the features tower's time buckets).
    """
    cand_feats = candidate_features if (config.candidate_features or config.kind == "features") else None
    item_encoder = ItemEncoder(catalog, config.embedding_dim, config.seed + 1, config.l2, cand_feats,
                               name="item_encoder")
    candidate = CandidateTower(item_encoder, config.normalize, name="candidate_tower")
    if config.kind == "id":
        return IdQueryTower(customers, config, name="query_tower"), candidate
    if config.kind == "features":
        return FeatureQueryTower(customers, customer_features or {}, config, timestamps, name="query_tower"), candidate
    history_encoder = item_encoder if config.share_item_embeddings else ItemEncoder(
        catalog, config.embedding_dim, config.seed + 2, config.l2, cand_feats, name="history_encoder")
    return HistoryQueryTower(customers, history_encoder, config, name="query_tower"), candidate


# ---------------------------------------------------------------- per-customer data


def _order_by_recency(data: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customers sorted, group starts [C+1], item order): events grouped by customer,
    most recent first inside a group (ties by candidate id)."""
    order = np.lexsort((data.candidate_ids, -data.timestamps, data.customer_ids))
    cust = data.customer_ids[order]
    customers, starts = np.unique(cust, return_index=True)
    bounds = np.append(starts, len(cust)).astype(np.int64)
    return customers, bounds, order


def _feature_columns(data: Interactions, customers: np.ndarray) -> dict[str, np.ndarray]:
    """Customer feature columns aligned with ``customers`` ("" / NaN where absent)."""
    feats = getattr(data, "customer_features", None)
    if not feats:
        return {}
    rows = data.customer_feature_rows(customers)
    out = {}
    for name, col in feats.items():
        col = np.asarray(col)
        if col.dtype.kind in "US":
            out[name] = np.where(rows >= 0, col[np.maximum(rows, 0)], "").astype(str)
        else:
            out[name] = np.where(rows >= 0, col.astype(np.float32)[np.maximum(rows, 0)],
                                 np.float32(np.nan)).astype(np.float32)
    return out


@dataclasses.dataclass
class CustomerData:
    """Per-customer serving inputs as of training (the ``customer_store.npz`` arrays)."""

    ids: np.ndarray  # str [C], sorted
    history: np.ndarray  # str [C, L], most recent first, "" padded
    seen_offsets: np.ndarray  # int64 [C + 1]
    seen_items: np.ndarray  # str [total]
    features: dict[str, np.ndarray]  # name -> [C]

    @classmethod
    def build(cls, data: Interactions, history_length: int = DEFAULT_HISTORY_LENGTH,
              feature_names: tuple[str, ...] | None = None) -> "CustomerData":
        customers, bounds, order = _order_by_recency(data)
        items = data.candidate_ids[order].astype(str)
        lengths = np.diff(bounds)
        history = np.full((len(customers), history_length), "", dtype=items.dtype if len(items) else "<U1")
        take = np.minimum(lengths, history_length)
        rows = np.repeat(np.arange(len(customers)), take)
        cols = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
        history[rows, cols] = items[bounds[:-1][rows] + cols]
        # Seen items: every distinct training item of the customer (sorted).
        seen_rows = np.repeat(np.arange(len(customers)), lengths)
        key = np.lexsort((items, seen_rows))
        sr, si = seen_rows[key], items[key]
        keep = np.ones(len(sr), dtype=bool)
        keep[1:] = (sr[1:] != sr[:-1]) | (si[1:] != si[:-1])
        sr, si = sr[keep], si[keep]
        offsets = np.zeros(len(customers) + 1, dtype=np.int64)
        np.cumsum(np.bincount(sr, minlength=len(customers)), out=offsets[1:])
        features = _feature_columns(data, customers)
        if feature_names is not None:
            features = {k: v for k, v in features.items() if k in feature_names}
        return cls(customers.astype(str), history.astype(str), offsets, si.astype(str), features)

    def rows(self, customers: np.ndarray) -> np.ndarray:
        if len(self.ids) == 0:
            return np.full(len(customers), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, customers), len(self.ids) - 1)
        return np.where(self.ids[pos] == customers, pos, -1)

    def inputs(self, customers: np.ndarray, tower: QueryTower) -> dict[str, np.ndarray]:
        """The raw serving inputs of ``tower`` for ``customers`` (unknown ones: empty history,
        missing features). The request time is the end of the training period, which is
        what any later serving time is clipped to."""
        customers = np.asarray(customers).astype(str)
        rows = self.rows(customers)
        out: dict[str, np.ndarray] = {"customer_id": customers}
        if tower.history_length:
            h = self.history[np.maximum(rows, 0)]
            h = np.where((rows >= 0)[:, None], h, "")
            length = tower.history_length
            if h.shape[1] >= length:
                h = h[:, :length]
            else:
                h = np.concatenate([h, np.full((len(h), length - h.shape[1]), "", h.dtype)], axis=1)
            out["history"] = h
        for name in tower.feature_names:
            col = self.features.get(name)
            if col is None:
                raise ValueError(f"customer feature {name!r} is not in the data")
            missing = "" if col.dtype.kind in "US" else np.float32(np.nan)
            out[name] = np.where(rows >= 0, col[np.maximum(rows, 0)], missing).astype(col.dtype)
        if tower.time_range is not None:
            out[REQUEST_TIME] = np.full(len(customers), tower.time_range[1], np.float64)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"ids": self.ids, "history": self.history, "seen_offsets": self.seen_offsets,
               "seen_items": self.seen_items}
        for name, col in self.features.items():
            out[FEATURE_PREFIX + name] = col
        return out


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
        customers, bounds, order = _order_by_recency(data)
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


def query_inputs_for_events(data: Interactions, tower: QueryTower,
                            store: CustomerData | None = None) -> dict[str, np.ndarray]:
    """Raw query-tower inputs for every training event of ``data``, except the history,
    which ``TrainingHistories`` adds per batch."""
    out: dict[str, np.ndarray] = {"customer_id": data.customer_ids.astype(str)}
    if tower.feature_names:
        store = store or CustomerData.build(data, 1, tower.feature_names)
        rows = store.rows(data.customer_ids)
        for name in tower.feature_names:
            col = store.features[name]
            missing = "" if col.dtype.kind in "US" else np.float32(np.nan)
            out[name] = np.where(rows >= 0, col[np.maximum(rows, 0)], missing).astype(col.dtype)
    if tower.time_range is not None:
        out[REQUEST_TIME] = data.timestamps.astype(np.float64)
    return out


def call_query_tower(tower: QueryTower, inputs: dict[str, Any], batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Runs a query tower over numpy inputs in batches; (float32 [n, D], bool [n])."""
    n = len(inputs["customer_id"])
    embs, known = [], []
    for a in range(0, n, batch_size):
        batch = {k: tf.constant(v[a:a + batch_size]) for k, v in inputs.items()}
        embs.append(tower(batch).numpy())
        known.append(tower.known(batch).numpy())
    if not embs:
        return np.zeros((0, tower.embedding_dim), np.float32), np.zeros(0, bool)
    return np.concatenate(embs).astype(np.float32, copy=False), np.concatenate(known)
