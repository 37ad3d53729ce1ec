"""Query service: versioned query towers, Recommend = cache -> tower -> index -> cache."""

import settings.tf_env  # noqa: F401  (before anything imports TensorFlow)
