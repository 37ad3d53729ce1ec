"""The two towers, chosen by name (``TowerConfig.kind``): ``config`` (the knobs,
TensorFlow-free), ``blocks`` (id embeddings, the item encoder, the candidate
tower), ``query`` (the query tower families) and ``build`` (a matching pair)."""
