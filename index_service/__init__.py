"""Index service: versioned ScaNN searchers over candidate embeddings."""

import settings.tf_env  # noqa: F401  (before scann imports TensorFlow)
