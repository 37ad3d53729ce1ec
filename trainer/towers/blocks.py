"""Building blocks of the towers: id embeddings, the item encoder shared by
candidate and history towers, and the candidate tower."""

from __future__ import annotations

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf


def initializer(seed: int) -> tf.keras.initializers.Initializer:
    return tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)


def regularizer(l2: float):
    return tf.keras.regularizers.L2(l2) if l2 > 0 else None


def normalize(x: tf.Tensor, on: bool) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1) if on else x


class IdTower(tf.keras.Model):
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
            len(catalog) + 2, embedding_dim, embeddings_initializer=initializer(seed),
            embeddings_regularizer=regularizer(l2))
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
                vectorizer.vocabulary_size(), dim, mask_zero=True, embeddings_initializer=initializer(seed + 11),
                embeddings_regularizer=regularizer(l2))
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
                kernel_regularizer=regularizer(l2))
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
        return normalize(self.encoder(ids), self.normalize)
