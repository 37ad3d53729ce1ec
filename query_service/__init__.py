"""Query service: versioned query towers, Recommend = cache -> tower -> index -> cache."""

import settings.grpc_env  # noqa: F401  (before anything imports gRPC)
import settings.tf_env  # noqa: F401  (before anything imports TensorFlow)
