"""Building blocks of the towers: id embeddings, the item encoder shared by
candidate and history towers, and the candidate tower."""

from __future__ import annotations

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf

from model_registry.attributes import LIST_SEPARATOR, is_token_column, token_lists


def initializer(seed: int) -> tf.keras.initializers.Initializer:
    return tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)


def regularizer(l2: float):
    return tf.keras.regularizers.L2(l2) if l2 > 0 else None


def standardisation(column: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """A numeric column's finite values (float64), and the (mean, std) an input of it is standardised by: (0, 1)
    without finite values, a std of 1 where they do not vary. Missing values (NaN) are left out of both."""
    finite = column.astype(np.float64)
    finite = finite[np.isfinite(finite)]
    mean = float(finite.mean()) if len(finite) else 0.0
    std = float(finite.std()) if len(finite) > 1 else 1.0
    return finite, (mean, std or 1.0)


def normalize(x: tf.Tensor, on: bool) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1) if on else x


class ServedModel(tf.keras.Model):
    """A tower a version serves through its SavedModel signatures, which the services call: never rebuilt from a
    Keras config. Its constructor takes vocabularies and configs Keras cannot serialize, and Keras warned so at
    every save (eight lines a training run)."""

    def get_config(self) -> dict:
        return {}


class IdTower(ServedModel):
    """String id -> embedding. Ids outside the vocabulary share one OOV row."""

    def __init__(self, vocabulary: np.ndarray, embedding_dim: int, seed: int, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(v) for v in vocabulary], mask_token=None, num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(
            len(vocabulary) + 1, embedding_dim, embeddings_initializer=initializer(seed),
            embeddings_regularizer=regularizer(l2))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(ids))

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """True where the id is in the vocabulary (StringLookup puts OOV at index 0)."""
        return self.lookup(ids) > 0


# A catalogue column's role in the item encoder (``feature_kinds``).
NUMERIC, TOKENS, TEXT = "numeric", "tokens", "text"
# Text columns: words kept per column, and tokens read per cell.
TEXT_VOCABULARY = 10_000
TEXT_LENGTH = 12
# " (1995)" at the end of a MovieLens title: the year is its own column.
_TRAILING_PARENTHESES = r"^(.*) \(.*\)$"


def feature_kinds(features: dict[str, np.ndarray]) -> dict[str, str]:
    """Each catalogue column's role in the encoder: ``numeric`` (numbers),
    ``tokens`` (categories, ``|``-separated: multi-hot) or ``text`` (free text:
    bag of words), by ``model_registry.attributes.is_token_column``, the rule
    that makes a column a filter's token namespace."""
    kinds = {}
    for name, col in features.items():
        if col.dtype.kind in "fiu":
            kinds[name] = NUMERIC
        else:
            kinds[name] = TOKENS if is_token_column(token_lists(col.tolist())) else TEXT
    return kinds


