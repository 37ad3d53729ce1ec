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

import model_registry.tf_env  # noqa: F401  (scann imports TensorFlow)

import numpy as np
from scann import scann_ops_pybind

from model_registry import IndexSpec

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


def exact_top_k(queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 32) -> np.ndarray:
    """Indices of the exact dot-product top-k per query, best first. ``chunk``
    queries at a time bound the score matrix (32 x 1M floats = 128 MB)."""
    k = min(k, len(database))
    out = np.empty((len(queries), k), dtype=np.int64)
    for a in range(0, len(queries), chunk):
        s = queries[a:a + chunk] @ database.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        out[a:a + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    if len(exact) == 0:
        return 1.0
    hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / exact.size)


def measure_recall(searcher, queries: np.ndarray, database: np.ndarray, k: int = 10,
                   leaves_to_search: int | None = None, exact: np.ndarray | None = None) -> float:
    """recall@k of ``searcher`` against exact numpy search on ``queries``; pass
    ``exact`` (``exact_top_k``'s answer) to reuse it across settings."""
    if len(queries) == 0:
        return 1.0
    k = min(k, len(database))
    kwargs = {"leaves_to_search": leaves_to_search} if leaves_to_search else {}
    approx, _ = searcher.search_batched(queries, final_num_neighbors=k, **kwargs)
    return recall_at_k(np.asarray(approx), exact_top_k(queries, database, k) if exact is None else exact)


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
    exact = exact_top_k(probes, db, k)  # once: it costs more than all the ScaNN searches together
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


def load_searcher(directory: Path):
    """Loads a searcher written by ``save_searcher``."""
    return scann_ops_pybind.load_searcher(str(directory))
