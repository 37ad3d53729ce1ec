"""Builds the ScaNN searcher over candidate embeddings and measures its recall.

Small catalogs get exact brute-force scoring; from ``BRUTE_FORCE_MAX`` candidates
on, a partitioned tree + asymmetric hashing + exact re-ordering, with the number
of leaves searched picked as the smallest tried value whose recall@10 against
exact dot-product search on the probe queries reaches the target.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import settings.tf_env  # noqa: F401  (scann imports TensorFlow)

import numpy as np
from scann import scann_ops_pybind

from model_registry import IndexSpec
from model_registry.search import exact_top_k, recall_at_k

BRUTE_FORCE_MAX = 20_000
RECALL_TARGET = 0.95


@dataclasses.dataclass
class IndexConfig:
    """ScaNN build knobs."""

    brute_force_max: int = BRUTE_FORCE_MAX  # brute force below this many candidates
    recall_target: float = RECALL_TARGET
    reorder: int = 200
    # Fractions of the leaves to try searching, smallest first.
    leaves_fractions: tuple[float, ...] = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)
    training_sample_size: int = 100_000


def measure_recall(searcher, queries: np.ndarray, database: np.ndarray, k: int = 10,
                   leaves_to_search: int | None = None, exact: np.ndarray | None = None) -> float:
    """recall@k of ``searcher`` against exact numpy search on ``queries``; pass
    ``exact`` (``exact_top_k``'s answer) to reuse it across settings."""
    if len(queries) == 0:
        return 1.0
    k = min(k, len(database))
    kwargs = {"leaves_to_search": leaves_to_search} if leaves_to_search else {}
    approx, _ = searcher.search_batched(queries, final_num_neighbors=k, **kwargs)
    return recall_at_k(np.asarray(approx), exact_top_k(queries, database, k)[0] if exact is None else exact)


def build_index(embeddings: np.ndarray, probe_queries: np.ndarray,
                config: IndexConfig | None = None):
    """Returns ``(searcher, IndexSpec)`` for dot-product search over ``embeddings``.

    The spec's ``recall_at_10`` is measured on ``probe_queries`` with the exact
    searcher that is returned.
    """
    config = config or IndexConfig()
    db = np.ascontiguousarray(embeddings, dtype=np.float32)
    probes = np.ascontiguousarray(probe_queries, dtype=np.float32)
    n = len(db)
    if n == 0:
        raise ValueError("cannot build an index over zero candidates")
    k = min(10, n)
    if n < config.brute_force_max:
        searcher = scann_ops_pybind.builder(db, k, "dot_product").score_brute_force().build()
        spec = IndexSpec(kind="brute_force", recall_at_10=measure_recall(searcher, probes, db, k),
                         probe_queries=len(probes))
        return searcher, spec

    num_leaves = max(2, int(round(math.sqrt(n))))
    reorder = min(config.reorder, n)
    candidates = sorted({max(1, min(num_leaves, int(math.ceil(f * num_leaves)))) for f in config.leaves_fractions})

    def make(leaves_to_search: int):
        return (scann_ops_pybind.builder(db, k, "dot_product")
                .tree(num_leaves=num_leaves, num_leaves_to_search=leaves_to_search,
                      training_sample_size=min(n, config.training_sample_size))
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(reorder).build())

    # One build (k-means training is not deterministic, so a rebuild could
    # land below the recall just measured); the leaves searched are a per-query
    # override, so pick the smallest value that meets the target. The manifest
    # records it and the index service passes it on every search.
    searcher = make(candidates[-1])
    exact = exact_top_k(probes, db, k)[0]  # once: it costs more than all the ScaNN searches together
    for leaves in candidates:  # if none meets the target, the last (most) is kept
        recall = measure_recall(searcher, probes, db, k, leaves_to_search=leaves, exact=exact)
        if recall >= config.recall_target:
            break
    spec = IndexSpec(kind="tree_ah", num_leaves=num_leaves, num_leaves_to_search=leaves, reorder=reorder,
                     recall_at_10=recall, probe_queries=len(probes))
    return searcher, spec


def save_searcher(searcher, directory: Path) -> None:
    """Serializes with relative asset paths so the directory can be renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(directory), relative_path=True)
