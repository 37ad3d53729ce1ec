"""The query tower as a self-contained SavedModel: the services load it with
plain ``tf.saved_model.load``, no trainer code, and call ``serving_default``
with raw inputs (see ``model_registry.tower_inputs``)."""

from __future__ import annotations

from pathlib import Path

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow as tf

from trainer.towers.query import QueryTower


class QueryTowerModule(tf.Module):
    """The serving wrapper: ``serving_default(**raw inputs)`` ->
    ``{"embedding": float32[None, D], "known": bool[None]}``.

    Inputs are the tower's ``input_specs()``: ``customer_id`` string [None]
    always, ``history`` string [None, L] for history towers, one input per
    customer feature (named as the feature) for the features tower. With a
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
        return {"embedding": embedding, "known": self.tower.known(inputs)}


def save_query_tower(tower: QueryTower, path: Path, prior_constant: float | None = None) -> None:
    """Saves the query tower as a SavedModel with a ``serving_default`` signature
    (appending ``prior_constant`` to every embedding when given)."""
    module = QueryTowerModule(tower, prior_constant)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