class ItemEncoder(tf.keras.layers.Layer):
    """Candidate id (and optionally its catalogue features) -> embedding.

    The lookup reserves index 0 for the padding id "" and 1 for unknown ids,
    so the same encoder embeds history items ([B, L]) and candidates ([B]).
    Catalogue features go through one preprocessing (``preprocess``: raw
    column values -> text token ids and a dense block of multi-hot categories
    and normalised numbers). Training applies it once to the catalogue and
    gathers rows by lookup index; ``embed_features`` applies it to raw values,
    so a candidate that was not in the catalogue (a catalogue upsert) is
    embedded exactly as a catalogue row with those values would be.
    """

    def __init__(self, catalog: np.ndarray, embedding_dim: int, seed: int, l2: float = 0.0,
                 features: dict[str, np.ndarray] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(v) for v in catalog], mask_token="", num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(
            len(catalog) + 2, embedding_dim, embeddings_initializer=initializer(seed),
            embeddings_regularizer=regularizer(l2))
        self.dim = embedding_dim
        self.feature_kinds: dict[str, str] = {}
        if features:
            self._build_features(features, embedding_dim, seed, l2)

    @property
    def has_features(self) -> bool:
        return bool(self.feature_kinds)

    def _build_features(self, features: dict[str, np.ndarray], dim: int, seed: int, l2: float) -> None:
        self.feature_kinds = dict(sorted(feature_kinds(features).items()))
        self.vectorizers, self.text_embeddings, self.token_lookups = {}, {}, {}
        self.numeric_stats: dict[str, tuple[float, float]] = {}
        for name, kind in self.feature_kinds.items():
            col = features[name]
            if kind == TEXT:
                text = _strip_trailing_parentheses(tf.constant(col.astype(str))).numpy()
                text = text[text != b""]
                vectorizer = tf.keras.layers.TextVectorization(max_tokens=TEXT_VOCABULARY,
                                                               output_sequence_length=TEXT_LENGTH)
                vectorizer.adapt(tf.constant(text if len(text) else np.array(["none"])))
                self.vectorizers[name] = vectorizer
                self.text_embeddings[name] = tf.keras.layers.Embedding(
                    vectorizer.vocabulary_size(), dim, mask_zero=True, embeddings_regularizer=regularizer(l2),
                    embeddings_initializer=initializer(seed + 11 + 100 * len(self.text_embeddings)))
            elif kind == TOKENS:
                vocab = sorted({t for cell in token_lists(col.tolist()) for t in cell})
                self.token_lookups[name] = tf.keras.layers.StringLookup(
                    vocabulary=vocab or ["?"], mask_token=None, num_oov_indices=1, output_mode="multi_hot")
            else:
                _, self.numeric_stats[name] = standardisation(col)
        tokens, dense = self.preprocess({name: tf.constant(features[name].astype(
            np.float32 if kind == NUMERIC else str)) for name, kind in self.feature_kinds.items()})
        # Rows 0 and 1 (padding, unknown id) have no features.
        self.text_tokens = {name: tf.constant(np.concatenate([np.zeros((2, TEXT_LENGTH), np.int64), t.numpy()]))
                            for name, t in tokens.items()}
        self.dense_features = None
        if dense is not None:
            block = dense.numpy()
            self.dense_features = tf.constant(np.concatenate([np.zeros((2, block.shape[1]), np.float32), block]))
            self.dense_projection = tf.keras.layers.Dense(
                dim, use_bias=False, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 12),
                kernel_regularizer=regularizer(l2))

    def preprocess(self, raw: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor | None]:
        """Raw column values ([B] each: strings, float32 for numeric columns, NaN
        = missing) -> ({text column: token ids [B, TEXT_LENGTH]}, dense [B, F] or None)."""
        tokens, dense = {}, []
        for name, kind in self.feature_kinds.items():
            x = raw[name]
            if kind == TEXT:
                tokens[name] = tf.cast(self.vectorizers[name](_strip_trailing_parentheses(x)), tf.int64)
            elif kind == TOKENS:
                cells = tf.ragged.map_flat_values(tf.strings.strip, tf.strings.split(x, LIST_SEPARATOR))
                multi = self.token_lookups[name](cells)[:, 1:]  # column 0 counts unknown and empty tokens
                dense.append(multi / tf.maximum(tf.reduce_sum(multi, axis=1, keepdims=True), 1.0))
            else:
                mean, std = self.numeric_stats[name]
                missing = tf.math.is_nan(x)
                z = tf.where(missing, tf.zeros_like(x), (x - mean) / std)
                dense.append(tf.stack([z, tf.cast(missing, tf.float32)], axis=1))
        return tokens, (tf.concat(dense, axis=1) if dense else None)

    def _feature_embedding(self, tokens: dict[str, tf.Tensor], dense: tf.Tensor | None) -> tf.Tensor:
        out = 0.0
        for name, tok in tokens.items():
            emb = self.text_embeddings[name](tok)
            mask = tf.cast(tok > 0, emb.dtype)[..., None]
            out += tf.reduce_sum(emb * mask, axis=-2) / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
        if dense is not None:
            out += self.dense_projection(dense)
        return out

    def indices(self, ids: tf.Tensor) -> tf.Tensor:
        return self.lookup(ids)

    def embed_indices(self, idx: tf.Tensor) -> tf.Tensor:
        out = self.embedding(idx)
        if self.has_features:
            out += self._feature_embedding(
                {name: tf.gather(table, idx) for name, table in self.text_tokens.items()},
                None if self.dense_features is None else tf.gather(self.dense_features, idx))
        return out

    def embed_features(self, ids: tf.Tensor, raw: dict[str, tf.Tensor]) -> tf.Tensor:
        """Candidates ``ids`` [B] with raw column values ``raw`` (see ``preprocess``):
        a catalogue id with its own values gets its training embedding, any other id
        the unknown-id row plus what its values add."""
        return self.embedding(self.lookup(ids)) + self._feature_embedding(*self.preprocess(raw))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embed_indices(self.lookup(ids))


def _strip_trailing_parentheses(text: tf.Tensor) -> tf.Tensor:
    return tf.strings.strip(tf.strings.regex_replace(text, _TRAILING_PARENTHESES, r"\1"))


class CandidateTower(ServedModel):
    """Candidate id -> embedding, through an ``ItemEncoder`` (possibly shared with a history tower)."""

    def __init__(self, encoder: ItemEncoder, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.normalize = normalize

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return normalize(self.encoder(ids), self.normalize)

    def embed_features(self, ids: tf.Tensor, raw: dict[str, tf.Tensor]) -> tf.Tensor:
        """Candidates from raw catalogue values (``ItemEncoder.embed_features``)."""
        return normalize(self.encoder.embed_features(ids, raw), self.normalize)
