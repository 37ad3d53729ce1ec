"""Process environment TensorFlow needs, applied before anything imports it.

TensorFlow Recommenders is built on Keras 2; TensorFlow 2.20 defaults to Keras 3
unless ``TF_USE_LEGACY_KERAS=1`` is set before ``import tensorflow``. Every
package of ours that imports TensorFlow (directly, or through ``scann``) imports
this module first.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up banner is noise in service logs; warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
