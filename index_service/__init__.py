"""Index service: versioned ScaNN searchers over candidate embeddings."""

import model_registry.tf_env  # noqa: F401  (before scann imports TensorFlow)
