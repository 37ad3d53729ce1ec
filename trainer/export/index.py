"""Builds the ScaNN searcher over candidate embeddings and measures its recall.

Small catalogs get exact brute-force scoring; from ``BRUTE_FORCE_MAX`` candidates
on, a partitioned tree + asymmetric hashing + exact re-ordering. Both the leaves
searched and the re-ordering depth are search-time settings, tuned on the probe
queries against exact dot-product search: for each depth, the fewest leaves
whose recall@10 reaches the target; of those settings, the fastest.

Depth matters as much as leaves: the hashed scores of a dense catalogue are too
coarse to put the true top 10 within a fixed 200 rescored neighbours (measured
at 5M x 64: recall@10 0.848 however many leaves are searched; 0.963 with 1,600
rescored and 6% of the leaves, in a fifth of the time).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import settings.tf_env  # noqa: F401  (scann imports TensorFlow)

import numpy as np
from scann import scann_ops_pybind

from model_registry import IndexSpec
from model_registry.attributes import Attributes
from model_registry.manifest import (ATTRIBUTES_FILE, CANDIDATE_EMBEDDINGS_FILE, CANDIDATE_IDS_FILE, SCANN_DIR,
                                     ShardSpec, shard_dir, shard_of)
from model_registry.search import MIN_RECALL, exact_top_k, recall_at_k

BRUTE_FORCE_MAX = 20_000
RECALL_TARGET = 0.95


@dataclasses.dataclass
class IndexConfig:
    """ScaNN build knobs."""

    brute_force_max: int = BRUTE_FORCE_MAX  # brute force below this many candidates
    recall_target: float = RECALL_TARGET
    min_recall: float = MIN_RECALL  # build_shards refuses a searcher below it: no index service would load it
    # Neighbours re-scored exactly after hashing, smallest first.
    reorder_depths: tuple[int, ...] = (200, 400, 800, 1600)
    # Fractions of the leaves to try searching, smallest first.
    leaves_fractions: tuple[float, ...] = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)
    training_sample_size: int = 100_000


def measure_recall(searcher, queries: np.ndarray, database: np.ndarray, k: int = 10,
                   leaves_to_search: int | None = None, exact: np.ndarray | None = None,
                   reorder: int | None = None) -> float:
    """recall@k of ``searcher`` against exact numpy search on ``queries``; pass
    ``exact`` (``exact_top_k``'s answer) to reuse it across settings."""
    if len(queries) == 0:
        return 1.0
    k = min(k, len(database))
    kwargs = {"leaves_to_search": leaves_to_search} if leaves_to_search else {}
    if reorder:
        kwargs["pre_reorder_num_neighbors"] = reorder
    approx, _ = searcher.search_batched(queries, final_num_neighbors=k, **kwargs)
    return recall_at_k(np.asarray(approx), exact_top_k(queries, database, k)[0] if exact is None else exact)


@dataclasses.dataclass(frozen=True)
class _Setting:
    """One search setting tried on the probe queries."""

    meets_target: bool
    seconds: float  # the probe queries' batched search
    recall: float
    leaves: int
    depth: int

    def beats(self, other: "_Setting") -> bool:
        """The fastest setting meeting the target wins; without one, the best recall."""
        if self.meets_target != other.meets_target:
            return self.meets_target
        return self.seconds < other.seconds if self.meets_target else self.recall > other.recall


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
    depths = sorted({min(d, n) for d in config.reorder_depths})
    candidates = sorted({max(1, min(num_leaves, int(math.ceil(f * num_leaves)))) for f in config.leaves_fractions})

    # One build (k-means training is not deterministic, so a rebuild could land
    # below the recall just measured); leaves searched and re-ordering depth are
    # per-query overrides, chosen below. The manifest records them and the index
    # service passes them on every search.
    searcher = (scann_ops_pybind.builder(db, k, "dot_product")
                .tree(num_leaves=num_leaves, num_leaves_to_search=candidates[-1],
                      training_sample_size=min(n, config.training_sample_size))
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(depths[0]).build())
    exact = exact_top_k(probes, db, k)[0]  # once: it costs more than all the ScaNN searches together
    best: _Setting | None = None
    for depth in depths:
        for leaves in candidates:
            if best is not None and best.meets_target and leaves >= best.leaves:
                break  # as many leaves, re-ordered deeper, only cost more
            start = time.perf_counter()
            recall = measure_recall(searcher, probes, db, k, leaves_to_search=leaves, exact=exact, reorder=depth)
            setting = _Setting(recall >= config.recall_target, time.perf_counter() - start, recall, leaves, depth)
            if best is None or setting.beats(best):
                best = setting
            if setting.meets_target:
                break  # more leaves at this depth only cost more
    recall, leaves, depth = best.recall, best.leaves, best.depth
    spec = IndexSpec(kind="tree_ah", num_leaves=num_leaves, num_leaves_to_search=leaves, reorder=depth,
                     recall_at_10=recall, probe_queries=len(probes))
    return searcher, spec


@dataclasses.dataclass
class Shard:
    """One shard of a sharded version: its rows of the catalogue (index order), searcher and spec."""

    rows: np.ndarray
    searcher: object
    spec: IndexSpec
    build_seconds: float = 0.0


def build_shards(embeddings: np.ndarray, probe_queries: np.ndarray, ids: np.ndarray, shards: int = 1,
                 config: IndexConfig | None = None) -> tuple[list[Shard], IndexSpec]:
    """The searchers of a version's candidates ``ids`` (index order): one over
    all of them for ``shards`` 1 (``build_index``), else one per shard of the
    ids (``manifest.shard_of``), each tuned and measured on its own candidates.
    Returns them with the version's spec: for shards, kind "sharded" and the
    recall@10 of the shards' top-10s merged by score, against exact search over
    every candidate, on the same probe queries. Raises ValueError if a searcher's
    recall@10 is below ``config.min_recall``: the index service would refuse it."""
    config = config or IndexConfig()
    if shards == 1:
        start = time.perf_counter()
        searcher, spec = build_index(embeddings, probe_queries, config)
        _check_recall(spec, config, "")
        return [Shard(np.arange(len(ids)), searcher, spec, time.perf_counter() - start)], spec
    db = np.ascontiguousarray(embeddings, dtype=np.float32)
    probes = np.ascontiguousarray(probe_queries, dtype=np.float32)
    shard_of_rows = shard_of(ids, shards)
    built = []
    for shard in range(shards):
        rows = np.flatnonzero(shard_of_rows == shard)
        if len(rows) == 0:
            raise ValueError(f"shard {shard} of {shards} would hold no candidates: publish fewer shards")
        start = time.perf_counter()
        searcher, spec = build_index(db[rows], probes, config)
        _check_recall(spec, config, f"shard {shard} of {shards}: ")
        built.append(Shard(rows, searcher, spec, time.perf_counter() - start))
    k = min(10, len(db))
    if len(probes) == 0:
        return built, IndexSpec(kind="sharded", recall_at_10=1.0)
    found_rows, found_scores = [], []
    for shard in built:
        kwargs = {}
        if shard.spec.kind == "tree_ah":
            kwargs = {"leaves_to_search": shard.spec.num_leaves_to_search,
                      "pre_reorder_num_neighbors": shard.spec.reorder}
        local, scores = shard.searcher.search_batched(probes, final_num_neighbors=min(k, len(shard.rows)), **kwargs)
        local = np.asarray(local)
        found_rows.append(np.where(local >= 0, shard.rows[np.maximum(local, 0)], -1))
        found_scores.append(np.where(local >= 0, np.asarray(scores), -np.inf))
    rows, scores = np.concatenate(found_rows, axis=1), np.concatenate(found_scores, axis=1)
    merged = np.take_along_axis(rows, np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)
    recall = recall_at_k(merged, exact_top_k(probes, db, k)[0])
    return built, IndexSpec(kind="sharded", recall_at_10=recall, probe_queries=len(probes))


def _check_recall(spec: IndexSpec, config: IndexConfig, what: str) -> None:
    if spec.recall_at_10 < config.min_recall:
        raise ValueError(f"{what}index recall@10 is {spec.recall_at_10:.3f} on the probe queries, below the "
                         f"{config.min_recall} the index service requires to load a version: not published. Train "
                         f"again, or split the candidates with --index-shards so that each shard holds fewer than "
                         f"{config.brute_force_max} (searched exactly)")


def save_candidates(staging: Path, ids: np.ndarray, embeddings: np.ndarray, shards: list[Shard],
                    attributes: Attributes | None = None) -> tuple[ShardSpec, ...]:
    """Writes each shard's candidate files (ids, embeddings, searcher,
    attributes) where the services read them (``manifest.shard_dir``); returns
    the manifest's ``shards`` (empty for one searcher over all candidates)."""
    sharded = len(shards) > 1
    for number, shard in enumerate(shards):
        directory = shard_dir(staging, number if sharded else None)
        directory.mkdir(parents=True, exist_ok=True)
        part = shard.rows if sharded else slice(None)  # no copy of an unsharded catalogue
        np.save(directory / CANDIDATE_IDS_FILE, np.asarray(ids)[part], allow_pickle=False)
        # C order: np.save keeps a Fortran-ordered array's layout, which the index service's block reads refuse.
        np.save(directory / CANDIDATE_EMBEDDINGS_FILE, np.ascontiguousarray(np.asarray(embeddings, np.float32)[part]),
                allow_pickle=False)
        save_searcher(shard.searcher, directory / SCANN_DIR)
        if attributes is not None:
            (attributes.take(shard.rows) if sharded else attributes).save(directory / ATTRIBUTES_FILE)
    return tuple(ShardSpec(len(s.rows), s.spec) for s in shards) if sharded else ()


def save_searcher(searcher, directory: Path) -> None:
    """Serializes with relative asset paths so the directory can be renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(directory), relative_path=True)
