"""Offline training of the two-tower retrieval model and its publication.

Folders by role, as TFRS is laid out: ``data`` (interactions, loaders, splits),
``towers`` (the query and candidate towers), ``evaluation`` (exact hit rates,
baselines, report, plot) and ``export`` (SavedModel, ScaNN index, publish).
At the top: ``config`` (every knob, the presets, the run), ``model`` (the TFRS
model), ``training`` (the loop), ``pipeline`` (load -> split -> train ->
evaluate -> publish) and ``cli`` (``recsys-train``). What a version holds and
how a customer becomes tower inputs is ``model_registry``'s, shared with the
services.
"""

import settings.tf_env  # noqa: F401  (must precede any TensorFlow import)
