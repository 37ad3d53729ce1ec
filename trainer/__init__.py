"""Offline training of the two-tower retrieval model and its publication.

Pipeline: ``data`` (load interactions) -> ``split`` (train/test) -> ``model``
(TFRS two-tower training with early stopping) -> ``evaluate`` (hit rates vs
baselines) -> ``export`` (SavedModel query tower, candidate embeddings, ScaNN
index from ``index_builder``) -> ``model_registry.Registry.publish``.
``cli.main`` is the ``recsys-train`` console script.
"""

import model_registry.tf_env  # noqa: F401  (must precede any TensorFlow import)
