"""One model version's candidate index: a ScaNN searcher plus candidate ids.

Thread-safety: ``search`` may be called from several threads at once (ScaNN's
searcher is safe for concurrent searches; everything else here is read-only
after load).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_registry import Manifest, VersionError
from model_registry import manifest as files
from model_registry.search import exact_top_k, npy_shape
from serving.admin import LoadReport

log = logging.getLogger(__name__)

# Enough probes that a version built to the trainer's recall target (0.95) is not
# refused by chance: with per-query recall@10 spread by ~0.25, the standard error
# over 300 probes is ~0.015, three of them above the 0.9 floor (100 probes left
# two). The exact search it costs runs at idle priority in a slot that serves
# no traffic.
SELF_TEST_PROBES = 300


def _scann_pybind():
    """ScaNN's pybind searcher module without TensorFlow.

    ``scann/__init__.py`` imports TensorFlow for ScaNN's TF ops, which the index
    service never uses: 530 MB of RSS and ~4 s of start-up per index process
    (measured: 568 MB vs 34 MB after the import). The package is registered
    without running its ``__init__``, then the pybind module (numpy only) is
    imported from it as usual.
    """
    if "scann" not in sys.modules:
        spec = importlib.util.find_spec("scann")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the scann package is not installed")
        package = types.ModuleType("scann")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["scann"] = package
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def load_searcher(directory: Path):
    """A ScaNN searcher serialized by the trainer (``trainer.export.index.save_searcher``)."""
    # Holds the GIL throughout (~1.6 s at 1M x 64): this is why versions load
    # only into index slots that serve no traffic (see index_service/slot.py).
    return _scann_pybind().load_searcher(str(directory))


@dataclass(frozen=True)
class SearchResult:
    ids: list[str]
    scores: list[float]


class CandidateIndex:
    """A loaded, verified, self-tested version's ScaNN searcher and candidate ids."""

    def __init__(self, manifest: Manifest, candidate_ids: np.ndarray, searcher, report: LoadReport):
        self.manifest = manifest
        self.candidate_ids = candidate_ids
        self._searcher = searcher
        self.report = report

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def rows_scanned_per_query(self) -> int:
        """About how many candidate rows one query scores: all of them for brute
        force, the searched leaves' share for tree-AH (plus the exact reorder)."""
        spec, n = self.manifest.index, len(self.candidate_ids)
        if spec.kind == "tree_ah" and spec.num_leaves > 0:
            return n * spec.num_leaves_to_search // spec.num_leaves + spec.reorder
        return n

    @classmethod
    def load(cls, version_dir: Path, manifest: Manifest, min_recall: float = 0.9) -> "CandidateIndex":
        """Loads a verified version's searcher and self-tests it: recall@10
        against exact search on the version's probe queries must reach
        ``min_recall``. Raises VersionError otherwise."""
        start = time.perf_counter()
        version_dir = Path(version_dir)
        ids = np.load(version_dir / files.CANDIDATE_IDS_FILE, allow_pickle=False)
        if ids.shape != (manifest.num_candidates,):
            raise VersionError(f"version {manifest.version}: {len(ids)} candidate ids but the manifest says "
                               f"{manifest.num_candidates}")
        embeddings = version_dir / files.CANDIDATE_EMBEDDINGS_FILE
        if npy_shape(embeddings) != (len(ids), manifest.embedding_dim):
            raise VersionError(f"version {manifest.version}: candidate embeddings have shape {npy_shape(embeddings)},"
                               f" expected {(len(ids), manifest.embedding_dim)}")
        scann_dir = version_dir / files.SCANN_DIR
        searcher = load_searcher(scann_dir)
        memory = ids.nbytes + sum(p.stat().st_size for p in scann_dir.iterdir())
        index = cls(manifest, ids, searcher, LoadReport(0.0, memory))
        recall = index._self_test(version_dir)
        if recall < min_recall:
            raise VersionError(f"version {manifest.version}: index recall@10 vs exact search is {recall:.3f}, "
                               f"below the required {min_recall}")
        index.report = LoadReport(time.perf_counter() - start, memory, recall)
        log.info("loaded version %d: %d candidates x %d dims, recall@10 %.3f, in %.2fs", manifest.version,
                 len(ids), manifest.embedding_dim, recall, index.report.load_seconds)
        return index

    def _self_test(self, version_dir: Path, k: int = 10) -> float:
        """recall@k of this searcher vs exact dot-product search on probe queries.
        The exact search reads the embeddings file in blocks (bounded memory)."""
        probes = np.load(version_dir / files.PROBE_QUERIES_FILE, allow_pickle=False)[:SELF_TEST_PROBES]
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise VersionError(f"version {self.version}: probe queries have shape {probes.shape}, "
                               f"expected [P, {self.dim}]")
        if len(probes) == 0:
            return 1.0
        k = min(k, len(self.candidate_ids))
        exact, _ = exact_top_k(probes, version_dir / files.CANDIDATE_EMBEDDINGS_FILE, k)
        found = self.search(probes, k)
        hits = sum(len(set(self.candidate_ids[row].tolist()) & set(result.ids)) for row, result in zip(exact, found))
        return hits / (k * len(probes))

    def search(self, queries: np.ndarray, k: int,
               exclusions: list[frozenset[str]] | None = None) -> list[SearchResult]:
        """Top-k candidates for each row of ``queries`` [B, dim], best first.

        Excluded ids are removed after an over-fetch of ``k + len(exclusions)``
        so that exactly ``min(k, N - excluded)`` results come back.
        """
        exclusions = exclusions or [frozenset()] * len(queries)
        n = len(self.candidate_ids)
        fetch = min(n, k + max((len(e) for e in exclusions), default=0))
        spec = self.manifest.index
        extra = {}
        if spec.kind == "tree_ah":
            extra = {"pre_reorder_num_neighbors": max(spec.reorder, fetch),
                     "leaves_to_search": spec.num_leaves_to_search}
        if len(queries) == 1:
            idx, dist = self._searcher.search(queries[0], final_num_neighbors=fetch, **extra)
            idx, dist = idx[None], dist[None]
        else:
            idx, dist = self._searcher.search_batched(queries, final_num_neighbors=fetch, **extra)
        results = []
        for row_idx, row_dist, excluded in zip(idx, dist, exclusions):
            ids = self.candidate_ids[row_idx].tolist()
            scores = row_dist.tolist()
            if excluded:
                kept = [(i, s) for i, s in zip(ids, scores) if i not in excluded]
                ids, scores = [i for i, _ in kept], [s for _, s in kept]
            results.append(SearchResult(ids[:k], scores[:k]))
        return results
