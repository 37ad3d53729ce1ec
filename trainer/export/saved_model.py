"""The towers as self-contained SavedModels, loaded with plain
``tf.saved_model.load`` (no trainer code) and called through ``serving_default``
with raw inputs: the query tower by the query service (see
``model_registry.tower_inputs``), the candidate tower of a features-taking model
by ``recsys-catalogue``, which embeds upserted candidates from their catalogue values."""

from __future__ import annotations

from pathlib import Path

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow as tf

from model_registry.tower_inputs import CANDIDATE_ID, EMBEDDING, KNOWN, SIGNATURE
from trainer.towers.blocks import NUMERIC, CandidateTower
from trainer.towers.query import QueryTower


class QueryTowerModule(tf.Module):
    """The serving wrapper: ``serving_default(**raw inputs)`` ->
    ``{"embedding": float32[None, D], "known": bool[None]}``.

    Inputs are the tower's ``input_specs()``: ``customer_id`` string [None]
    always, ``history`` string [None, L] for history towers, one input per
    customer feature (named as the feature) for the features tower,
    ``request_time`` float64 [None] for towers that take the time. With a
    popularity prior (``trainer.towers.prior``) the embedding ends with its
    constant, so D is the tower's dimension + 1.
    """

    def __init__(self, tower: QueryTower, prior_constant: float | None = None):
        super().__init__(name="query_tower_module")
        self.tower = tower
        self.prior_constant = prior_constant
        self.serve = tf.function(self._serve, input_signature=[tower.input_specs()])

    def _serve(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        embedding = tf.cast(self.tower(inputs), tf.float32)
        if self.prior_constant is not None:
            column = tf.fill([tf.shape(embedding)[0], 1], tf.constant(self.prior_constant, tf.float32))
            embedding = tf.concat([embedding, column], axis=1)
        return {EMBEDDING: embedding, KNOWN: self.tower.known(inputs)}


class CandidateTowerModule(tf.Module):
    """The serving wrapper of a candidate tower that takes catalogue features:
    ``serving_default(candidate_id=string[None], <column>=...)`` ->
    ``{"embedding": float32[None, D]}``, one input per catalogue column the
    encoder uses (float32 for numeric columns, NaN = missing; string otherwise).

    The embedding is the vector a *new* candidate is indexed with: with a
    popularity prior it ends with the prior's column at ``log(1 + 0)`` = 0, and
    ``prior_columns`` (1) says so, so a caller re-embedding a published
    candidate can keep its published prior value instead.
    """

    def __init__(self, tower: CandidateTower, prior: bool):
        super().__init__(name="candidate_tower_module")
        self.tower = tower
        self.prior_columns = tf.Variable(int(prior), trainable=False, dtype=tf.int32, name="prior_columns")
        specs = {CANDIDATE_ID: tf.TensorSpec([None], tf.string, name=CANDIDATE_ID)}
        for name, kind in tower.encoder.feature_kinds.items():
            specs[name] = tf.TensorSpec([None], tf.float32 if kind == NUMERIC else tf.string, name=name)
        self.serve = tf.function(self._serve, input_signature=[specs])

    def _serve(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raw = {name: inputs[name] for name in self.tower.encoder.feature_kinds}
        embedding = tf.cast(self.tower.embed_features(inputs[CANDIDATE_ID], raw), tf.float32)
        column = tf.zeros([tf.shape(embedding)[0], self.prior_columns], tf.float32)
        return {EMBEDDING: tf.concat([embedding, column], axis=1)}


def _save(module: tf.Module, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve.get_concrete_function()})


def save_query_tower(tower: QueryTower, path: Path, prior_constant: float | None = None) -> None:
    """Saves the query tower as a SavedModel with a ``serving_default`` signature
    (appending ``prior_constant`` to every embedding when given)."""
    _save(QueryTowerModule(tower, prior_constant), path)


def save_candidate_tower(tower: CandidateTower, path: Path, prior: bool) -> None:
    """Saves a candidate tower that takes catalogue features as a SavedModel
    (``CandidateTowerModule``; ``prior``: the version's vectors carry the prior's column)."""
    if not tower.encoder.has_features:
        raise ValueError("the candidate tower takes no catalogue features: it can only embed its own ids")
    _save(CandidateTowerModule(tower, prior), path)
