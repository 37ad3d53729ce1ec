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
    customer feature (named as the feature) for the features tower.
    """

    def __init__(self, tower: QueryTower):
        super().__init__(name="query_tower_module")
        self.tower = tower
        self.serve = tf.function(self._serve, input_signature=[tower.input_specs()])

    def _serve(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "embedding": tf.cast(self.tower(inputs), tf.float32),
            "known": self.tower.known(inputs),
        }


def save_query_tower(tower: QueryTower, path: Path) -> None:
    """Saves the query tower as a SavedModel with a ``serving_default`` signature."""
    module = QueryTowerModule(tower)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
